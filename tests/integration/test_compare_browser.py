"""Issue 17: the checkpoint comparison page reads at 1280 px in Debian's Chromium. With a dozen metric
columns the human scores (first) are in view without scrolling, and the checkpoint column stays in view
when the table is scrolled to its last column. A screenshot goes to $EVALSITE_SCREENSHOT_DIR."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

import tests.integration.browser as listener_browser
from evalsite.listening import services
from evalsite.listening.models import StimulusHandle
from evalsite.listening.selectors import listener_state
from evalsite.scoring.models import MetricResult
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.integration

WIDTH = 1280
METRICS = [f"metric_with_a_long_descriptive_name_{k}" for k in range(12)]


def rate_everything(participant, score_of_label):
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            label = StimulusHandle.objects.select_related("stimulus__condition").get(token=stim["id"])
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=score_of_label(label.stimulus.condition.label),
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def test_the_compare_page_keeps_human_scores_and_the_checkpoint_column_in_view_at_1280_px(
    live_server, transactional_db, browser, shots
):
    world = listening_world(n_items=3)
    first, second = world["checkpoints"]
    test = services.listening_test_publish(
        test=make_listening_test(
            name="wide-mos", kind="mos", checkpoints=[first, second], training_items=0, seed=2
        )
    )
    for k in range(3):
        rate_everything(
            services.participant_join(test=test),
            lambda label, k=k: 4 + (k == 0) if label == str(first) else 2,
        )
    for ckpt, base in ((first, 1.0), (second, 2.0)):
        for k, name in enumerate(METRICS):
            MetricResult.objects.create(
                checkpoint=ckpt,
                params_hash="p",
                name=name,
                status="done",
                value=base + k,
                ci_low=base + k - 0.1,
                ci_high=base + k + 0.1,
                higher_is_better=True,
                n=20,
                spec_key="s",
            )
    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser("wide-admin", password="x"))
    errors: list[str] = []
    page = listener_browser.new_page(browser, errors)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    page.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )
    response = page.goto(f"{live_server.url}/analysis/compare/?c={first.pk}&c={second.pk}")
    assert response.status == 200
    human = page.locator("#comparison thead th.human").first
    assert (
        "wide-mos (MOS)" in human.inner_text()
        and "screened: 0 of 3 listeners excluded; completed trials only" in human.inner_text()
    )
    box = human.bounding_box()
    assert box["x"] + box["width"] <= WIDTH, box  # in view without scrolling sideways
    page.screenshot(path=str(shots / "compare-1280.png"), full_page=False)
    wrap = page.locator(".compare-wrap")
    assert wrap.evaluate("el => el.scrollWidth > el.clientWidth")  # wide enough to scroll at all
    wrap.evaluate("el => { el.scrollLeft = el.scrollWidth; }")
    sticky = page.locator("#comparison tbody th.sticky").first
    wrap_box, sticky_box = wrap.bounding_box(), sticky.bounding_box()
    assert abs(sticky_box["x"] - wrap_box["x"]) < 2, (sticky_box, wrap_box)  # pinned to the left edge
    assert sticky.inner_text() == f"{second.run.name} @ {second.step}"  # rows by run name
    last = page.locator("#comparison thead th").last.bounding_box()
    assert last["x"] + last["width"] <= wrap_box["x"] + wrap_box["width"] + 1
    page.screenshot(path=str(shots / "compare-1280-scrolled.png"), full_page=False)
    assert errors == []
