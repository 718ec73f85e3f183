"""Issue 17 item 1: the human-score tables read at 1280 × 800 in Debian's Chromium, on the run page and the test
results page (the compare page has its own test, test_compare_browser.py): the score and best/tied columns are
in view without scrolling sideways, and a table wider than the page scrolls inside its own box with the first
column pinned. Screenshots at 1280 and 390 px go to $EVALSITE_SCREENSHOT_DIR."""

import uuid

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.test import Client

import tests.integration.browser as listener_browser
from evalsite.audio.decoding import decoded_from_array
from evalsite.audio.services import audio_asset_store
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.runs.models import Checkpoint, Generation
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.integration

WIDTH, HEIGHT, PHONE = 1280, 800, 390
RUN = "a-vocoder-run-with-a-long-descriptive-name"
STEPS = (1000, 2000, 3000)


def rate_everything(participant, score_of_step):
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            handle = StimulusHandle.objects.select_related("stimulus__condition__checkpoint").get(
                token=stim["id"]
            )
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score_of_step(handle.stimulus.condition.checkpoint.step),
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def in_view(box) -> bool:
    return box is not None and box["x"] >= 0 and box["x"] + box["width"] <= WIDTH + 0.5


def test_run_page_and_results_page_show_human_scores_without_sideways_scrolling_at_1280_px(
    live_server, transactional_db, browser, shots
):
    world = listening_world(n_items=3, runs=(RUN,), step=STEPS[0])
    first = world["checkpoints"][0]
    checkpoints = [first]
    for step in STEPS[1:]:
        ckpt = Checkpoint.objects.create(run=first.run, step=step, uri=f"/ckpt/{RUN}/g_{step:08d}")
        for i, item in enumerate(world["items"]):
            audio = (0.2 * np.random.default_rng(step + i).standard_normal(22050)).astype(np.float32)
            asset, _ = audio_asset_store(decoded=decoded_from_array(audio, 22050))
            Generation.objects.create(checkpoint=ckpt, item=item, params_hash="p", asset=asset)
        checkpoints.append(ckpt)
    tests = []
    for name in ("wide tables: MOS of every step", "wide tables: a second MOS panel of every step"):
        test = services.listening_test_publish(
            test=make_listening_test(
                name=name, kind="mos", checkpoints=checkpoints, training_items=0, seed=len(tests) + 2
            )
        )
        for k in range(3):
            rate_everything(
                services.participant_join(test=test),
                lambda step, k=k: {1000: 2, 2000: 3 + (k == 0), 3000: 5 - (k == 1)}[step],
            )
        tests.append(test)

    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser("wide-tables", password="x"))
    errors: list[str] = []
    page = listener_browser.new_page(browser, errors)
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    page.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )

    # Run page: a column per test, a row per rated step, the screening in each header.
    assert page.goto(f"{live_server.url}/runs/{first.run_id}/").status == 200
    table = page.locator("#human-scores-table")
    table.scroll_into_view_if_needed()
    heads = table.locator("thead th")
    assert heads.count() == 1 + len(tests)
    for k in range(heads.count()):
        assert in_view(heads.nth(k).bounding_box()), heads.nth(k).inner_text()
    assert "screened: 0 of 3 listeners excluded; completed trials only" in heads.nth(1).inner_text()
    best = table.locator("tbody tr").last.locator("td").first
    assert in_view(best.bounding_box()) and best.locator("strong").count() == 1  # step 3000 leads
    page.screenshot(path=str(shots / "run-page-human-scores-1280.png"), full_page=False)

    # Test results page: the kept mean and its best/tied mark are in view; wider columns scroll in the box.
    assert page.goto(f"{live_server.url}/analysis/tests/{tests[0].pk}/").status == 200
    scores = page.locator("table[data-testid=scores]")
    scores.scroll_into_view_if_needed()
    header = scores.locator("tr").first.locator("th")
    names = [header.nth(k).inner_text() for k in range(header.count())]
    for name in ("condition", "mean", "best / tied"):
        assert in_view(header.nth(names.index(name)).bounding_box()), name
    assert (
        "screened: 0 of 3 listeners excluded; completed trials only"
        in page.locator("[data-testid=screening-statement]").inner_text()
    )
    wrap = page.locator("#scores .table-wrap")
    wrap_box = wrap.bounding_box()
    assert wrap_box["x"] + wrap_box["width"] <= WIDTH + 0.5  # the box itself never widens the page
    page.screenshot(path=str(shots / "results-page-scores-1280.png"), full_page=False)

    # At 390 px the same tables scroll inside their boxes, first column pinned; the page does not widen.
    page.set_viewport_size({"width": PHONE, "height": HEIGHT})
    assert page.goto(f"{live_server.url}/analysis/tests/{tests[0].pk}/").status == 200
    wrap = page.locator("#scores .table-wrap")
    wrap.scroll_into_view_if_needed()
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")
    wrap.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    sticky = wrap.locator("td.sticky").first
    assert abs(sticky.bounding_box()["x"] - wrap.bounding_box()["x"]) < 2
    page.screenshot(path=str(shots / "results-page-scores-390.png"), full_page=False)
    assert page.goto(f"{live_server.url}/runs/{first.run_id}/").status == 200
    table_wrap = page.locator(".score-wrap")
    table_wrap.scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "run-page-human-scores-390.png"), full_page=False)
    compare = "&".join(f"c={c.pk}" for c in checkpoints)
    assert page.goto(f"{live_server.url}/analysis/compare/?{compare}").status == 200
    page.locator("#comparison").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "compare-390.png"), full_page=False)
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    assert page.goto(f"{live_server.url}/analysis/compare/?{compare}").status == 200
    page.locator("#comparison").scroll_into_view_if_needed()
    for k in range(page.locator("#comparison thead th").count()):
        assert in_view(page.locator("#comparison thead th").nth(k).bounding_box())
    page.screenshot(path=str(shots / "compare-1280.png"), full_page=False)
    assert errors == []
