"""Listener-side defects seen in Chromium, each driven in Debian's Chromium (playwright) against Django
on PostgreSQL: keys on the SMOS scale, the headphone check's answers while the tones play, how a rated
MUSHRA slider reads once locked, and the style of the consent and error pages."""

import pytest

from evalsite.listening.models import Participant, Rating
from evalsite.listening.services import listening_test_publish
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, set_slider, wait_ready, wait_saved
from tests.integration.test_listener_browser_quality import calibrate_volume

pytestmark = pytest.mark.integration

WIDTHS = (1280, 390)
ACCENT = "rgb(30, 90, 200)"  # --accent in listener.css


def published(kind, name, world=None, **kw):
    world = world or listening_world(n_items=1)
    return listening_test_publish(
        test=make_listening_test(
            name=name, kind=kind, checkpoints=world["checkpoints"], training_items=0, seed=3, **kw
        )
    )


def start(browser, live_server, test, errors):
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.click("[data-testid=consent-agree]")
    wait_ready(page)
    return page


def checked_score(page):
    return page.evaluate("document.querySelector('[data-testid^=score-]:checked')?.value ?? null")


def focused_testid(page):
    return page.evaluate("document.activeElement?.dataset.testid ?? null")


def saved_score(test):
    return Rating.objects.get(participant__test=test).score


def shoot(page, shots, name):
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1200, "height": 900})


def test_space_on_a_focused_smos_option_selects_it_and_does_not_start_playback(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    test = published("smos", "defect-space")
    errors: list[str] = []
    page = start(browser, live_server, test, errors)
    shoot(page, shots, "trial")
    page.focus("[data-testid=score-3]")
    page.keyboard.press("Space")
    wait_saved(page)
    assert checked_score(page) == "3" and focused_testid(page) == "score-3"
    assert not page.inner_text("[data-testid=now-playing]").startswith("Playing")
    assert saved_score(test) == 3
    assert errors == []


def test_arrows_on_the_smos_scale_move_by_score_right_and_up_higher_left_and_down_lower(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    test = published("smos", "defect-arrows")
    errors: list[str] = []
    page = start(browser, live_server, test, errors)
    page.click("[data-testid=score-3]")
    wait_saved(page)
    # The scale reads from 5 at the top down to 1; the arrows follow the score, not the order on the page.
    for key, score in (
        ("ArrowRight", 4),
        ("ArrowUp", 5),
        ("ArrowRight", 5),
        ("ArrowLeft", 4),
        ("ArrowDown", 3),
    ):
        page.keyboard.press(key)
        assert (checked_score(page), focused_testid(page)) == (str(score), f"score-{score}"), key
    page.wait_for_function(
        "document.querySelector('[data-testid=save-status]').dataset.state === 'saved'", timeout=15000
    )
    page.wait_for_timeout(300)
    assert saved_score(test) == 3
    assert not page.inner_text("[data-testid=now-playing]").startswith("Playing")
    assert errors == []


def test_the_headphone_answers_stay_disabled_until_the_tones_have_ended(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.0
    test = published("mos", "defect-headphones", headphone_check=True)
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=hp-wait")
    page.click("[data-testid=consent-agree]")
    calibrate_volume(page, keyboard=False)
    page.wait_for_selector("#listener-app[data-ready=true][data-kind=headphone]", timeout=15000)
    answers = page.locator("[data-testid^=hp-answer-]")
    page.click("[data-testid=hp-play]")
    assert page.inner_text("[data-testid=hp-status]") == "Playing…"
    assert all(answers.nth(i).is_disabled() for i in range(3))
    page.wait_for_function(
        "document.querySelector('[data-testid=hp-status]').innerText === 'Which tone was the quietest?'",
        timeout=15000,
    )
    assert all(answers.nth(i).is_enabled() for i in range(3))
    page.click("[data-testid=hp-answer-1]")
    page.wait_for_selector("[data-testid=hp-progress]:has-text('Question 2 of 6')", timeout=15000)
    assert Participant.objects.get(external_id="hp-wait").status == "active"
    assert errors == []


# Chromium computes no style for a slider's track pseudo-element, so the track is judged by the
# stylesheet's rules: the dashed-track rules whose selector (without the pseudo-element) matches it.
DASHED_TRACK_RULES = """(l) => {
  const el = document.querySelector(`[data-testid=slider-${l}]`);
  const rules = [...document.styleSheets].flatMap((sheet) => [...sheet.cssRules]);
  return rules.filter((r) => r.selectorText?.endsWith("::-webkit-slider-runnable-track")
      && r.style.background.includes("repeating-linear-gradient")
      && el.matches(r.selectorText.replace("::-webkit-slider-runnable-track", "")))
    .map((r) => r.selectorText);
}"""


def dashed_track(page, label) -> bool:
    return bool(page.evaluate(DASHED_TRACK_RULES, label))


def test_a_rated_mushra_slider_reads_as_rated_once_another_signal_is_selected(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    test = published("mushra", "defect-mushra")
    errors: list[str] = []
    page = start(browser, live_server, test, errors)
    set_slider(page, "A", 62)
    page.click("[data-testid=stim-B]")
    page.wait_for_function("document.querySelector('[data-testid=slider-A]').disabled", timeout=10000)
    shoot(page, shots, "mushra-rated-locked")
    rated, unrated = page.locator("[data-testid=lock-A]"), page.locator("[data-testid=lock-C]")
    assert rated.inner_text().startswith("✓ rated") and "locked" not in rated.inner_text()
    assert "play to rate" in unrated.inner_text()
    assert "62" in page.inner_text("[data-testid=value-A]")
    assert "is-unrated" not in page.get_attribute("[data-testid=slider-A]", "class")
    # Solid track for the rated one, dashed (a repeating gradient) for the one not rated yet.
    assert not dashed_track(page, "A") and dashed_track(page, "C")
    assert errors == []


def page_style(page, selector):
    return page.evaluate(
        "(s) => { const el = document.querySelector(s), st = getComputedStyle(el),"
        " main = getComputedStyle(document.querySelector('main'));"
        " return {bg: st.backgroundColor, color: st.color, font: main.fontFamily, width: main.maxWidth}; }",
        selector,
    )


def test_the_consent_and_error_pages_have_the_listener_stylesheet_applied(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=1)
    test = published("smos", "defect-style", world)
    errors: list[str] = []
    page = new_page(browser, errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    style = page_style(page, "[data-testid=consent-agree]")
    # A browser's own button is grey with black text in a serif page of full width.
    assert style == {"bg": ACCENT, "color": "rgb(255, 255, 255)", "font": style["font"], "width": "992px"}
    assert "serif" not in style["font"].replace("sans-serif", "")
    shoot(page, shots, "consent")

    draft = make_listening_test(name="defect-draft", kind="smos", checkpoints=world["checkpoints"])
    response = page.goto(f"{live_server.url}/l/i/{draft.invite_token}/")
    assert response.status == 410
    message = page_style(page, "[data-testid=message]")
    assert message["bg"] == "rgb(255, 255, 255)" and message["width"] == "992px"
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(242, 244, 247)"
    shoot(page, shots, "error")
    assert [e for e in errors if "410" not in e] == []
