"""Issue 16 item 5: the test page shows the design warnings one line per kind, and a test with warnings
is published only after the researcher ticks "publish anyway". Screenshots at 1280 and 390 px go to
$EVALSITE_SCREENSHOT_DIR."""

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

import tests.integration.browser as listener_browser
from evalsite.listening.models import ListeningTest
from tests.factories import band_limit_references, listening_world, make_listening_test

pytestmark = pytest.mark.integration


def test_a_researcher_sees_grouped_design_warnings_and_publishes_only_after_confirming(
    live_server, transactional_db, browser, shots
):
    world = listening_world(n_items=12)
    band_limit_references(world, {f"utt{i}" for i in range(1, 12)})
    test = make_listening_test(
        name="band-limited-mushra",
        kind="mushra",
        checkpoints=world["checkpoints"],
        training_items=1,
        gold_items=1,
        trapping_items=0,
        loudness_target_lufs=None,
        seed=3,
    )
    assert len(test.design_warnings) == 2
    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser("checks-admin", password="x"))
    errors: list[str] = []
    page = listener_browser.new_page(browser, errors)
    page.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        assert page.goto(f"{live_server.url}/listening/{test.pk}/").status == 200
        lines = page.locator("[data-testid=design-warning]")
        assert lines.count() == 2  # 11 items x 2 anchors + 11 band-limited references: two lines
        assert [lines.nth(i).get_attribute("data-kind") for i in range(2)] == [
            "anchor_not_effective",
            "reference_band_limited",
        ]
        assert "items (11): utt1, utt10, utt11, utt2" in lines.first.inner_text()
        assert "13 trials: 11 main, 1 training, 1 quality-control" in page.inner_text(
            "[data-testid=trial-counts]"
        )
        # The warnings and the confirmation wrap on a phone screen.
        for part in ("design-warnings", "publish-anyway"):
            box = page.get_by_test_id(part).bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width, (part, box)
        page.screenshot(path=str(shots / f"design-warnings-{width}.png"), full_page=True)

    page.get_by_role("button", name="Publish anyway").click()  # the box is required: nothing is sent
    page.wait_for_timeout(300)
    test.refresh_from_db()
    assert test.status == ListeningTest.Status.DRAFT

    page.get_by_test_id("publish-anyway").locator("input").check()
    page.get_by_role("button", name="Publish anyway").click()
    page.wait_for_selector("text=test published")
    test.refresh_from_db()
    assert test.status == ListeningTest.Status.PUBLISHED
    page.screenshot(path=str(shots / "design-warnings-published-390.png"), full_page=True)
    assert errors == []
