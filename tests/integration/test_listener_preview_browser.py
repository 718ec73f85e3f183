"""A researcher previews a MUSHRA test as a listener in Debian's Chromium (playwright), against Django on
PostgreSQL: consent, calibration, headphone check, every trial with the real widgets and the end page,
each saying it is a preview; afterwards the database holds nothing of it."""

import json
from importlib import import_module

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from django.test import Client

from evalsite.listening.models import (
    ArtifactFlag,
    Assignment,
    ListeningTest,
    Participant,
    Rating,
    SoundFetch,
    StimulusHandle,
)
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, set_slider, wait_ready
from tests.integration.test_listener_browser_comparisons import continue_to_next
from tests.integration.test_listener_browser_quality import calibrate_volume, take_headphone_check

pytestmark = pytest.mark.integration

BANNER = "Preview — answers are not saved."


def preview_participant(session_key: str, token: str) -> Participant:
    """The preview's participant as the researcher's session keeps it (to answer the headphone check
    right, as a listener wearing headphones would)."""
    store = import_module(django_settings.SESSION_ENGINE).SessionStore(session_key)
    snapshot = json.loads(store["listening-previews"][token]["snapshot"])
    return Participant(token=token, seed=snapshot["participant"]["seed"])


def test_a_researcher_previews_a_mushra_test_to_the_end_in_chromium_and_nothing_is_stored(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.0  # the byte rule of "heard" only: no waiting
    world = listening_world(n_items=3)
    test = make_listening_test(
        name="browser-preview",
        kind="mushra",
        checkpoints=world["checkpoints"],
        training_items=1,
        seed=7,
        title="Rate the quality of speech",
        instructions="Compare every sample with the reference.\n\nUse the whole scale.",
        completion_code="PREVIEW-DONE",
        completion_redirect="https://app.prolific.example/submissions/complete?cc=X",
        require_play_all=True,
        headphone_check=True,
        gold_items=1,
        trapping_items=1,
    )
    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser("previewer", password="x"))
    session_key = researcher.cookies["sessionid"].value
    errors: list[str] = []
    page = new_page(browser, errors)
    page.context.add_cookies([{"name": "sessionid", "value": session_key, "url": live_server.url}])
    page.goto(f"{live_server.url}/listening/{test.pk}/")
    page.click("[data-testid=listener-preview]")
    assert BANNER in page.inner_text("[data-testid=preview-banner]")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(shots / "preview-consent.png"), full_page=True)
    page.click("[data-testid=consent-agree]")
    token = page.url.rstrip("/").split("/")[-1]
    assert token.startswith("preview.")
    calibrate_volume(page, keyboard=False, shots=shots)
    assert page.locator("[data-testid=preview-banner]").is_visible()
    take_headphone_check(page, preview_participant(session_key, token), wrong=0, shots=shots)
    page.wait_for_selector("#listener-app[data-ready=true][data-kind=mushra]", timeout=15000)
    for position in range(5):  # training, two items, one gold and one trapping trial
        wait_ready(page)
        assert page.locator("[data-testid=preview-banner]").is_visible()
        labels = [
            el.get_attribute("data-testid")[5:] for el in page.query_selector_all("[data-testid^=stim-]")
        ]
        assert labels == list("ABCDE")
        # Every sound played long enough ("play every sound" is on), as a listener must.
        page.click("[data-testid=play-ref]")
        page.wait_for_selector("[data-testid=play-ref].is-heard", timeout=10000)
        for i, label in enumerate(labels):
            set_slider(page, label, 100 if i == 0 else 20 + 10 * i)
            page.wait_for_selector(f"[data-testid=stim-{label}].is-heard", timeout=10000)
        page.wait_for_function(
            "document.querySelector('[data-testid=continue]').disabled === false", timeout=15000
        )
        if position == 1:
            page.screenshot(path=str(shots / "preview-trial.png"), full_page=True)
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(shots / "preview-trial-390.png"), full_page=True)
            page.set_viewport_size({"width": 1280, "height": 900})
        continue_to_next(page)
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    assert page.inner_text("[data-testid=completion-code]").strip() == "PREVIEW-DONE"
    # A preview never sends the researcher off to the study platform.
    assert page.locator("[data-testid=redirect-note]").count() == 0
    page.screenshot(path=str(shots / "preview-completion.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "preview-completion-390.png"), full_page=True)
    page.reload()
    assert "you have finished the test" in page.inner_text("main") and BANNER in page.content()
    for model in (Participant, Assignment, StimulusHandle, Rating, ArtifactFlag, SoundFetch):
        assert not model.objects.exists(), model.__name__
    test.refresh_from_db()
    assert test.status == ListeningTest.Status.DRAFT
    assert errors == []
