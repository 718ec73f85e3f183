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
            "please answer 'Do you have any known",
        ),
        ({"age_band": "25-34", "listening_device": "in_ear"}, "answers.hearing_problems", "please answer"),
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
    assert "please answer &#x27;Do you have any known hearing problems?&#x27;." in html
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
