"""Quality controls in Debian's Chromium (playwright) against Django on PostgreSQL: Continue waits
until every sound has been played, and after a level calibration (by keyboard) the antiphase
headphone check passes or screens out."""

import pytest

from evalsite.listening.models import Assignment, Participant, Rating, SoundFetch
from evalsite.listening.selectors import headphone_trials
from evalsite.listening.services import listening_test_publish
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, wait_ready, wait_saved
from tests.integration.test_listener_browser_comparisons import continue_to_next

pytestmark = pytest.mark.integration


def continue_enabled(page) -> bool:
    return page.locator("[data-testid=continue]").is_enabled()


def test_continue_waits_until_every_sound_and_the_reference_have_been_played(
    live_server,
    transactional_db,
    browser,
    shots,
    settings,
    tmp_path,  # noqa: F811
):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.8  # the default: this test plays every sound for real
    world = listening_world(n_items=1)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-play-all",
            kind="smos",
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=5,
            completion_code="PLAYED",
            require_play_all=True,
        )
    )
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.click("[data-testid=consent-agree]")
    for position in range(2):
        wait_ready(page)
        page.click("[data-testid=score-4]")
        wait_saved(page)
        reason = page.locator("[data-testid=play-all-reason]")
        assert not continue_enabled(page)
        assert "Not played yet: Reference, Sample A" in reason.inner_text()
        if position == 0:
            page.screenshot(path=str(shots / "play-all-waiting.png"), full_page=True)
        page.click("[data-testid=play-ref]")
        page.wait_for_function(
            "!document.querySelector('[data-testid=play-all-reason]').innerText.includes('Reference')",
            timeout=10000,
        )
        assert "Not played yet: Sample A" in reason.inner_text() and not continue_enabled(page)
        if position == 1:
            # A reload keeps what was heard (the server has the "heard" events).
            page.wait_for_timeout(300)
            page.evaluate("window.dispatchEvent(new Event('pagehide'))")
            page.wait_for_timeout(500)
            page.reload()
            wait_ready(page)
            assert "Not played yet: Sample A" in page.inner_text("[data-testid=play-all-reason]")
        page.click("[data-testid=stim-A]")
        page.wait_for_function(
            "document.querySelector('[data-testid=continue]').disabled === false", timeout=10000
        )
        assert "every sound" in reason.inner_text()
        continue_to_next(page)
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    participant = Participant.objects.get(test=test)
    assert participant.status == "completed" and Rating.objects.filter(participant=participant).count() == 2
    for a in Assignment.objects.filter(participant=participant).prefetch_related("handles"):
        heard = {e["stimulus"] for e in a.telemetry if e["type"] == "heard"}
        assert heard == {None} | {h.token for h in a.handles.all()}
    # What let each trial finish: the server sent every byte of every sound and the reference.
    fetched = SoundFetch.objects.filter(participant=participant, complete=True)
    assert fetched.count() == 2 * 2 and all(f.ranges == [[0, f.size]] for f in fetched)
    assert errors == []


def active_testid(page) -> str | None:
    return page.evaluate("document.activeElement && document.activeElement.dataset.testid")


def calibrate_volume(page, *, keyboard: bool, shots=None):
    """The calibration step: Continue waits (and says why) until the noise has been played."""
    page.wait_for_selector("#listener-app[data-ready=true][data-kind=calibration]", timeout=15000)
    assert page.locator("[data-testid=cal-confirm]").is_disabled()
    assert "Play the sound at least once" in page.inner_text("[data-testid=cal-reason]")
    if shots is not None:
        page.screenshot(path=str(shots / "calibration.png"), full_page=True)
    if keyboard:
        page.keyboard.press("Tab")  # from the focused heading to Play
        assert active_testid(page) == "cal-play"
        page.keyboard.press("Space")
        page.wait_for_function(
            "document.querySelector('[data-testid=cal-play]').getAttribute('aria-pressed') === 'true'"
        )
        page.keyboard.press("Space")  # stop again
        assert "Stopped" in page.inner_text("[data-testid=cal-status]")
        page.keyboard.press("Tab")
        assert active_testid(page) == "cal-confirm" and page.locator("[data-testid=cal-confirm]").is_enabled()
        page.keyboard.press("Enter")
    else:
        page.click("[data-testid=cal-play]")
        page.click("[data-testid=cal-confirm]")


def take_headphone_check(page, participant, *, wrong: int, shots=None):
    """Answer the six questions; the first ``wrong`` answers are wrong."""
    expected = [t["answer"] for t in headphone_trials(participant)]
    for i, right in enumerate(expected):
        page.wait_for_selector("#listener-app[data-ready=true][data-kind=headphone]", timeout=15000)
        assert page.inner_text("[data-testid=hp-progress]") == f"Question {i + 1} of 6"
        assert page.locator("[data-testid=hp-answer-1]").is_disabled()  # play first
        page.click("[data-testid=hp-play]")
        assert page.locator("[data-testid=hp-play]").is_disabled()  # once only
        if i == 0 and shots is not None:
            page.screenshot(path=str(shots / "headphone-check.png"), full_page=True)
        page.click(f"[data-testid=hp-answer-{right % 3 + 1 if i < wrong else right}]")


def test_the_headphone_check_lets_a_headphone_listener_in_and_screens_out_a_failing_one(
    live_server,
    transactional_db,
    browser,
    shots,
    settings,
    tmp_path,  # noqa: F811
):
    settings.MEDIA_ROOT = tmp_path / "media"
    # The calibration below stops the noise at once: only the byte rule of "heard" is checked here
    # (the play-all test above keeps the wall-time rule and plays for real).
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.0
    world = listening_world(n_items=1)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-headphones",
            kind="mos",
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=8,
            completion_code="HP-OK",
            headphone_check=True,
            screened_out_redirect="https://example.org/screened",
        )
    )
    errors: list[str] = []

    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=hp-pass")
    page.click("[data-testid=consent-agree]")
    calibrate_volume(page, keyboard=True, shots=shots)
    page.wait_for_selector("[data-kind=headphone]", timeout=15000)
    calibrated = Participant.objects.get(external_id="hp-pass")
    assert calibrated.calibrated_at is not None and calibrated.calibration["plays"] == 1
    assert calibrated.calibration["level_dbfs"] == round(test.calibration_level_dbfs, 2)
    take_headphone_check(page, Participant.objects.get(external_id="hp-pass"), wrong=1, shots=shots)
    page.wait_for_selector("#listener-app[data-ready=true][data-kind=mos]", timeout=15000)
    assert page.locator("[data-testid^=score-]").count() == 5  # the first trial
    passed = Participant.objects.get(external_id="hp-pass")
    assert (
        passed.headphone_passed is True and passed.status == "active" and len(passed.headphone_answers) == 6
    )
    page.context.close()

    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=hp-fail")
    page.click("[data-testid=consent-agree]")
    page.wait_for_selector("[data-kind=calibration]", timeout=15000)
    page.reload()  # coming back before confirming: still the calibration, the check not reachable
    calibrate_volume(page, keyboard=False)
    page.wait_for_selector("[data-kind=headphone]", timeout=15000)
    take_headphone_check(page, Participant.objects.get(external_id="hp-fail"), wrong=2)
    page.wait_for_selector("[data-testid=screened-out]", timeout=15000)
    assert page.get_attribute("[data-testid=screened-out-link]", "href") == "https://example.org/screened"
    page.screenshot(path=str(shots / "headphone-screened-out.png"), full_page=True)
    failed = Participant.objects.get(external_id="hp-fail")
    assert failed.headphone_passed is False and failed.status == "screened_out"
    page.reload()  # coming back does not offer the check again
    page.wait_for_selector("[data-testid=screened-out]", timeout=15000)
    assert errors == []
