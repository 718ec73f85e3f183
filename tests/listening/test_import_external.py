"""Importing the ratings of a test run elsewhere (long CSV, webMUSHRA mushra.csv) as an external test.

The central check: a native test and an imported file holding the same answers give the same analysis
(scores, CIs, pairwise tests, screening), because the import writes the rows the frame reader reads.
"""

import io
import uuid

import pandas as pd
import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import override_settings
from django.urls import reverse

from evalsite.analysis import exports, frames
from evalsite.analysis.snapshots import listening_test_results
from evalsite.core.exceptions import ConflictError
from evalsite.listening import services
from evalsite.listening.access import listening_tests_visible
from evalsite.listening.models import Condition, ListeningTest, Participant, Rating, StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.listening.services.imports import (
    ImportRejected,
    checkpoint_mapping_parse,
    listening_test_import,
)
from evalsite.listening.services.session import TEST_NOT_OPEN
from evalsite.runs.models import EvalSet
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fresh_cache():
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def researcher(django_user_model):
    return django_user_model.objects.create_user("importer", password="pw-importer-1")


@pytest.fixture
def other(django_user_model):
    return django_user_model.objects.create_user("someone-else", password="pw-other-1")


def csv_bytes(rows, header="listener,item,system,score,role") -> bytes:
    return (header + "\n" + "\n".join(",".join(str(v) for v in r) for r in rows) + "\n").encode()


def mushra_rows(n_listeners=4, bad=None):
    """Planted MUSHRA answers: two systems, hidden reference and both anchors on 3 items; ``bad`` rates the
    hidden reference low on every item."""
    rows = []
    for k in range(n_listeners):
        for j in range(3):
            low = k == bad
            rows += [
                (f"L{k}", f"utt{j}", "good", 80 + (k + j) % 7, "system"),
                (f"L{k}", f"utt{j}", "weak", 50 + (2 * k + j) % 9, "system"),
                (f"L{k}", f"utt{j}", "ref", 40 if low else 100 - (k + j) % 3, "hidden_reference"),
                (f"L{k}", f"utt{j}", "lp35", 10 + (k * j) % 5, "anchor_lp35"),
                (f"L{k}", f"utt{j}", "lp70", 40 + (k + 2 * j) % 6, "anchor_lp70"),
            ]
    return rows


def do_import(researcher, data, **kw):
    args = {"owner": researcher, "name": "ext", "kind": "mushra", "fmt": "long_csv", "data": data}
    return listening_test_import(**{**args, **kw})


def rejected(researcher, data, **kw) -> ImportRejected:
    with pytest.raises(ImportRejected) as caught:
        do_import(researcher, data, **kw)
    return caught.value


# --- the native twin -------------------------------------------------------------------------------------------


def answer_native(participant, score_of):
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            stimulus = (
                StimulusHandle.objects.select_related("stimulus__condition", "stimulus__trial__item")
                .get(token=stim["id"])
                .stimulus
            )
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score_of(stimulus.condition, stimulus.trial.item.key, trial["training"]),
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def native_mushra(n_listeners=5):
    world = listening_world(n_items=4)
    test = services.listening_test_publish(
        test=make_listening_test(name="native", kind="mushra", checkpoints=world["checkpoints"], seed=3)
    )
    for k in range(n_listeners):
        p = services.participant_join(test=test, external_id=f"worker-{k}")

        def score_of(condition, item, training, k=k):
            j = int(item[3:])
            if k == 0 and condition.role == "hidden_reference":
                return 30  # the listener BS.1534-3 post-screening drops
            base = {"hidden_reference": 97, "anchor_lp35": 15, "anchor_lp70": 45}.get(condition.role)
            if base is None:
                base = 75 if condition.label.startswith("hifigan") else 55
            return base + (3 * k + 5 * j) % 4

        answer_native(p, score_of)
    return test, world


def as_long_csv(test) -> bytes:
    """The native test's main answers as the documented long CSV (listener, item, system, score, role)."""
    ratings = frames.ratings_frame(test)
    ids = dict(Participant.objects.filter(test=test).values_list("pk", "external_id"))
    out = pd.DataFrame(
        {
            "listener": ratings["listener"].map(ids),
            "item": ratings["item"],
            "system": ratings["system"],
            "score": ratings["score"],
            "role": ratings["role"],
        }
    )
    return out.to_csv(index=False).encode()


def test_an_imported_copy_of_a_native_mushra_test_gives_the_same_scores_tests_and_screening(researcher):
    native, _ = native_mushra()
    imported = do_import(researcher, as_long_csv(native), name="imported-twin")
    a, b = listening_test_results(native, n_boot=300), listening_test_results(imported, n_boot=300)
    for view in ("kept", "all"):
        assert a["scores"][view] == b["scores"][view]
    assert a["pairwise"]["matrix"] == b["pairwise"]["matrix"]
    assert a["pairwise"]["rows"] == b["pairwise"]["rows"]
    assert (a["mixed_model"]["effects"], a["mixed_model"]["n"]) == (
        b["mixed_model"]["effects"],
        b["mixed_model"]["n"],
    )
    assert a["counts"]["listeners_kept"] == b["counts"]["listeners_kept"] == 4
    reasons = lambda r: sorted(tuple(e["rules"]) for e in r["screening"]["excluded"])  # noqa: E731
    assert reasons(a) == reasons(b) == [("bs1534_reference",)]
    # The exports list the same answers under the same conditions.
    ea, eb = exports.ratings_table(native), exports.ratings_table(imported)
    ea = ea.loc[ea["trial_type"] == "main"]
    cols = ["item", "condition", "role", "score", "excluded"]
    key = ["item", "condition", "score"]
    pd.testing.assert_frame_equal(
        ea[cols].sort_values(key).reset_index(drop=True), eb[cols].sort_values(key).reset_index(drop=True)
    )


def test_an_imported_copy_of_a_native_cmos_test_gives_the_same_scores_and_tests(researcher):
    world = listening_world(n_items=4)
    native = services.listening_test_publish(
        test=make_listening_test(name="native-cmos", kind="cmos", checkpoints=world["checkpoints"], seed=5)
    )
    for k in range(5):
        p = services.participant_join(test=native, external_id=f"w{k}")
        for n, trial in enumerate(listener_state(p)["trials"]):
            a, b = (
                StimulusHandle.objects.select_related("stimulus__condition", "stimulus__trial__item").get(
                    token=s["id"]
                )
                for s in trial["stimuli"]
            )
            system = a if b.stimulus.condition.role == "comparison" else b
            j = int(system.stimulus.trial.item.key[3:])
            # The system relative to the comparison, whatever order they were heard in (the order is random).
            versus = (2 if system.stimulus.condition.label.startswith("hifigan") else -1) + (k + j) % 2
            services.rating_submit(
                participant=p,
                trial=trial["id"],
                stimulus=b.token,
                score=-versus if system is a else versus,
                request_id=f"r{k}-{n}",
            )
            services.trial_complete(participant=p, trial=trial["id"])
    ratings = frames.ratings_frame(native)
    assert set(ratings["comparison"]) == {services.CMOS_REFERENCE_LABEL}
    ids = dict(Participant.objects.filter(test=native).values_list("pk", "external_id"))
    data = pd.DataFrame(
        {
            "listener": ratings["listener"].map(ids),
            "item": ratings["item"],
            "system": ratings["system"],
            "score": ratings["score"].astype(int),
        }
    ).to_csv(index=False)
    imported = do_import(
        researcher, data.encode(), name="cmos-twin", kind="cmos", comparison=services.CMOS_REFERENCE_LABEL
    )
    a, b = listening_test_results(native, n_boot=300), listening_test_results(imported, n_boot=300)
    assert a["scores"] == b["scores"] and len(a["scores"]["kept"]) == 2
    assert {r["system"]: r["mean"] for r in b["scores"]["kept"]} == pytest.approx(
        {"hifigan-secret-run@77777": 2.5, "evagan-hidden-run@77777": -0.5}, abs=0.21
    )
    assert a["pairwise"] == b["pairwise"]
    assert a["counts"]["ratings"] == b["counts"]["ratings"] == len(ratings)


def test_an_imported_test_is_closed_external_without_audio_and_never_invites(researcher, client):
    test = do_import(researcher, csv_bytes(mushra_rows()))
    assert (test.status, test.origin, test.is_external) == ("closed", "long_csv", True)
    assert test.import_summary["rows"] == 60 and len(test.import_summary["sha256"]) == 64
    assert Rating.objects.filter(participant__test=test).count() == 60
    assert set(Participant.objects.filter(test=test).values_list("external_id", flat=True)) == {
        "L0",
        "L1",
        "L2",
        "L3",
    }
    assert not test.trials.filter(stimuli__asset__isnull=False).exists()
    roles = dict(Condition.objects.filter(test=test).values_list("label", "role"))
    assert roles == {
        "good": "system",
        "weak": "system",
        "ref": "hidden_reference",
        "lp35": "anchor_lp35",
        "lp70": "anchor_lp70",
    }
    with pytest.raises(ConflictError) as caught:
        services.participant_join(test=test, external_id="newcomer")
    assert caught.value.message == TEST_NOT_OPEN
    response = client.get(reverse("listening:invite", args=[test.invite_token]))
    assert response.status_code != 200 or TEST_NOT_OPEN.encode() in response.content
    assert not Participant.objects.filter(test=test, external_id="").exists()


def test_mushra_post_screening_runs_on_an_import_with_roles(researcher):
    test = do_import(researcher, csv_bytes(mushra_rows(n_listeners=5, bad=2)))
    r = listening_test_results(test, n_boot=100)
    excluded = r["screening"]["excluded"]
    assert [e["rules"] for e in excluded] == [["bs1534_reference"]]
    assert "rated the hidden reference below 90 on 3 of 3 items" in excluded[0]["reasons"][0]


# --- validation: every bad row, nothing written -----------------------------------------------------------------


def test_every_bad_row_is_reported_with_its_line_and_column_and_nothing_is_imported(researcher):
    rows = mushra_rows(n_listeners=1)
    rows[1] = ("L0", "utt0", "weak", 140, "system")  # line 3: out of range
    rows[4] = ("L0", "utt0", "lp70", "abc", "anchor_lp70")  # line 6: not a number
    rows[6] = ("", "utt1", "weak", 50, "system")  # line 8: empty listener
    rows[8] = ("L0", "utt1", "lp35", 10, "anchor_mid")  # line 10: unknown role
    rows.append(("L0", "utt2", "good", 81, "system"))  # line 17: duplicate of line 12
    rows.append(("L0", "utt2", "ref", 99, "system"))  # line 18: ref was hidden_reference
    e = rejected(researcher, csv_bytes(rows))
    errors = e.extra["errors"]
    assert e.extra["error_count"] == 6 and e.message == "6 problem(s) in upload.csv; nothing was imported"
    assert errors[0] == "line 3: column score: 140 is out of range; must be a number from 0 to 100"
    assert errors[1] == "line 6: column score: 'abc' is not a number; must be a number from 0 to 100"
    assert errors[2] == "line 8: column listener: empty"
    assert errors[3].startswith("line 10: column role: 'anchor_mid' is not one of")
    assert errors[4] == "line 17: duplicate of line 12 (listener 'L0', trial 'utt2', system 'good')"
    assert errors[5] == "line 18: column role: system 'ref' is 'system' here but 'hidden_reference' on line 4"
    assert e.extra["fields"] == {"file": errors}
    assert not ListeningTest.objects.filter(name="ext").exists() and not Rating.objects.exists()
    assert not EvalSet.objects.filter(name__startswith="imported").exists()


@override_settings(EVALSITE_IMPORT_MAX_ERRORS=3)
def test_the_problem_list_is_capped_but_the_total_is_counted(researcher):
    rows = [(f"L{k}", "utt0", "a", 999, "system") for k in range(10)]
    e = rejected(researcher, csv_bytes(rows))
    assert (e.extra["error_count"], e.extra["errors_shown"], len(e.extra["errors"])) == (10, 3, 3)
    assert e.message.startswith("10 problem(s)")


def test_a_wrong_kind_is_caught_by_its_score_range(researcher):
    e = rejected(researcher, csv_bytes(mushra_rows(n_listeners=1)), kind="mos")
    assert e.extra["error_count"] > 0
    assert any("column role: a mos test rates systems only" in x for x in e.extra["errors"]) or any(
        "must be a whole number from 1 to 5" in x for x in e.extra["errors"]
    )
    e = rejected(researcher, csv_bytes([("L0", "u", "a", 3, "")]), kind="stereo")
    assert e.extra["errors"] == ["kind: 'stereo' is not one of mushra, smos, mos, cmos, ab"]


@pytest.mark.parametrize(
    "kind,score,why",
    [
        ("mos", "3.5", "3.5 is out of range; must be a whole number from 1 to 5"),
        ("smos", "0", "0 is out of range; must be a whole number from 1 to 5"),
        ("cmos", "4", "4 is out of range; must be a whole number from -3 to 3"),
        ("mushra", "nan", "nan is out of range; must be a number from 0 to 100"),
        ("mushra", "inf", "inf is out of range; must be a number from 0 to 100"),
        ("mushra", "=1+2", "'=1+2' is not a number; must be a number from 0 to 100"),
    ],
)
def test_scores_are_checked_against_the_scale_of_the_kind(researcher, kind, score, why):
    e = rejected(researcher, f"listener,item,system,score\nL0,u0,a,{score}\n".encode(), kind=kind)
    assert e.extra["errors"][0].startswith(f"line 2: column score: {why}")


def test_the_header_must_name_the_required_columns(researcher):
    e = rejected(researcher, b"listener,item,model,rating\nL0,u0,a,3\n", kind="mos")
    assert e.extra["errors"] == [
        "line 1: column system: missing (the header has: listener, item, model, rating)",
        "line 1: column score: missing (the header has: listener, item, model, rating)",
    ]


def test_a_row_with_the_wrong_number_of_fields_is_reported(researcher):
    e = rejected(researcher, b"listener,item,system,score\nL0,u0,a,3\nL1,u0,a\n", kind="mos")
    assert e.extra["errors"] == ["line 3: has 3 fields; the header has 4"]


@override_settings(EVALSITE_IMPORT_MAX_BYTES=1000)
def test_a_file_over_the_size_limit_is_refused_before_it_is_read(researcher):
    e = rejected(researcher, b"listener,item,system,score\n" + b"L0,u0,a,3\n" * 200, kind="mos")
    assert e.extra["errors"] == [
        "file: 2027 bytes is over the import limit of 1000 bytes (EVALSITE_IMPORT_MAX_BYTES)"
    ]


@override_settings(EVALSITE_IMPORT_MAX_ROWS=5)
def test_a_file_over_the_row_limit_is_refused(researcher):
    rows = [(f"L{k}", "u0", "a", 3, "") for k in range(6)]
    e = rejected(researcher, csv_bytes(rows), kind="mos")
    assert e.extra["errors"] == [
        "file: more than 5 rows (EVALSITE_IMPORT_MAX_ROWS); split the test or raise the limit"
    ]
    # Five rows are within the limit even when each has several problems.
    e = rejected(researcher, csv_bytes([("", "", "", 9, "x")] * 5), kind="mos")
    assert e.extra["error_count"] == 25


@override_settings(EVALSITE_IMPORT_MAX_COLUMNS=6)
def test_a_file_over_the_column_limit_is_refused(researcher):
    e = rejected(researcher, b"listener,item,system,score,a,b,c\nL0,u0,a,3,,,\n", kind="mos")
    assert e.extra["errors"] == ["line 1: 7 columns is over the limit of 6 (EVALSITE_IMPORT_MAX_COLUMNS)"]


def test_a_binary_file_is_refused(researcher):
    e = rejected(researcher, b"PK\x03\x04\x00\x00binary zip", kind="mos")
    assert e.extra["errors"] == ["file: not a text file (a NUL byte at offset 4); export the ratings as CSV"]


def test_bom_semicolons_decimal_commas_windows_1252_and_utf16_are_read(researcher):
    text = "listener;item;system;score\r\nJosé;u0;a;55,5\r\nJosé;u0;b;70\r\n"
    for n, data in enumerate([b"\xef\xbb\xbf" + text.encode(), text.encode("cp1252"), text.encode("utf-16")]):
        test = do_import(researcher, data, name=f"enc-{n}")
        assert test.import_summary["delimiter"] == ";"
        assert list(Participant.objects.filter(test=test).values_list("external_id", flat=True)) == ["José"]
        scores = sorted(Rating.objects.filter(participant__test=test).values_list("score", flat=True))
        assert scores == [55.5, 70.0]
    assert [t.import_summary["encoding"] for t in ListeningTest.objects.order_by("pk")] == [
        "utf-8-sig",
        "cp1252",
        "utf-16",
    ]


def test_formula_like_names_are_stored_as_text_and_exported_neutralised(researcher):
    rows = [
        ('=HYPERLINK("http://x")', "u0", "+cmd|' /C calc'!A0", 50, ""),
        ("L1", "u0", "+cmd|' /C calc'!A0", 60, ""),
    ]
    test = do_import(researcher, csv_bytes(rows, header="listener,item,system,score,role"))
    assert Condition.objects.get(test=test).label == "+cmd|' /C calc'!A0"
    body = exports.export_bytes(test, "ratings", "csv").decode()
    assert "'+cmd|' /C calc'!A0" in body and "\n+cmd" not in body and ",+cmd" not in body


def test_the_test_name_must_be_new(researcher):
    do_import(researcher, csv_bytes(mushra_rows(n_listeners=1)))
    e = rejected(researcher, csv_bytes(mushra_rows(n_listeners=1)))
    assert e.extra["errors"] == ["name: a listening test named 'ext' already exists"]
    assert e.extra["fields"] == {"name": ["name: a listening test named 'ext' already exists"]}


# --- checkpoints, eval sets, visibility -------------------------------------------------------------------------


def test_systems_link_to_visible_checkpoints_and_never_to_another_researchers(researcher, other):
    world = listening_world(n_items=3)
    mine, theirs = world["checkpoints"]
    mine.run.owner = researcher
    mine.run.save()
    theirs.run.owner = other
    theirs.run.save()
    data = csv_bytes(mushra_rows(n_listeners=2))
    e = rejected(
        researcher,
        data,
        checkpoints={"good": f"{mine.run.name}@{mine.step}", "weak": f"{theirs.run.name}@{theirs.step}"},
    )
    assert e.extra["errors"] == [
        f"checkpoints: system 'weak': no checkpoint '{theirs.run.name}@{theirs.step}' that you can see"
    ]
    # The same words for a run that does not exist: nothing says whether someone else's run exists.
    e = rejected(researcher, data, checkpoints={"weak": "no-such-run@1"})
    assert e.extra["errors"] == ["checkpoints: system 'weak': no checkpoint 'no-such-run@1' that you can see"]
    assert list(e.extra["fields"]) == ["checkpoints"]
    e = rejected(
        researcher,
        data,
        checkpoints={"nope": f"{mine.run.name}@{mine.step}", "ref": f"{mine.run.name}@{mine.step}"},
    )
    assert e.extra["errors"][0].startswith("checkpoints: system 'nope' is not in the file")
    assert (
        e.extra["errors"][1]
        == "checkpoints: system 'ref' is the hidden_reference; only systems map to checkpoints"
    )
    test = do_import(
        researcher,
        data,
        checkpoints={"good": f"{mine.run.name}@{mine.step}"},
        eval_set=world["eval_set"].name,
    )
    assert Condition.objects.get(test=test, label="good").checkpoint == mine
    assert set(test.trials.values_list("item__eval_set", flat=True)) == {world["eval_set"].pk}
    assert test in listening_tests_visible(researcher)
    assert test not in listening_tests_visible(other)


def test_items_must_be_in_the_named_eval_set(researcher):
    world = listening_world(n_items=2)  # utt0, utt1: the file also rates utt2
    e = rejected(researcher, csv_bytes(mushra_rows(n_listeners=1)), eval_set=world["eval_set"].name)
    assert e.extra["errors"] == [
        f"line 12: column item: 'utt2' is not an item of eval set '{world['eval_set'].name}'"
    ]
    e = rejected(researcher, csv_bytes(mushra_rows(n_listeners=1)), eval_set="nope")
    assert e.extra["errors"] == ["eval_set: no eval set named 'nope'"]


def test_an_import_linked_to_a_run_is_hidden_from_someone_who_cannot_see_the_run(researcher, other):
    world = listening_world(n_items=3)
    ckpt = world["checkpoints"][0]
    ckpt.run.owner = researcher
    ckpt.run.save()
    test = do_import(
        researcher,
        csv_bytes(mushra_rows(n_listeners=1)),
        checkpoints={"good": f"{ckpt.run.name}@{ckpt.step}"},
    )
    ckpt.run.owner = other  # the run changes hands: the test follows the run
    ckpt.run.save()
    assert test not in listening_tests_visible(researcher)


def test_checkpoint_mapping_text_is_parsed_with_line_numbers():
    mapping, problems = checkpoint_mapping_parse(
        "# systems\ngood = run-a@100\n\nweak=run-b@2\nbroken\ngood = x@1\n"
    )
    assert mapping == {"good": "run-a@100", "weak": "run-b@2"}
    assert problems == [
        "checkpoints: line 5: 'broken' is not 'system = run@step'",
        "checkpoints: line 6: system 'good' is mapped twice",
    ]


# --- other kinds --------------------------------------------------------------------------------------------------


def test_a_cmos_import_stores_system_relative_to_the_comparison(researcher):
    rows = [("L0", "u0", "a", 2), ("L0", "u0", "b", -1), ("L1", "u0", "a", 1), ("L1", "u1", "a", 3)]
    test = do_import(researcher, csv_bytes(rows, header="listener,item,system,score"), kind="cmos")
    r = frames.ratings_frame(test)
    got = sorted(
        zip(
            r["listener"].map(dict(Participant.objects.values_list("pk", "external_id"))),
            r["item"],
            r["system"],
            r["comparison"],
            r["score"],
        )
    )
    assert got == [
        ("L0", "u0", "a", "reference", 2.0),
        ("L0", "u0", "b", "reference", -1.0),
        ("L1", "u0", "a", "reference", 1.0),
        ("L1", "u1", "a", "reference", 3.0),
    ]
    e = rejected(
        researcher,
        csv_bytes([("L0", "u0", "reference", 1)], header="listener,item,system,score"),
        kind="cmos",
        name="ext-2",
    )
    assert e.extra["errors"][0].startswith("line 2: column system: 'reference' is the CMOS comparison")


def test_an_ab_import_turns_pairs_of_rows_into_preferences(researcher):
    rows = [
        ("L0", "u0", "a", 1), ("L0", "u0", "b", 0),
        ("L1", "u0", "a", 0), ("L1", "u0", "b", 1),
        ("L2", "u0", "b", 0), ("L2", "u0", "a", 0),
    ]  # fmt: skip
    test = do_import(researcher, csv_bytes(rows, header="listener,item,system,score"), kind="ab")
    r = frames.ratings_frame(test)
    assert sorted(r["preferred"].fillna("none")) == ["a", "b", "none"]
    assert test.allow_no_preference and test.trials.count() == 1
    bad = [("L0", "u0", "a", 1), ("L0", "u0", "b", 1), ("L1", "u0", "a", 1)]
    e = rejected(researcher, csv_bytes(bad, header="listener,item,system,score"), kind="ab", name="ext-2")
    assert e.extra["errors"] == [
        "line 3: column score: both systems of the pair are preferred (1) on lines 2 and 3; at most one may be",
        "line 4: column system: listener 'L1', trial 'u0' has 1 system(s); an AB trial is exactly two rows, one per system of the pair",
    ]


def test_the_trial_column_groups_rows_and_must_keep_one_item(researcher):
    data = b"listener,item,system,score,trial\nL0,u0,a,3,t1\nL0,u0,b,4,t1\nL0,u0,a,2,t2\nL0,u1,b,2,t2\n"
    e = rejected(researcher, data, kind="mos")
    assert e.extra["errors"] == ["line 5: column item: trial 't2' is item 'u0' on line 4, not 'u1'"]
    test = do_import(researcher, data.replace(b"u1,b,2,t2", b"u0,b,2,t2"), kind="mos")
    assert test.trials.count() == 2 and set(test.trials.values_list("item__key", flat=True)) == {"u0"}


# --- webMUSHRA ----------------------------------------------------------------------------------------------------

WEBMUSHRA = """session_test_id,email,age,gender,trial_id,rating_stimulus,rating_score,rating_time,rating_comment
codec_test,a@example.org,31,female,trial1,reference,100,10234,
codec_test,a@example.org,31,female,trial1,C1,72,10234,
codec_test,a@example.org,31,female,trial1,C2,41,10234,"sounds ""muffled"", I think"
codec_test,a@example.org,31,female,trial1,anchor35,12,10234,
codec_test,a@example.org,31,female,trial1,anchor70,35,10234,
codec_test,a@example.org,31,female,trial2,reference,98,8120,
codec_test,a@example.org,31,female,trial2,C1,80,8120,
codec_test,a@example.org,31,female,trial2,C2,45,8120,
codec_test,a@example.org,31,female,trial2,anchor35,10,8120,
codec_test,a@example.org,31,female,trial2,anchor70,30,8120,
codec_test,b@example.org,25,male,trial1,reference,95,9000,
codec_test,b@example.org,25,male,trial1,C1,66,9000,
codec_test,b@example.org,25,male,trial1,C2,50,9000,
codec_test,b@example.org,25,male,trial1,anchor35,20,9000,
codec_test,b@example.org,25,male,trial1,anchor70,41,9000,
"""


def test_a_webmushra_results_file_imports_with_reference_and_anchors(researcher):
    test = do_import(researcher, WEBMUSHRA.encode(), fmt="webmushra", file_name="mushra.csv")
    assert test.origin == "webmushra"
    roles = dict(Condition.objects.filter(test=test).values_list("label", "role"))
    assert roles == {
        "reference": "hidden_reference",
        "C1": "system",
        "C2": "system",
        "anchor35": "anchor_lp35",
        "anchor70": "anchor_lp70",
    }
    people = list(Participant.objects.filter(test=test).order_by("pk").values_list("external_id", flat=True))
    assert people == ["a@example.org | 31 | female", "b@example.org | 25 | male"]
    r = frames.ratings_frame(test)
    assert r.loc[r["system"] == "C1", "score"].mean() == pytest.approx((72 + 80 + 66) / 3)
    assert sorted(r["item"].unique()) == ["trial1", "trial2"]


def test_webmushra_problems_name_webmushras_own_columns(researcher):
    bad = WEBMUSHRA.replace("trial1,C1,72,", "trial1,C1,172,").replace(
        "a@example.org,31,female,trial2,C2", ",,,trial2,C2"
    )
    e = rejected(researcher, bad.encode(), fmt="webmushra")
    assert e.extra["errors"] == [
        "line 3: column rating_score: 172 is out of range; must be a number from 0 to 100",
        "line 9: column questionnaire answers (all of them): empty",
    ]


def test_a_webmushra_file_must_be_mushra_and_must_identify_listeners(researcher):
    e = rejected(researcher, WEBMUSHRA.encode(), fmt="webmushra", kind="mos")
    assert e.extra["errors"] == [
        "kind: webMUSHRA's mushra.csv holds MUSHRA ratings; kind must be mushra, not 'mos'"
    ]
    anonymous = "session_test_id,trial_id,rating_stimulus,rating_score,rating_time,rating_comment\nt,trial1,C1,50,1,\n"
    e = rejected(researcher, anonymous.encode(), fmt="webmushra")
    assert e.extra["errors"][0].startswith(
        "line 1: no questionnaire columns between session_test_id and trial_id"
    )
    e = rejected(researcher, csv_bytes(mushra_rows(n_listeners=1)), fmt="webmushra")
    assert e.extra["errors"][0].startswith(
        "line 1: column session_test_id: missing; not a webMUSHRA mushra.csv"
    )


def test_the_management_command_imports_and_reports_problems(researcher, tmp_path):
    path = tmp_path / "ratings.csv"
    path.write_bytes(csv_bytes(mushra_rows(n_listeners=2)))
    mapping = tmp_path / "map.txt"
    mapping.write_text("# none\n")
    out = io.StringIO()
    call_command(
        "listening_import", str(path), "--name", "cmd-import", "--kind", "mushra", "--owner", "importer",
        "--checkpoints", str(mapping), stdout=out,
    )  # fmt: skip
    test = ListeningTest.objects.get(name="cmd-import")
    assert f"imported listening test {test.pk}" in out.getvalue() and test.owner == researcher
    path.write_bytes(b"listener,item,system,score\nL0,u0,a,300\n")
    from django.core.management.base import CommandError

    with pytest.raises(CommandError) as caught:
        call_command(
            "listening_import", str(path), "--name", "cmd-2", "--kind", "mushra", "--owner", "importer"
        )
    assert "line 2: column score: 300 is out of range" in str(caught.value)
    assert not ListeningTest.objects.filter(name="cmd-2").exists()
