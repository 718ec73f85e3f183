"""Pre-test / post-test questionnaires: config validation, answer validation, storage, resume, listener pages."""

import json
import uuid

import pytest
from django.test import Client

from evalsite.core.exceptions import ApplicationError, ConflictError, NotFoundError
from evalsite.listening import questionnaire as qn
from evalsite.listening import services
from evalsite.listening.models import Participant
from evalsite.listening.selectors import listener_state
from tests.factories import make_listening_test

pytestmark = pytest.mark.django_db

CONFIG = {
    "pre": [
        "age_band",
        "gender",
        {"id": "hearing_problems"},
        {"id": "listening_device"},
        {"id": "native_language", "required": False},
        {
            "id": "genre",
            "custom": True,
            "type": "choice",
            "label": "Favourite genre",
            "options": ["Jazz", "Rock"],
        },
    ],
    "post": ["comments"],
}
PRE_OK = {"age_band": "25-34", "hearing_problems": "no", "listening_device": "over_ear"}


def build(world, questionnaire=CONFIG, **kw):
    test = make_listening_test(
        name="t-q",
        kind="mos",
        checkpoints=world["checkpoints"][:1],
        seed=7,
        completion_code="DONE-1",
        loudness_target_lufs=None,
        questionnaire=questionnaire,
        **kw,
    )
    return services.listening_test_publish(test=test)


def rate_all(participant, score=4):
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def refusal(call) -> ApplicationError:
    with pytest.raises(ApplicationError) as exc:
        call()
    return exc.value


# ---------------------------------------------------------------------------------------------
# Config


def test_a_config_is_stored_expanded_with_the_menus_wording_and_custom_questions_as_given(world):
    test = build(world)
    stored = test.questionnaire
    assert [q["id"] for q in stored["pre"]] == [
        "age_band",
        "gender",
        "hearing_problems",
        "listening_device",
        "native_language",
        "genre",
    ]
    age = stored["pre"][0]
    assert age["label"] == "Your age" and age["required"] is True and ["65+", "65 or older"] in age["options"]
    gender = stored["pre"][1]
    assert gender["required"] is False and [qn.PREFER_NOT, "Prefer not to say"] in gender["options"]
    assert stored["pre"][3]["options"][0] == ["over_ear", "Over-ear (closed or open-back) headphones"]
    assert stored["pre"][4]["required"] is False  # the researcher's override
    assert stored["pre"][5] == {
        "id": "genre",
        "type": "choice",
        "label": "Favourite genre",
        "options": [["Jazz", "Jazz"], ["Rock", "Rock"]],
        "required": False,
        "max_length": 0,
        "standard": False,
    }
    assert stored["post"] == [qn.STANDARD["comments"].as_stored()]
    assert qn.Questionnaire.from_stored(stored) == qn.questionnaire_parse(CONFIG)


def test_no_questionnaire_is_the_default_and_stores_nothing(world):
    test = build(world, questionnaire=None)
    assert test.questionnaire == {}
    part = services.participant_join(test=test)
    assert listener_state(part)["phase"] == "training"


@pytest.mark.parametrize(
    ("config", "field", "says"),
    [
        ([], "questionnaire", "must be a JSON object"),
        ({"during": []}, "questionnaire", "stages are pre and post"),
        ({"pre": "age_band"}, "questionnaire.pre", "must be a list"),
        ({"pre": ["shoe_size"]}, "questionnaire.pre[0].id", "'shoe_size' is not a standard question"),
        (
            {"pre": [{"id": "gender", "required": True}]},
            "questionnaire.pre[0].required",
            "gender can not be required",
        ),
        ({"pre": [{"id": "age_band", "required": "yes"}]}, "questionnaire.pre[0].required", "true or false"),
        (
            {"pre": [{"id": "age_band", "label": "Age?"}]},
            "questionnaire.pre[0]",
            "takes only id and required",
        ),
        ({"pre": ["age_band", "age_band"]}, "questionnaire.pre[1].id", "asked twice"),
        ({"pre": [7]}, "questionnaire.pre[0]", "must be a JSON object"),
        ({"pre": [{"id": {"a": 1}}]}, "questionnaire.pre[0].id", "{'a': 1} is not a standard question"),
        (
            {"pre": [{"id": ["age_band"]}]},
            "questionnaire.pre[0].id",
            "['age_band'] is not a standard question",
        ),
        ({"pre": [{"id": "x" * 5000}]}, "questionnaire.pre[0].id", "xx... is not a standard question"),
        (
            {"post": [{"id": "Bad Id", "custom": True, "type": "text", "label": "x"}]},
            "questionnaire.post[0].id",
            "lowercase",
        ),
        (
            {"post": [{"id": "age_band", "custom": True, "type": "text", "label": "x"}]},
            "questionnaire.post[0].id",
            "not a standard id",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "scale", "label": "x"}]},
            "questionnaire.post[0].type",
            '"text" or "choice"',
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "text", "label": ""}]},
            "questionnaire.post[0].label",
            "1 to 200",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "text", "label": "y" * 201}]},
            "questionnaire.post[0].label",
            "1 to 200",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "text", "label": "y", "max_length": 2001}]},
            "questionnaire.post[0].max_length",
            "1 to 2000",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "text", "label": "y", "max_length": True}]},
            "questionnaire.post[0].max_length",
            "1 to 2000",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "text", "label": "y", "options": ["a", "b"]}]},
            "questionnaire.post[0].options",
            "no options",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "choice", "label": "y", "options": ["a"]}]},
            "questionnaire.post[0].options",
            "2 to 12",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "choice", "label": "y", "options": ["a", "a"]}]},
            "questionnaire.post[0].options",
            "different",
        ),
        (
            {
                "post": [
                    {
                        "id": "x",
                        "custom": True,
                        "type": "choice",
                        "label": "y",
                        "options": [str(i) for i in range(13)],
                    }
                ]
            },
            "questionnaire.post[0].options",
            "2 to 12",
        ),
        (
            {
                "post": [
                    {"id": "x", "custom": True, "type": "choice", "label": "y", "options": ["a", "b" * 101]}
                ]
            },
            "questionnaire.post[0].options",
            "2 to 12",
        ),
        (
            {"post": [{"id": "x", "custom": True, "type": "text", "label": "y", "onclick": "z"}]},
            "questionnaire.post[0]",
            "unknown keys ['onclick']",
        ),
        (
            {"post": [{"id": f"c{i}", "custom": True, "type": "text", "label": "y"} for i in range(6)]},
            "questionnaire.post",
            "6 custom questions; at most 5",
        ),
        (
            {
                "pre": list(qn.STANDARD)
                + [{"id": f"c{i}", "custom": True, "type": "text", "label": "y"} for i in range(6)]
            },
            "questionnaire.pre",
            "13 questions; at most 12",
        ),
    ],
)
def test_a_bad_config_is_refused_naming_the_entry_and_no_test_is_built(world, config, field, says):
    from evalsite.listening.models import ListeningTest

    exc = refusal(lambda: build(world, questionnaire=config))
    assert says in exc.message and exc.extra == {"fields": {field: [exc.message]}}
    assert not ListeningTest.objects.exists()


# ---------------------------------------------------------------------------------------------
# Answers


QUESTIONS = qn.questionnaire_parse(CONFIG).pre


def test_answers_are_stripped_and_unanswered_optional_questions_are_left_out():
    clean = qn.answers_clean(
        QUESTIONS, {**PRE_OK, "gender": "", "native_language": "  Welsh ", "genre": "Jazz"}
    )
    assert clean == {**PRE_OK, "native_language": "Welsh", "genre": "Jazz"}


@pytest.mark.parametrize(
    ("answers", "field", "says"),
    [
        ([1, 2], "answers", "must be an object"),
        ({**PRE_OK, "shoe_size": "44"}, "answers.shoe_size", "'shoe_size' is not a question of this page"),
        ({**PRE_OK, "age_band": 30}, "answers.age_band", "must be text; got 30"),
        ({**PRE_OK, "age_band": ["25-34"]}, "answers.age_band", "must be text"),
        ({**PRE_OK, "age_band": "30"}, "answers.age_band", "must be one of '18-24'"),
        ({**PRE_OK, "genre": "jazz"}, "answers.genre", "must be one of 'Jazz', 'Rock'"),
        ({**PRE_OK, "native_language": "x" * 101}, "answers.native_language", "101 characters; at most 100"),
        (
            {**PRE_OK, "hearing_problems": "  "},
            "answers.hearing_problems",
            '"Do you have any known hearing problems?" needs an answer.',
        ),
        ({"age_band": "25-34", "listening_device": "in_ear"}, "answers.hearing_problems", "needs an answer"),
    ],
)
def test_bad_answers_are_refused_naming_the_question(answers, field, says):
    exc = refusal(lambda: qn.answers_clean(QUESTIONS, answers))
    assert says in exc.message and exc.extra == {"fields": {field: [exc.message]}}


# ---------------------------------------------------------------------------------------------
# Storage and the listener's phases


def test_the_pre_page_comes_first_blocks_the_trials_and_is_stored_once(world):
    test = build(world)
    part = services.participant_join(test=test)
    state = listener_state(part)
    assert state["phase"] == "pre_questionnaire"
    with pytest.raises(ConflictError) as exc:
        rate_all(part)
    assert exc.value.message == services.PRE_QUESTIONNAIRE_FIRST
    bad = refusal(
        lambda: services.questionnaire_submit(participant=part, stage="pre", answers={"age_band": "25-34"})
    )
    assert "answers.hearing_problems" in bad.extra["fields"]
    part.refresh_from_db()
    assert part.questionnaire == {}  # a refused page stores nothing
    services.questionnaire_submit(participant=part, stage="pre", answers={**PRE_OK, "genre": "Rock"})
    again = services.questionnaire_submit(
        participant=part, stage="pre", answers={**PRE_OK, "age_band": "65+"}
    )
    part.refresh_from_db()
    assert part.questionnaire["pre"]["answers"] == {
        **PRE_OK,
        "genre": "Rock",
    }  # not overwritten by a second send
    assert again.questionnaire["pre"]["answers"]["age_band"] == "25-34"
    assert listener_state(part)["phase"] == "training"


def test_the_post_page_comes_after_the_last_trial_and_withholds_the_completion_code(world):
    test = build(world)
    part = services.participant_join(test=test)
    part = services.questionnaire_submit(participant=part, stage="pre", answers=PRE_OK)
    early = refusal(lambda: services.questionnaire_submit(participant=part, stage="post", answers={}))
    assert isinstance(early, ConflictError) and early.message == services.FINISH_TRIALS_FIRST
    rate_all(part)
    part.refresh_from_db()
    state = listener_state(part)
    assert part.status == Participant.Status.COMPLETED
    assert state["phase"] == "post_questionnaire" and state["completion"] is None
    services.questionnaire_submit(participant=part, stage="post", answers={"comments": "B clicked twice"})
    part.refresh_from_db()
    state = listener_state(part)
    assert state["phase"] == "done" and state["completion"]["code"] == "DONE-1"
    assert part.questionnaire["post"]["answers"] == {"comments": "B clicked twice"}


def test_an_optional_only_page_may_be_sent_empty(world):
    test = build(world, questionnaire={"pre": [{"id": "gender"}]})
    part = services.participant_join(test=test)
    services.questionnaire_submit(participant=part, stage="pre", answers={})
    part.refresh_from_db()
    assert part.questionnaire["pre"]["answers"] == {} and listener_state(part)["phase"] == "training"


def test_a_page_the_test_does_not_ask_is_not_found(world):
    test = build(world, questionnaire={"pre": ["age_band"]})
    part = services.participant_join(test=test)
    for stage in ("post", "during", "../pre"):
        exc = refusal(
            lambda stage=stage: services.questionnaire_submit(participant=part, stage=stage, answers={})
        )
        assert isinstance(exc, NotFoundError) and exc.extra["fields"] == {"stage": [exc.message]}


def test_the_pre_page_is_refused_once_the_test_closed(world):
    test = build(world)
    part = services.participant_join(test=test)
    services.listening_test_close(test=test)
    exc = refusal(lambda: services.questionnaire_submit(participant=part, stage="pre", answers=PRE_OK))
    assert exc.message == services.TEST_NOT_OPEN


# ---------------------------------------------------------------------------------------------
# Through HTTP, as the browser does


def join(client, test):
    client.get(f"/l/i/{test.invite_token}/")
    response = client.post(
        f"/l/i/{test.invite_token}/", {"csrfmiddlewaretoken": client.cookies["csrftoken"].value}
    )
    return response["Location"]


def test_the_form_page_keeps_answers_on_a_refusal_and_goes_on_once_accepted(world):
    test = build(world)
    client = Client(enforce_csrf_checks=True)
    session_url = join(client, test)
    page = client.get(session_url)
    html = page.content.decode()
    assert (
        page.status_code == 200 and 'data-testid="questionnaire-pre"' in html and "Prefer not to say" in html
    )
    url = f"{session_url}questionnaire/pre"
    token = client.cookies["csrftoken"].value
    refused = client.post(
        url, {"csrfmiddlewaretoken": token, "age_band": "25-34", "native_language": "Welsh"}
    )
    html = refused.content.decode()
    assert refused.status_code == 400
    assert "&quot;Do you have any known hearing problems?&quot; needs an answer." in html
    assert "Please check the marked questions below (2)." in html
    assert 'value="25-34" checked' in html and 'value="Welsh"' in html  # nothing given is lost
    accepted = client.post(url, {"csrfmiddlewaretoken": token, **PRE_OK})
    assert accepted.status_code == 302 and accepted["Location"] == session_url
    assert 'id="listener-app"' in client.get(session_url).content.decode()
    # Reopening the invite link goes back to the session, which does not ask the page again.
    back = client.get(f"/l/i/{test.invite_token}/")
    assert (
        back["Location"] == session_url
        and "questionnaire-pre" not in client.get(session_url).content.decode()
    )


def test_the_json_endpoint_uses_the_one_error_shape_and_refuses_other_browsers(world):
    test = build(world)
    client = Client(enforce_csrf_checks=True)
    session_url = join(client, test)
    client.get(session_url)
    url = f"{session_url}questionnaire/pre"
    headers = {"content_type": "application/json", "HTTP_X_CSRFTOKEN": client.cookies["csrftoken"].value}
    bad = client.post(url, json.dumps({"answers": {**PRE_OK, "age_band": 3}}), **headers)
    assert bad.status_code == 400
    assert bad.json()["extra"]["fields"] == {
        "answers.age_band": ["the answer to 'age_band' must be text; got 3."]
    }
    huge = client.post(url, json.dumps({"answers": {**PRE_OK, "genre": "x" * 200_000}}), **headers)
    assert huge.status_code == 413
    stranger = Client()
    assert (
        stranger.post(url, json.dumps({"answers": PRE_OK}), content_type="application/json").status_code
        == 404
    )
    ok = client.post(url, json.dumps({"answers": PRE_OK}), **headers)
    assert ok.status_code == 200 and ok.json() == {"phase": "training"}
    assert Participant.objects.get().questionnaire["pre"]["answers"] == PRE_OK


# ---------------------------------------------------------------------------------------------
# Researcher side: build form, API, command line, summary, export


def form_post(world, **questionnaire):
    return {
        "name": "web-q",
        "kind": "mos",
        "checkpoints": [world["checkpoints"][0].pk],
        "title": "Quality",
        "training_items": 0,
        "votes_target": 3,
        **{f"questionnaire-{k}": v for k, v in questionnaire.items()},
    }


def test_the_build_form_has_a_questionnaire_fieldset_with_free_comments_ticked_after_the_test(admin_client):
    html = admin_client.get("/listening/new/").content.decode()
    assert 'data-testid="questionnaire-config"' in html
    assert (
        'name="questionnaire-post_questions" value="comments" id="id_questionnaire-post_questions_6" checked'
        in html
    )
    assert (
        'name="questionnaire-pre_questions" value="age_band"' in html
        and "checked"
        not in html.split('name="questionnaire-pre_questions" value="age_band"')[1].split(">")[0]
    )


def test_the_build_form_stores_ticked_and_own_questions(admin_client, world):
    from evalsite.listening.models import ListeningTest

    response = admin_client.post(
        "/listening/new/",
        form_post(
            world,
            pre_questions=["age_band", "listening_device"],
            pre_custom="*Which genre do you listen to most? | Jazz | Rock | Pop\n\nWhere are you from?",
            post_questions=["comments"],
        ),
    )
    test = ListeningTest.objects.get(name="web-q")
    assert response.status_code == 302
    pre = test.questionnaire["pre"]
    assert [q["id"] for q in pre] == ["age_band", "listening_device", "custom_1", "custom_2"]
    assert (
        pre[2]["options"] == [["Jazz", "Jazz"], ["Rock", "Rock"], ["Pop", "Pop"]]
        and pre[2]["required"] is True
    )
    assert (
        pre[3]["type"] == "text" and pre[3]["required"] is False and pre[3]["label"] == "Where are you from?"
    )
    assert [q["id"] for q in test.questionnaire["post"]] == ["comments"]


def test_a_bad_custom_line_is_refused_on_the_form_and_nothing_is_built(admin_client, world):
    from evalsite.listening.models import ListeningTest

    page = admin_client.post("/listening/new/", form_post(world, pre_custom="Which? | only one option"))
    assert page.status_code == 200 and "pre_custom" in page.context["questions"].errors
    assert "line 1.options must be a list of 2 to 12" in page.content.decode()
    too_many = "\n".join(f"Question {i}?" for i in range(6))
    page = admin_client.post("/listening/new/", form_post(world, post_custom=too_many))
    assert "6 custom questions; at most 5" in page.content.decode()
    assert not ListeningTest.objects.filter(name="web-q").exists()


def test_the_api_takes_a_questionnaire_and_refuses_a_bad_one_naming_the_entry():
    from rest_framework.test import APIClient

    from evalsite.listening.models import ListeningTest
    from evalsite.runs.services import run_token_issue
    from tests.factories import listening_world

    world = listening_world(runs=("alpha",), n_items=2)
    run = world["checkpoints"][0].run
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {run_token_issue(run=run)}")
    body = {
        "name": "api-q",
        "kind": "mos",
        "checkpoints": [{"run": run.pk, "step": 77777}],
        "training_items": 0,
    }
    bad = client.post(
        "/api/v1/listening-tests/",
        {**body, "questionnaire": {"pre": [{"id": "gender", "required": True}]}},
        format="json",
    )
    assert bad.status_code == 400
    assert list(bad.json()["extra"]["fields"]) == ["questionnaire.pre[0].required"]
    assert not bad.json()["message"].startswith("Internal")
    ok = client.post("/api/v1/listening-tests/", {**body, "questionnaire": CONFIG}, format="json")
    assert ok.status_code == 201, ok.json()
    stored = ListeningTest.objects.get(name="api-q").questionnaire
    assert [q["id"] for q in stored["pre"]][-1] == "genre" and stored["post"][0]["id"] == "comments"


def test_the_build_command_reads_a_questionnaire_file(world, tmp_path):
    from django.core.management import CommandError, call_command

    from evalsite.listening.models import ListeningTest

    spec = f"{world['checkpoints'][0].run.name}@{world['checkpoints'][0].step}"
    good = tmp_path / "q.json"
    good.write_text(json.dumps({"post": ["comments", "environment_noise"]}))
    call_command(
        "build_listening_test", "cmd-q", "--kind", "mos", "--checkpoints", spec, "--questionnaire", str(good)
    )
    assert [q["id"] for q in ListeningTest.objects.get(name="cmd-q").questionnaire["post"]] == [
        "comments",
        "environment_noise",
    ]
    broken = tmp_path / "broken.json"
    broken.write_text("{pre: [")
    with pytest.raises(CommandError, match="not a readable JSON file"):
        call_command(
            "build_listening_test",
            "cmd-x",
            "--kind",
            "mos",
            "--checkpoints",
            spec,
            "--questionnaire",
            str(broken),
        )
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pre": ["shoe_size"]}))
    with pytest.raises(CommandError, match="'shoe_size' is not a standard question"):
        call_command(
            "build_listening_test",
            "cmd-y",
            "--kind",
            "mos",
            "--checkpoints",
            spec,
            "--questionnaire",
            str(bad),
        )


def three_listeners(world):
    test = build(world)
    answers = [
        (
            {**PRE_OK, "gender": "prefer_not_to_say", "genre": "Jazz"},
            {"comments": '=HYPERLINK("x") my name is Ann'},
        ),
        ({**PRE_OK, "age_band": "65+", "listening_device": "in_ear"}, {}),
        ({**PRE_OK, "listening_device": "in_ear"}, None),  # did not reach the post page
    ]
    for pre, post in answers:
        part = services.participant_join(test=test)
        part = services.questionnaire_submit(participant=part, stage="pre", answers=pre)
        if post is not None:
            rate_all(part)
            services.questionnaire_submit(participant=part, stage="post", answers=post)
    return test


def test_the_summary_counts_each_option_and_shows_free_text_only_when_asked(world, admin_client):
    from evalsite.listening.selectors import questionnaire_summary

    test = three_listeners(world)
    pre, post = questionnaire_summary(test)
    assert pre["submitted"] == 3 and post["submitted"] == 2
    age = {o["value"]: o["count"] for o in pre["questions"][0]["options"]}
    assert age == {"18-24": 0, "25-34": 2, "35-44": 0, "45-54": 0, "55-64": 0, "65+": 1}
    gender = pre["questions"][1]
    assert (
        gender["skipped"] == 2
        and {o["value"]: o["count"] for o in gender["options"]}["prefer_not_to_say"] == 1
    )
    device = {o["value"]: o["count"] for o in pre["questions"][3]["options"]}
    assert device["in_ear"] == 2 and device["over_ear"] == 1
    comments = post["questions"][0]
    assert (comments["answered"], comments["skipped"], comments["texts"]) == (1, 1, None)
    page = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert 'data-testid="questionnaire-pre"' in page and "65 or older: <b>1</b>" in page
    assert "my name is Ann" not in page and "1 written, 1 left empty" in page
    opened = admin_client.get(f"/listening/{test.pk}/?answers=text").content.decode()
    assert "my name is Ann" in opened


def test_the_questionnaire_export_has_one_row_per_listener_with_every_answer(world, admin_client):
    import io

    import pandas as pd

    from evalsite.analysis.exports import questionnaire_table
    from evalsite.analysis.plain import listener_id

    test = three_listeners(world)
    frame = questionnaire_table(test)
    ids = [listener_id(test.pk, p.pk) for p in Participant.objects.filter(test=test).order_by("pk")]
    assert list(frame["participant"]) == ids
    assert list(frame.columns[:4]) == ["participant", "status", "excluded", "pre_submitted_at"]
    assert list(frame["pre.age_band"]) == ["25-34", "65+", "25-34"]
    assert list(frame["pre.gender"])[:2] == ["prefer_not_to_say", None]
    assert list(frame["status"]) == ["completed", "completed", "active"]
    assert frame["post_submitted_at"].isna().tolist() == [False, False, True]
    response = admin_client.get(f"/analysis/tests/{test.pk}/export/questionnaire.csv")
    assert response.status_code == 200
    csv = pd.read_csv(io.BytesIO(response.content), keep_default_na=False)
    # A comment a spreadsheet would run as a formula goes out as text.
    assert csv.loc[0, "post.comments"] == '\'=HYPERLINK("x") my name is Ann'
    assert csv.loc[1, "pre.listening_device"] == "in_ear" and list(csv["participant"]) == ids
    # Joined to the ratings on the participant column.
    ratings = pd.read_csv(
        io.BytesIO(admin_client.get(f"/analysis/tests/{test.pk}/export/ratings.csv").content)
    )
    assert set(ratings["participant"]) <= set(csv["participant"])


def test_a_test_without_questionnaire_exports_an_empty_questionnaire_table(world):
    from evalsite.analysis.exports import questionnaire_table

    test = build(world, questionnaire=None)
    services.participant_join(test=test)
    frame = questionnaire_table(test)
    assert list(frame.columns) == ["participant", "status", "excluded"] and len(frame) == 1


def test_every_question_that_needs_attention_is_named_at_once():
    exc = refusal(lambda: qn.answers_clean(QUESTIONS, {"age_band": "30", "native_language": 5}))
    assert exc.extra["fields"] == {
        "answers.age_band": [qn.NOT_AN_OPTION.format(id="age_band", options=ANY_AGE, got="'30'")],
        "answers.hearing_problems": ['"Do you have any known hearing problems?" needs an answer.'],
        "answers.listening_device": ['"What are you listening with?" needs an answer.'],
        "answers.native_language": ["the answer to 'native_language' must be text; got 5."],
    }
    assert exc.message.startswith("4 answers need attention: ")


ANY_AGE = "'18-24', '25-34', '35-44', '45-54', '55-64', '65+'"


def test_another_researcher_sees_neither_the_summary_nor_the_questionnaire_export(world, client):
    from django.contrib.auth import get_user_model

    test = three_listeners(world)
    client.force_login(get_user_model().objects.create_user("mallory", password="x"))
    assert client.get(f"/listening/{test.pk}/?answers=text").status_code == 404
    assert client.get(f"/analysis/tests/{test.pk}/export/questionnaire.csv").status_code == 404
    assert client.get(f"/analysis/tests/{test.pk}/export/questionnaire.parquet").status_code == 404
