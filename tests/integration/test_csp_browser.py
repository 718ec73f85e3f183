"""Issue 14, finding 12, in Debian's Chromium: under the Content-Security-Policy every response now
carries, a listener takes a whole MUSHRA session with audio (gold and trapping trials included) and a
researcher opens the dashboards with plotly charts, and the browser reports no policy violation and
no console error. Screenshots of both go to $EVALSITE_SCREENSHOT_DIR (default: the temp folder)."""

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from playwright.sync_api import expect

import tests.integration.browser as listener_browser
import tests.integration.test_listener_browser as listener_session
from evalsite.listening import services
from evalsite.listening.models import Participant, StimulusHandle
from evalsite.listening.selectors import listener_state
from tests.factories import listening_world, make_listening_test

pytestmark = pytest.mark.integration


COLLECT_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => window.__cspViolations.push(
  `${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${e.sourceFile}:${e.lineNumber}`));
"""


def watched_page(browser, errors):
    page = listener_browser.new_page(browser, errors, enforce_csp=True)
    page.add_init_script(COLLECT_VIOLATIONS)
    return page


def set_slider(page, label, value):
    """listener_browser.set_slider without wait_for_function (its polling uses eval(), which the policy
    refuses): locator assertions run in Playwright's own script world."""
    page.locator(f"[data-testid=stim-{label}]").click()
    slider = page.locator(f"[data-testid=slider-{label}]")
    expect(slider).to_be_enabled(timeout=10000)
    slider.evaluate(
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }",
        value,
    )
    listener_browser.wait_saved(page)


def violations(page) -> list[str]:
    return page.evaluate("window.__cspViolations")


def take_by_services(participant, k: int):
    """A careful listener: the hidden reference 100, the anchors low, the systems in between."""
    score = {"hidden_reference": 100, "anchor_lp35": 15, "anchor_lp70": 35, "system": 60 + 5 * k}
    for trial in listener_state(participant)["trials"]:
        for stim in trial["stimuli"]:
            handle = StimulusHandle.objects.select_related("stimulus__condition").get(token=stim["id"])
            expected = handle.stimulus.expected
            value = (
                (expected["min"] + expected["max"]) / 2
                if expected
                else score.get(handle.stimulus.condition.role, 50)
            )
            services.rating_submit(
                participant=participant,
                trial=trial["id"],
                stimulus=stim["id"],
                score=value,
                request_id=uuid.uuid4().hex,
            )
        services.trial_complete(participant=participant, trial=trial["id"])


def test_the_listener_page_and_the_plotly_dashboards_run_under_the_policy_without_a_violation(
    live_server, transactional_db, browser, shots, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path / "media"
    world = listening_world(n_items=3)
    test = services.listening_test_publish(
        test=make_listening_test(
            name="csp-mushra",
            kind="mushra",
            checkpoints=world["checkpoints"],
            training_items=1,
            seed=7,
            completion_code="CSP-DONE",
            gold_items=1,
            trapping_items=1,
        )
    )

    errors: list[str] = []
    page = watched_page(browser, errors)
    response = page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=csp-1")
    assert "'nonce-" in response.headers["content-security-policy"]
    page.click("[data-testid=consent-agree]")
    participant = Participant.objects.get(test=test)
    for position in range(5):  # training, two items, a gold and a trapping trial: every sound played
        listener_browser.wait_ready(page)
        _, scores = listener_session.mushra_scores(participant, position)
        for label in [
            el.get_attribute("data-testid")[5:] for el in page.query_selector_all("[data-testid^=stim-]")
        ]:
            set_slider(page, label, scores[label])
        if position == 1:
            page.screenshot(path=str(shots / "listener-under-csp.png"), full_page=True)
        page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=completion-code]", timeout=15000)
    assert violations(page) == []
    participant.refresh_from_db()
    assert participant.status == "completed"

    for k in range(4):  # a few more listeners, so the results have spread
        take_by_services(services.participant_join(test=test), k)
    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser("csp-admin", password="x"))
    dashboard = watched_page(browser, errors)
    # The researcher pages name no icon, so the browser asks for /favicon.ico: a 404 would be a console error.
    dashboard.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )
    dashboard.goto(f"{live_server.url}/analysis/tests/{test.pk}/")
    dashboard.wait_for_load_state("networkidle")
    assert dashboard.url.endswith(f"/analysis/tests/{test.pk}/")
    assert (violations(dashboard), errors) == ([], [])
    dashboard.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
    assert dashboard.locator(".js-plotly-plot").count() >= 2
    dashboard.screenshot(path=str(shots / "dashboard-under-csp.png"), full_page=False)
    assert violations(dashboard) == []
    run = world["checkpoints"][0].run
    checkpoints = "&".join(f"c={c.pk}" for c in world["checkpoints"])
    for path in (
        f"/analysis/runs/{run.pk}/",
        f"/analysis/compare/?{checkpoints}",
        f"/listening/{test.pk}/",
        "/admin/listening/participant/",
    ):
        response = dashboard.goto(live_server.url + path)
        assert response.status == 200, path
        dashboard.wait_for_load_state("networkidle")
        assert violations(dashboard) == [], path
    assert errors == []


def test_the_api_documentation_page_draws_every_operation_offline_under_the_policy(
    live_server, transactional_db, browser, shots
):
    """Swagger UI from the installed package's static files: no request leaves this server, the policy
    blocks nothing, and every operation of the schema is listed."""
    errors: list[str] = []
    page = watched_page(browser, errors)
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith(live_server.url) else outside.append(r.url))
    page.goto(f"{live_server.url}/api/v1/docs/")
    operations = page.locator(".opblock")
    expect(operations.first).to_be_visible(timeout=20000)
    page.screenshot(path=str(shots / "api-docs.png"), full_page=False)
    assert outside == [] and violations(page) == [] and errors == []
    schema = Client().get("/api/v1/schema/", HTTP_ACCEPT="application/json").json()
    listed = sum(len(methods) for methods in schema["paths"].values())
    assert operations.count() == listed > 10
