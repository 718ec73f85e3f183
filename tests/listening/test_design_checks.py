"""Design checks before publishing (grouped warnings, confirmation) and per-listener balanced assignment."""

import io
import random
from collections import Counter

import pytest
from django.core.management import CommandError, call_command

from evalsite.listening import services
from evalsite.listening.models import Condition, ListeningTest, Trial
from evalsite.listening.selectors import listening_test_progress
from evalsite.listening.services.checks import (
    ANCHOR_NOT_EFFECTIVE,
    CONTROL_REUSES_TRAINING,
    REFERENCE_BAND_LIMITED,
    UNBALANCED_ASSIGNMENT,
    DesignChecks,
    check_controls,
)
from tests.factories import band_limit_references, listening_world, make_listening_test

pytestmark = pytest.mark.django_db


def build(world, name="t", kind="mushra", **kw):
    kw.setdefault("loudness_target_lufs", None)
    return make_listening_test(name=name, kind=kind, checkpoints=world["checkpoints"], seed=7, **kw)


def by_kind(test):
    return {w["kind"]: w for w in test.design_warnings}


# --- the checks -------------------------------------------------------------------------------


def test_band_limited_references_give_one_grouped_line_per_kind_naming_the_items():
    world = listening_world(n_items=5)
    band_limit_references(world, {"utt1", "utt2", "utt4"})

    test = build(world, training_items=0)

    warnings = by_kind(test)
    assert list(warnings) == [ANCHOR_NOT_EFFECTIVE, REFERENCE_BAND_LIMITED]
    # Both anchors are useless on a 3 kHz reference, yet the items are listed once, on one line.
    assert warnings[ANCHOR_NOT_EFFECTIVE]["items"] == ["utt1", "utt2", "utt4"]
    message = warnings[ANCHOR_NOT_EFFECTIVE]["message"]
    assert "3500 Hz anchor on 3 item(s)" in message and "7000 Hz anchor on 3 item(s)" in message
    assert "less than -20 dB" in message
    assert warnings[REFERENCE_BAND_LIMITED]["items"] == ["utt1", "utt2", "utt4"]
    assert "under 80% of its Nyquist frequency" in warnings[REFERENCE_BAND_LIMITED]["message"]
    # The old per-item lines are gone from the free-text warnings.
    assert not any("anchor" in w for w in test.build_warnings)


def test_full_band_references_and_balanced_designs_give_no_design_warning():
    test = build(listening_world(n_items=4), kind="smos", trials_per_participant=4)
    assert test.design_warnings == []


def test_smos_references_are_checked_for_band_limits_too_but_anchors_only_in_mushra():
    world = listening_world(n_items=3)
    band_limit_references(world, {"utt0"})
    test = build(world, kind="smos")
    assert list(by_kind(test)) == [REFERENCE_BAND_LIMITED]
    assert by_kind(test)[REFERENCE_BAND_LIMITED]["items"] == ["utt0"]


@pytest.mark.parametrize(
    ("kind", "per_listener", "unbalanced"),
    [
        ("mos", 3, True),  # 2 systems
        ("mos", 4, False),
        ("smos", 5, True),
        ("ab", 4, False),  # 2 checkpoints: one pair, always balanced
        ("mushra", 3, False),  # every trial holds every system
    ],
)
def test_trials_per_listener_that_cannot_be_split_evenly_over_the_systems_are_flagged(
    kind, per_listener, unbalanced
):
    test = build(listening_world(n_items=4), kind=kind, training_items=0, trials_per_participant=per_listener)
    assert (UNBALANCED_ASSIGNMENT in by_kind(test)) is unbalanced
    if unbalanced:
        warning = by_kind(test)[UNBALANCED_ASSIGNMENT]
        assert (
            warning["items"] == []
            and f"each listener gets {per_listener} trials over 2 systems" in warning["message"]
        )


def test_control_trials_never_use_a_training_item_and_the_check_catches_one_that_does():
    world = listening_world(n_items=4)
    test = build(world, kind="mos", training_items=2, gold_items=2, trapping_items=2)
    training = set(test.trials.filter(is_training=True).values_list("item__key", flat=True))
    controls = set(test.trials.exclude(control="").values_list("item__key", flat=True))
    assert training == {"utt0", "utt1"} and controls == {"utt2", "utt3"}
    assert test.design_warnings == []

    # A control moved onto a training item (as the old build did) is reported with its item.
    test.trials.filter(control=Trial.Control.GOLD).update(item=world["items"][0])
    checks = DesignChecks()
    check_controls(test, checks)
    [warning] = checks.as_list()
    assert warning["kind"] == CONTROL_REUSES_TRAINING and warning["items"] == ["utt0"]
    assert "2 control (gold/trapping) trial(s) use a training item" in warning["message"]


# --- publishing needs a confirmation ----------------------------------------------------------


@pytest.fixture
def warned():
    world = listening_world(n_items=3)
    band_limit_references(world, {"utt2"})
    test = build(world, name="warned", training_items=1)
    assert test.design_warnings
    return test


def test_publishing_a_test_with_design_warnings_is_refused_without_confirm_naming_them(warned):
    with pytest.raises(services.DesignWarningsUnconfirmed) as refused:
        services.listening_test_publish(test=warned)
    assert refused.value.message.startswith("test 'warned' has 2 design warning(s): low-pass anchor")
    assert "(items: utt2)" in refused.value.message
    assert refused.value.extra["fields"] == {"confirm": [refused.value.message]}
    assert [w["kind"] for w in refused.value.extra["design_warnings"]] == [
        ANCHOR_NOT_EFFECTIVE,
        REFERENCE_BAND_LIMITED,
    ]
    warned.refresh_from_db()
    assert warned.status == "draft"
    # A truthy non-boolean is no confirmation.
    with pytest.raises(services.DesignWarningsUnconfirmed):
        services.listening_test_publish(test=warned, confirm="yes")
    assert services.listening_test_publish(test=warned, confirm=True).status == "published"


def test_the_test_page_shows_grouped_warnings_and_publishes_only_with_the_publish_anyway_box(
    admin_client, warned
):
    page = admin_client.get(f"/listening/{warned.pk}/").content.decode()
    assert page.count('data-testid="design-warning"') == 2
    assert "items (1): utt2" in page and "publish anyway" in page

    response = admin_client.post(f"/listening/{warned.pk}/publish/", follow=True)
    warned.refresh_from_db()
    assert warned.status == "draft" and "Publish with confirm" in response.content.decode()
    admin_client.post(f"/listening/{warned.pk}/publish/", {"confirm": "on"})  # not the box's value
    warned.refresh_from_db()
    assert warned.status == "draft"

    admin_client.post(f"/listening/{warned.pk}/publish/", {"confirm": "yes"})
    warned.refresh_from_db()
    assert warned.status == "published"


def test_the_test_page_counts_main_training_and_control_trials_so_they_add_up(admin_client):
    test = build(
        listening_world(n_items=4),
        kind="mos",
        training_items=1,
        gold_items=2,
        trapping_items=1,
        trials_per_participant=2,
    )
    page = admin_client.get(f"/listening/{test.pk}/").content.decode()
    assert test.trials.count() == 11
    assert "11 trials: 6 main, 2 training, 3 quality-control (gold/trapping)" in page
    assert "each listener gets 2 main trials + 1 gold + 1 trapping" in page
    assert listening_test_progress(test)["trial_counts"] == {
        "main": 6,
        "training": 2,
        "control": 3,
        "total": 11,
    }


def test_the_api_publishes_a_warned_test_only_with_confirm_true(admin_client, warned):
    url = f"/api/v1/listening-tests/{warned.pk}/publish/"
    refused = admin_client.post(url, {}, content_type="application/json")
    assert refused.status_code == 400
    body = refused.json()
    assert "design warning(s)" in body["message"] and list(body["extra"]["fields"]) == ["confirm"]
    assert [w["kind"] for w in body["extra"]["design_warnings"]] == [
        ANCHOR_NOT_EFFECTIVE,
        REFERENCE_BAND_LIMITED,
    ]

    bad = admin_client.post(url, {"confirm": "maybe"}, content_type="application/json")
    assert bad.status_code == 400 and "confirm" in bad.json()["extra"]["fields"]
    listed = admin_client.post(url, {"confirm": [True]}, content_type="application/json")
    assert listed.status_code == 400 and "confirm" in listed.json()["extra"]["fields"]
    warned.refresh_from_db()
    assert warned.status == "draft"

    detail = admin_client.get(f"/api/v1/listening-tests/{warned.pk}/").json()
    assert detail["design_warnings"] == warned.design_warnings
    published = admin_client.post(url, {"confirm": True}, content_type="application/json")
    assert published.status_code == 200 and published.json()["status"] == "published"


def test_the_api_refuses_to_publish_another_researchers_test_whatever_confirm_says(
    client, django_user_model, warned
):
    stranger = django_user_model.objects.create_user("stranger", password="pw")
    client.force_login(stranger)
    response = client.post(
        f"/api/v1/listening-tests/{warned.pk}/publish/", {"confirm": True}, content_type="application/json"
    )
    assert response.status_code == 404
    warned.refresh_from_db()
    assert warned.status == "draft"


def test_the_command_keeps_nothing_when_warnings_are_not_confirmed_and_publishes_with_confirm():
    world = listening_world(n_items=3)
    band_limit_references(world, {"utt1"})
    specs = [f"{c.run.name}@{c.step}" for c in world["checkpoints"]]
    err = io.StringIO()
    with pytest.raises(CommandError, match="2 design warning\\(s\\) above; .* add --confirm"):
        call_command(
            "build_listening_test",
            "cli",
            "--kind",
            "mushra",
            "--checkpoints",
            *specs,
            "--publish",
            stdout=io.StringIO(),
            stderr=err,
        )
    assert "design warning: low-pass anchor" in err.getvalue() and "(items: utt1)" in err.getvalue()
    assert not ListeningTest.objects.filter(name="cli").exists()

    call_command(
        "build_listening_test",
        "cli",
        "--kind",
        "mushra",
        "--checkpoints",
        *specs,
        "--publish",
        "--confirm",
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert ListeningTest.objects.get(name="cli").status == "published"


# --- balanced assignment ------------------------------------------------------------------------


def simulate(n_systems, n_items, per_listener, listeners, seed=0):
    """Listeners joining one after another through ``balanced_pick``; returns each listener's trials,
    the systems and items per trial, and the final coverage."""
    trials = [(s, i) for i in range(n_items) for s in range(n_systems)]
    systems = {pk: (s,) for pk, (s, i) in enumerate(trials)}
    items = {pk: i for pk, (s, i) in enumerate(trials)}
    coverage = dict.fromkeys(systems, 0)
    rng = random.Random(seed)
    given = []
    for _ in range(listeners):
        picked = services.balanced_pick(
            coverage=coverage, systems=systems, items=items, want=per_listener, rng=rng
        )
        for pk in picked:
            coverage[pk] += 1
        given.append(picked)
    return given, systems, items, coverage


@pytest.mark.parametrize(
    ("n_systems", "n_items", "per_listener", "listeners"),
    [
        (3, 23, 6, 2),  # the demo's SMOS: 3 checkpoints, 2 listeners x 6 trials (was 5/2/5)
        (3, 12, 6, 10),
        (2, 10, 4, 7),
        (4, 8, 8, 9),
        (5, 20, 10, 13),
        (3, 4, 12, 3),  # every trial to everyone
    ],
)
def test_every_listener_hears_every_system_equally_often_and_coverage_stays_even(
    n_systems, n_items, per_listener, listeners
):
    given, systems, items, coverage = simulate(n_systems, n_items, per_listener, listeners)
    if (n_systems, n_items, per_listener) == (3, 23, 6):
        # New items are preferred after even coverage (which can make a listener meet one twice).
        assert all(len({items[pk] for pk in picked}) == 6 for picked in given)
    for picked in given:
        assert len(picked) == len(set(picked)) == per_listener
        assert set(Counter(systems[pk] for pk in picked).values()) == {per_listener // n_systems}
    assert max(coverage.values()) - min(coverage.values()) <= 1


@pytest.mark.parametrize(("n_systems", "per_listener"), [(3, 5), (2, 3), (4, 7)])
def test_an_uneven_share_is_within_one_and_the_extra_rotates_over_the_systems(n_systems, per_listener):
    given, systems, _, coverage = simulate(n_systems, 12, per_listener, 12)
    totals = Counter()
    for picked in given:
        counts = Counter(systems[pk] for pk in picked)
        assert max(counts.values()) - min(counts.values()) <= 1 and len(counts) == n_systems
        totals.update(counts)
    assert max(totals.values()) - min(totals.values()) <= 1
    assert max(coverage.values()) - min(coverage.values()) <= 1


def test_listeners_joining_an_smos_test_each_get_every_checkpoint_equally_often():
    world = listening_world(n_items=7, runs=("run-a", "run-b", "run-c"))
    test = build(world, kind="smos", training_items=1, trials_per_participant=6, votes_target=50)
    test = services.listening_test_publish(test=test)
    systems = {c.pk: c.label for c in Condition.objects.filter(test=test, role="system")}
    for _ in range(4):
        participant = services.participant_join(test=test)
        main = participant.assignments.filter(trial__is_training=False, trial__control="")
        labels = Counter(systems[s.condition_id] for a in main for s in a.trial.stimuli.all())
        assert sorted(labels.values()) == [2, 2, 2], labels
    assert set(services.trial_coverage(test).values()) <= {1, 2}


def test_the_create_api_with_publish_keeps_nothing_without_confirm_and_publishes_with_it(admin_client):
    world = listening_world(runs=("alpha", "beta"), n_items=4)
    band_limit_references(world, {"utt3"})
    refs = [{"run": c.run.pk, "step": c.step} for c in world["checkpoints"]]
    payload = {
        "name": "api-smos",
        "kind": "smos",
        "checkpoints": refs,
        "publish": True,
        "title": "Similarity",
    }
    refused = admin_client.post("/api/v1/listening-tests/", payload, content_type="application/json")
    assert refused.status_code == 400
    assert list(refused.json()["extra"]["fields"]) == ["confirm"]
    assert "reference band-limited on 1 item(s)" in refused.json()["message"]
    assert not ListeningTest.objects.filter(name="api-smos").exists()

    wrong = admin_client.post(
        "/api/v1/listening-tests/", {**payload, "confirm": "perhaps"}, content_type="application/json"
    )
    assert wrong.status_code == 400 and "confirm" in wrong.json()["extra"]["fields"]

    created = admin_client.post(
        "/api/v1/listening-tests/", {**payload, "confirm": True}, content_type="application/json"
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "published"
    assert [w["kind"] for w in body["design_warnings"]] == [REFERENCE_BAND_LIMITED]
    assert body["design_warnings"][0]["items"] == ["utt3"]


def test_the_report_of_a_test_published_anyway_carries_its_design_warnings(admin_client, warned):
    services.listening_test_publish(test=warned, confirm=True)
    report = admin_client.get(f"/analysis/tests/{warned.pk}/report.html")
    html = report.content.decode()
    assert report.status_code == 200 and 'data-testid="report-design-warnings"' in html
    assert "reference band-limited on 1 item(s)" in html and "(items: utt2)" in html


def test_a_stranger_cannot_publish_anyway_through_the_page(client, django_user_model, warned):
    client.force_login(django_user_model.objects.create_user("page-stranger", password="pw"))
    response = client.post(f"/listening/{warned.pk}/publish/", {"confirm": "yes"})
    assert response.status_code == 404
    warned.refresh_from_db()
    assert warned.status == "draft"
