"""A listener answers a pre-test and a post-test questionnaire around a MOS session in Debian's Chromium
(keyboard for the answers), against Django on PostgreSQL: the pages come in order, a missing required answer
is refused on the page with what was given kept, reopening the invite link asks nothing again, and the
database, the researcher's summary and the export hold exactly what was given."""

import os
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from evalsite.analysis.exports import questionnaire_table
from evalsite.listening.models import Participant
from evalsite.listening.services import listening_test_publish
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, wait_ready, wait_saved

pytestmark = pytest.mark.integration

CONFIG = {
    "pre": [
        "age_band",
        "gender",
        "hearing_problems",
        "listening_device",
        "environment_noise",
        {"id": "native_language", "required": False},
        {
            "id": "genre",
            "custom": True,
            "type": "choice",
            "label": "Music you listen to most",
            "options": ["Jazz", "Rock"],
        },
    ],
    "post": ["comments"],
}
SHOTS = Path(os.environ.get("EVALSITE_QUESTIONNAIRE_SHOTS", "/tmp/h23-shots"))


def snap(page, name, *, fits=True):
    """The page at 1280 px and at 390 px (a phone), full length; a listener page (``fits``) in the width."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=str(SHOTS / f"{name}-{width}.png"), full_page=True)
        # Nothing sticks out sideways at either width.
        assert not fits or page.evaluate("document.documentElement.scrollWidth") <= width
    page.set_viewport_size({"width": 1280, "height": 900})


def choose(page, name, value):
    """Pick a radio option with the keyboard: focus the group, then arrow keys until ``value`` is checked."""
    first = page.locator(f"input[name={name}]").first
    first.focus()
    page.keyboard.press("Space")
    for _ in range(12):
        if page.locator(f"input[name={name}][value='{value}']").is_checked():
            return
        page.keyboard.press("ArrowDown")
    raise AssertionError(f"{value} not reached in {name}")


def test_a_listener_answers_the_pre_and_post_questionnaires_around_the_trials_in_chromium(
    live_server, transactional_db, browser, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2)
    test = listening_test_publish(
        test=make_listening_test(
            name="browser-questionnaire",
            kind="mos",
            checkpoints=world["checkpoints"][:1],
            training_items=0,
            seed=5,
            completion_code="Q-DONE",
            questionnaire=CONFIG,
        )
    )
    errors: list[str] = []
    page = new_page(browser, errors, enforce_csp=True)  # the pages need nothing the policy forbids
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=q-1")
    page.click("[data-testid=consent-agree]")
    page.wait_for_selector("[data-testid=questionnaire-pre]")
    snap(page, "pre")

    # Some answers, one required question left out: refused on the page, the rest kept.
    choose(page, "age_band", "35-44")
    choose(page, "listening_device", "in_ear")
    page.fill("#q-native_language", "Welsh")
    page.click("[data-testid=questionnaire-submit]")
    page.wait_for_selector(".ls-q.has-error")
    snap(page, "pre-error")
    assert page.locator(".ls-q.has-error").count() == 2  # hearing problems, environment noise
    assert '"Do you have any known hearing problems?" needs an answer.' in page.inner_text(
        "[data-question=hearing_problems]"
    )
    assert (
        page.inner_text("[data-testid=questionnaire-error]") == "Please check the marked questions below (2)."
    )
    assert page.locator("input[name=age_band][value='35-44']").is_checked()
    assert page.input_value("#q-native_language") == "Welsh"
    assert Participant.objects.get(external_id="q-1").questionnaire == {}

    choose(page, "hearing_problems", "unsure")
    choose(page, "environment_noise", "quiet")
    choose(page, "gender", "prefer_not_to_say")
    page.locator("input[name=genre]").first.focus()
    page.keyboard.press("Space")
    page.locator("[data-testid=questionnaire-submit]").focus()
    page.keyboard.press("Enter")
    wait_ready(page)
    pre = {
        "age_band": "35-44",
        "gender": "prefer_not_to_say",
        "hearing_problems": "unsure",
        "listening_device": "in_ear",
        "environment_noise": "quiet",
        "native_language": "Welsh",
        "genre": "Jazz",
    }
    assert Participant.objects.get(external_id="q-1").questionnaire["pre"]["answers"] == pre

    # Reopening the invite link goes back to the trials: the page is not asked again.
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=q-1")
    wait_ready(page)
    for position in range(2):
        if position:
            wait_ready(page)
        page.click("[data-testid=stim-A]")
        page.click(f"[data-testid=score-{position + 3}]")
        wait_saved(page)
        page.click("[data-testid=continue]")

    # After the last trial: the post page, and no completion code until it is sent.
    page.wait_for_selector("[data-testid=questionnaire-post]", timeout=15000)
    assert page.locator("[data-testid=completion-code]").count() == 0
    snap(page, "post")
    page.locator("#q-comments").focus()
    page.keyboard.type("Sound B had a click near the end.\nOtherwise fine.")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("[data-testid=completion-code]")
    assert page.inner_text("[data-testid=completion-code]").strip() == "Q-DONE"
    participant = Participant.objects.get(external_id="q-1")
    assert participant.questionnaire["post"]["answers"] == {
        "comments": "Sound B had a click near the end.\nOtherwise fine."
    }
    assert participant.questionnaire["pre"]["answers"] == pre  # unchanged by anything after it
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=q-1")
    page.wait_for_selector("[data-testid=completion-code]")

    frame = questionnaire_table(test)
    assert frame.loc[0, "pre.genre"] == "Jazz" and frame.loc[0, "post.comments"].startswith("Sound B")

    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser("q-admin", password="x"))
    page.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )
    page.goto(f"{live_server.url}/listening/{test.pk}/")
    summary = page.inner_text("[data-testid=questionnaire-pre]")
    assert "In-ear headphones / earbuds: 1" in summary and "Prefer not to say: 1" in summary
    assert "click near the end" not in page.content()
    page.locator("[data-testid=questionnaire-pre]").scroll_into_view_if_needed()
    # The researcher's page as a whole (invite link, progress grid) is wider than a phone; the summary is not.
    snap(page, "researcher-summary", fits=False)
    page.set_viewport_size({"width": 390, "height": 900})
    assert page.locator("[data-testid=questionnaire-pre]").bounding_box()["width"] <= 390
    page.set_viewport_size({"width": 1280, "height": 900})
    page.click("[data-testid=questionnaire-show-text]")
    assert "click near the end" in page.inner_text("[data-testid=questionnaire-post]")
    page.goto(f"{live_server.url}/listening/new/")
    page.locator("[data-testid=questionnaire-config]").scroll_into_view_if_needed()
    assert page.locator("[name=questionnaire-post_questions][value=comments]").is_checked()
    snap(page, "build-form", fits=False)
    # The one console error: the refused page, answered 400 on purpose (as the JSON endpoint would be).
    assert errors == ["Failed to load resource: the server responded with a status of 400 (Bad Request)"]
