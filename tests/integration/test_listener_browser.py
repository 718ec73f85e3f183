"""A listener takes whole MUSHRA (with a gold and a trapping trial) and SMOS sessions in Debian's
Chromium (playwright), against Django on PostgreSQL; the database must then hold exactly what was
given, and the control trials are scored."""

import pytest

from evalsite.listening.models import ArtifactFlag, Assignment, Participant, Rating, StimulusHandle
from evalsite.listening.selectors import listening_test_progress, quality_control_results
from evalsite.listening.services import listening_test_publish
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, set_slider, wait_ready, wait_saved

pytestmark = pytest.mark.integration


def expected_by_handle(participant, given):
    """Map what the test gave, {position: {label: score}}, to the stimuli those labels stood for."""
    expected = {}
    for position, scores in given.items():
        handles = StimulusHandle.objects.filter(
            assignment__participant=participant, assignment__position=position
        )
        for handle in handles.order_by("position"):
            expected[handle.stimulus_id] = scores["ABCDEFGHIJKL"[handle.position]]
    return expected


def mushra_scores(participant, position):
    """What the listener gives each signal: A 100, others spread; in a gold trial the hidden reference
    95 and the degraded copy 20 (passed); in a trapping trial the spoken request ignored (failed)."""
    assignment = Assignment.objects.select_related("trial").get(participant=participant, position=position)
    scores = {}
    for handle in assignment.handles.select_related("stimulus").order_by("position"):
        label, expected = "ABCDEFGHIJKL"[handle.position], handle.stimulus.expected
        if expected and assignment.trial.control == "gold":
            scores[label] = 95 if expected["min"] >= 90 else 20
        elif expected:
            scores[label] = 0 if expected["min"] >= 50 else 100
        else:
            scores[label] = 100 if handle.position == 0 else 10 + 17 * handle.position + position
    return assignment.trial.control, scores


def test_a_whole_mushra_session_with_controls_in_chromium_stores_exactly_the_ratings_and_flag_given(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=3)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-mushra",
            kind="mushra",
            checkpoints=world["checkpoints"],
            training_items=1,
            seed=7,
            completion_code="MUSHRA-DONE",
            gold_items=1,
            trapping_items=1,
        )
    )
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=pw-1&STUDY_ID=st&SESSION_ID=se")
    page.screenshot(path=str(shots / "consent.png"))
    page.click("[data-testid=consent-agree]")
    wait_ready(page)
    page.screenshot(path=str(shots / "mushra-training.png"), full_page=True)
    participant = Participant.objects.get(test=test)
    # The reload and the flag happen in the first ordinary main trial (the order is the listener's own).
    flagged = (
        Assignment.objects.filter(participant=participant, trial__control="", trial__is_training=False)
        .order_by("position")
        .first()
        .position
    )

    given: dict[int, dict[str, int]] = {}
    controls = []
    for position in range(5):  # training, two items, one gold and one trapping trial
        wait_ready(page)
        labels = [
            el.get_attribute("data-testid")[5:] for el in page.query_selector_all("[data-testid^=stim-]")
        ]
        assert labels == list("ABCDE")  # a control trial looks like any other
        control, scores = mushra_scores(participant, position)
        if control:
            controls.append(control)
            html = page.content().lower()
            assert [w for w in ("gold", "trap", "attention", "expected", "degraded") if w in html] == []
            page.screenshot(path=str(shots / f"mushra-{control}.png"), full_page=True)
        given[position] = {}
        for i, label in enumerate(labels):
            set_slider(page, label, scores[label])
            given[position][label] = scores[label]
            if position == flagged and i == 1:
                # Close the tab mid-trial and come back: the session resumes with the answers so far.
                page.reload()
                wait_ready(page)
                assert page.locator("[data-testid=value-A]").inner_text().strip().startswith(str(scores["A"]))
        if position == flagged:
            page.locator("[data-testid=stim-C]").click()
            box = page.locator("[data-testid=waveform]").bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.2, y)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=8)
            page.mouse.up()
            page.click("[data-testid=flag-start]")
            page.select_option("[data-testid=flag-category]", "click")
            page.fill("[data-testid=flag-note]", "pop near the start")
            page.click("[data-testid=flag-submit]")
            page.wait_for_function(
                "document.querySelector('[data-testid=flag-list]')?.innerText.includes('Click')",
                timeout=10000,
            )
            page.screenshot(path=str(shots / "mushra-main-with-flag.png"), full_page=True)
        page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    assert page.inner_text("[data-testid=completion-code]").strip() == "MUSHRA-DONE"
    page.screenshot(path=str(shots / "completion.png"))

    participant.refresh_from_db()
    assert participant.external_id == "pw-1" and participant.status == "completed"
    assert sorted(controls) == ["gold", "trapping"]
    stored = {r.stimulus_id: r.score for r in Rating.objects.filter(participant=participant)}
    assert stored == {k: float(v) for k, v in expected_by_handle(participant, given).items()}
    flag = ArtifactFlag.objects.get(participant=participant)
    c_handle = StimulusHandle.objects.get(
        assignment__participant=participant, assignment__position=flagged, position=2
    )
    assert (
        flag.stimulus_id == c_handle.stimulus_id
        and flag.category == "click"
        and flag.note == "pop near the start"
    )
    assert 0.1 < flag.start_s < flag.end_s < 0.7
    assert quality_control_results(test) == {
        participant.pk: {"gold": {"passed": 1, "total": 1}, "trapping": {"passed": 0, "total": 1}}
    }
    # Only the two ordinary main trials are votes: 2 items x 5 signals.
    progress = listening_test_progress(test)
    assert sum(v for row in progress["rows"] for v in row["cells"] if v) == 2 * 5
    assert errors == []


def test_a_whole_smos_session_in_chromium_stores_exactly_the_ratings_given(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-smos",
            kind="smos",
            checkpoints=world["checkpoints"],
            training_items=1,
            seed=3,
            completion_code="SMOS-DONE",
        )
    )
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.click("[data-testid=consent-agree]")
    given = {}
    for position in range(4):
        wait_ready(page)
        page.click("[data-testid=play-ref]")
        page.click("[data-testid=stim-A]")
        score = 1 + (position * 2) % 5
        page.click(f"[data-testid=score-{score}]")
        wait_saved(page)
        given[position] = {"A": score}
        if position == 0:
            page.screenshot(path=str(shots / "smos-trial.png"), full_page=True)
        if position == 2:
            page.reload()
            wait_ready(page)
        page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    assert page.inner_text("[data-testid=completion-code]").strip() == "SMOS-DONE"
    participant = Participant.objects.get(test=test)
    stored = {r.stimulus_id: r.score for r in Rating.objects.filter(participant=participant)}
    assert stored == {k: float(v) for k, v in expected_by_handle(participant, given).items()}
    assert Rating.objects.filter(participant=participant, is_training=True).count() == 2
    assert errors == []
