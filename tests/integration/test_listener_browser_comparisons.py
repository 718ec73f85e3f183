"""A listener takes whole CMOS (P.800 CCR) and AB preference sessions in Debian's Chromium
(playwright), against Django on PostgreSQL; the database must then hold exactly what was given,
with the CMOS sign corrected for the order A and B were heard in."""

import re

import pytest

from evalsite.listening.models import Assignment, Condition, Participant, Rating, StimulusHandle
from evalsite.listening.selectors import ab_choice, cmos_score
from evalsite.listening.services import listening_test_publish
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, wait_ready, wait_saved

pytestmark = pytest.mark.integration
RUNS3 = ("hifigan-secret-run", "evagan-hidden-run", "bigvgan-private-run")


def stimulus_labels(page):
    return [el.get_attribute("data-testid")[5:] for el in page.query_selector_all("[data-testid^=stim-]")]


def shown_position(page) -> float:
    """The play position the transport shows, in seconds (m:ss.t / m:ss.t)."""
    text = page.locator(".ls-time").inner_text()
    minutes, seconds = re.match(r"(\d+):(\d+\.\d)", text).groups()
    return 60 * int(minutes) + float(seconds)


def continue_to_next(page):
    """Continue, and wait until the next trial (or the completion page) has replaced this one."""
    before = page.inner_text(".ls-progress")
    page.click("[data-testid=continue]")
    page.wait_for_function(
        "(before) => document.querySelector('[data-testid=completion]') || ("
        "document.querySelector('#listener-app').dataset.ready === 'true' && "
        "document.querySelector('.ls-progress')?.innerText !== before)",
        arg=before,
        timeout=15000,
    )


def assert_blind(page, test):
    html = page.content().lower()
    words = [*RUNS3, "77777", "reference recording", "comparison", "baseline", "checkpoint"]
    words += [c.label.lower() for c in Condition.objects.filter(test=test)]
    assert [w for w in words if w.lower() in html] == []


def handles_at(participant, position):
    return list(
        StimulusHandle.objects.filter(assignment__participant=participant, assignment__position=position)
        .select_related("stimulus__condition")
        .order_by("position")
    )


def test_a_whole_cmos_session_in_chromium_stores_exactly_the_answers_given_with_the_sign_corrected(
    live_server,
    transactional_db,
    browser,
    shots,
    settings,
    tmp_path,  # noqa: F811
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2, runs=RUNS3)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-cmos",
            kind="cmos",
            checkpoints=world["checkpoints"][:2],
            comparison=world["checkpoints"][2],
            training_items=1,
            seed=11,
            completion_code="CMOS-DONE",
        )
    )
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=cmos-1")
    page.click("[data-testid=consent-agree]")

    raw_answers = [-3, 2, 0, 3]  # B relative to A, as clicked
    for position, raw in enumerate(raw_answers):
        wait_ready(page)
        assert stimulus_labels(page) == ["A", "B"]
        assert (
            page.locator("[data-testid^=prefer-]").count() == 0
            and page.locator("[data-testid=play-ref]").count() == 0
        )
        assert page.locator("[data-testid^=score-]").count() == 7
        if position == 0:
            page.click("[data-testid=continue]")  # nothing answered yet
            assert "Choose a rating" in page.inner_text("[data-testid=continue-message]")
            # Play A, then switch to B with the keyboard: B takes over at the same point.
            page.click("[data-testid=stim-A]")
            page.wait_for_function(
                "document.querySelector('[data-testid=now-playing]').innerText.startsWith('Playing')"
            )
            page.wait_for_timeout(400)
            page.locator("h1").focus()
            page.keyboard.press("2")
            assert page.locator("[data-testid=stim-B]").get_attribute("aria-pressed") == "true"
            assert page.inner_text("[data-testid=now-playing]") == "Playing: Sample B"
            assert shown_position(page) >= 0.2  # not restarted from 0
            page.keyboard.press("1")
            assert page.locator("[data-testid=stim-A]").get_attribute("aria-pressed") == "true"
            page.keyboard.press(" ")
            page.wait_for_function(
                "document.querySelector('[data-testid=now-playing]').innerText.startsWith('Paused')"
            )
            assert_blind(page, test)
        page.click(f"[data-testid=score-{raw}]")
        wait_saved(page)
        if position == 0:
            page.screenshot(path=str(shots / "cmos-trial.png"), full_page=True)
        if position == 2:
            # Close the tab mid-trial and come back: the answer is still there.
            page.reload()
            wait_ready(page)
            assert page.locator(f"[data-testid=score-{raw}]").is_checked()
        continue_to_next(page)
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    assert page.inner_text("[data-testid=completion-code]").strip() == "CMOS-DONE"

    participant = Participant.objects.get(test=test)
    assert participant.status == "completed" and participant.external_id == "cmos-1"
    ratings = {
        r.assignment.position: r
        for r in Rating.objects.filter(participant=participant).select_related(
            "assignment", "stimulus__condition__test"
        )
    }
    assert sorted(ratings) == [0, 1, 2, 3]
    for position, raw in enumerate(raw_answers):
        a, b = handles_at(participant, position)
        rating = ratings[position]
        assert rating.stimulus_id == b.stimulus_id and rating.score == raw
        # Sign-corrected: the system's score relative to the baseline.
        expected = raw if b.stimulus.condition.role == "system" else -raw
        assert cmos_score(rating) == expected
    assert Rating.objects.filter(participant=participant, is_training=True).count() == 2
    assert errors == []


def test_a_whole_ab_session_in_chromium_stores_exactly_the_choices_given(
    live_server,
    transactional_db,
    browser,
    shots,
    settings,
    tmp_path,  # noqa: F811
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2, runs=RUNS3)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-ab",
            kind="ab",
            checkpoints=world["checkpoints"],
            training_items=1,
            seed=5,
            allow_no_preference=True,
            completion_code="AB-DONE",
        )
    )
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.click("[data-testid=consent-agree]")

    choices = ["A", "B", "none", "B", "A", "none"]  # 2 items x 3 pairs
    for position, choice in enumerate(choices):
        wait_ready(page)
        assert stimulus_labels(page) == ["A", "B"]
        assert page.locator("[data-testid^=score-]").count() == 0
        if position == 0:
            page.click("[data-testid=continue]")
            assert "Choose the sound you prefer" in page.inner_text("[data-testid=continue-message]")
            page.locator("h1").focus()
            page.keyboard.press("1")
            page.wait_for_function(
                "document.querySelector('[data-testid=now-playing]').innerText === 'Playing: Sample A'"
            )
            page.keyboard.press("2")
            assert page.inner_text("[data-testid=now-playing]") == "Playing: Sample B"
            page.keyboard.press(" ")
            assert_blind(page, test)
            # Change of mind: only the last choice counts.
            page.click("[data-testid=prefer-B]" if choice == "A" else "[data-testid=prefer-A]")
            wait_saved(page)
        page.click(f"[data-testid=prefer-{choice}]")
        wait_saved(page)
        assert page.locator(f"[data-testid=prefer-{choice}]").get_attribute("aria-pressed") == "true"
        if position == 0:
            page.screenshot(path=str(shots / "ab-trial.png"), full_page=True)
        if position == 3:
            page.reload()
            wait_ready(page)
            assert page.locator(f"[data-testid=prefer-{choice}]").get_attribute("aria-pressed") == "true"
            assert page.locator("[data-testid=prefer-A]").get_attribute("aria-pressed") == "false"
        continue_to_next(page)
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    assert page.inner_text("[data-testid=completion-code]").strip() == "AB-DONE"

    participant = Participant.objects.get(test=test)
    assert participant.status == "completed"
    assert Assignment.objects.filter(participant=participant).count() == len(choices)
    ratings = {
        r.assignment.position: r
        for r in Rating.objects.filter(participant=participant).select_related(
            "assignment", "stimulus__condition__test"
        )
    }
    assert sorted(ratings) == list(range(len(choices)))
    for position, choice in enumerate(choices):
        a, b = handles_at(participant, position)
        preferred = ab_choice(ratings[position])
        assert preferred == {"A": a.stimulus, "B": b.stimulus, "none": None}[choice]
        assert ratings[position].stimulus_id == b.stimulus_id
    assert errors == []
