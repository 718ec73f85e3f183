"""Issue 16, item 1, in Debian's Chromium against Django on PostgreSQL: one browser takes a MUSHRA and
an SMOS test (the MUSHRA session used to say "This listening session belongs to another browser"),
and reopening an invite link after closing the tab resumes the session, or shows the end page once
the test is finished, never the consent form or the test again."""

import pytest

from evalsite.listening.models import Participant, Rating
from evalsite.listening.services import listening_test_publish
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, set_slider, wait_ready, wait_saved

pytestmark = pytest.mark.integration


def publish(world, name: str, kind: str, code: str):
    return listening_test_publish(
        test=make_listening_test(
            name=name,
            kind=kind,
            checkpoints=world["checkpoints"],
            training_items=0,
            seed=11,
            completion_code=code,
        )
    )


def test_one_browser_takes_two_tests_and_the_invite_links_resume_them(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=2)
    mushra = publish(world, "demo-mushra", "mushra", "MUSHRA-DONE")
    smos = publish(world, "demo-smos", "smos", "SMOS-DONE")
    errors: list[str] = []
    page = new_page(browser, errors)
    context = page.context

    # MUSHRA: consent and one answer, then leave it unfinished.
    page.goto(f"{live_server.url}/l/i/{mushra.invite_token}/")
    page.click("[data-testid=consent-agree]")
    wait_ready(page)
    mushra_session = page.url
    set_slider(page, "A", 73)

    # SMOS in the same browser, in another tab, taken to the end.
    smos_page = context.new_page()
    smos_page.on("pageerror", lambda exc: errors.append(str(exc)))
    smos_page.goto(f"{live_server.url}/l/i/{smos.invite_token}/")
    smos_page.click("[data-testid=consent-agree]")
    for _ in range(10):
        smos_page.wait_for_selector(
            "#listener-app[data-ready=true], [data-testid=completion-code]", timeout=30000
        )
        if smos_page.locator("[data-testid=completion-code]").count():
            break
        smos_page.click("[data-testid=play-ref]")
        smos_page.click("[data-testid=stim-A]")
        smos_page.click("[data-testid=score-4]")
        wait_saved(smos_page)
        smos_page.click("[data-testid=continue]")
    assert smos_page.inner_text("[data-testid=completion-code]").strip() == "SMOS-DONE"
    smos_session = smos_page.url
    smos_page.close()

    # Back in the MUSHRA tab: still this browser's session, the answer kept, and it goes on.
    page.reload()
    wait_ready(page)
    assert page.url == mushra_session
    assert page.locator("[data-testid=value-A]").inner_text().strip().startswith("73")
    set_slider(page, "B", 41)
    page.close()

    # Both tabs closed; the invite links are opened again in the same browser.
    again = context.new_page()
    again.on("pageerror", lambda exc: errors.append(str(exc)))
    again.goto(f"{live_server.url}/l/i/{mushra.invite_token}/")
    wait_ready(again)
    assert again.url == mushra_session and again.locator("[data-testid=consent-agree]").count() == 0
    assert again.locator("[data-testid=value-B]").inner_text().strip().startswith("41")
    again.screenshot(path=str(shots / "mushra-resumed.png"), full_page=True)
    again.goto(f"{live_server.url}/l/i/{smos.invite_token}/")
    again.wait_for_selector("[data-testid=completion]", timeout=15000)
    assert again.url == smos_session and again.locator("[data-testid=consent-agree]").count() == 0
    assert again.inner_text("[data-testid=completion-code]").strip() == "SMOS-DONE"
    assert again.locator("#listener-app").count() == 0
    again.screenshot(path=str(shots / "smos-finished-again.png"), full_page=True)

    m = Participant.objects.get(test=mushra)
    s = Participant.objects.get(test=smos)
    assert (m.status, s.status) == ("active", "completed")
    assert sorted(Rating.objects.filter(participant=m).values_list("score", flat=True)) == [41.0, 73.0]
    assert errors == []
