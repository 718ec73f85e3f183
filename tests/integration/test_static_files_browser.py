"""Static files as a deployment serves them (issue 17, item 8), in Debian's Chromium: ``collectstatic`` with the
production storage (hashed names, gzip/brotli copies), ``gunicorn evalsite.wsgi`` with DEBUG off and
WhiteNoise, under the Content-Security-Policy. The listener page's ES modules load each other by their hashed
names; the dashboards draw their charts with the vendored partial plotly.js, whose registered trace types
(``Plotly.PlotSchema``) are what benchmarks/plotly_bundle.py reads from the file. Screenshots at 1280 and
390 px go to $EVALSITE_SCREENSHOT_DIR (default: the temp folder)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from django.contrib.auth import get_user_model
from django.test import Client

import tests.integration.browser as listener_browser
from evalsite.listening import services
from evalsite.listening.models import ListeningTest
from tests.factories import listening_world
from tests.integration.conftest import REPO, free_port
from tests.integration.test_csp_browser import COLLECT_VIOLATIONS, take_by_services
from tests.web_tier import RESEARCHER, site_build

pytestmark = pytest.mark.integration

_spec = importlib.util.spec_from_file_location("plotly_bundle", REPO / "benchmarks" / "plotly_bundle.py")
plotly_bundle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plotly_bundle)

HASHED = re.compile(r"/static/.+\.[0-9a-f]{12}\.[a-z]+$")
LONG = "max-age=315360000, public, immutable"


@pytest.fixture
def site(worker_env):
    """Demo-like data with listeners' answers, committed: the web process reads it from this test's database."""
    built = site_build(listening_world=listening_world, password="static-files-password")
    test = ListeningTest.objects.get(pk=built["test"])
    for k in range(4):
        take_by_services(services.participant_join(test=test), k)
    return built


@pytest.fixture
def deployed(worker_env, tmp_path):
    """collectstatic, then gunicorn, both with the production storage of evalsite.settings.base, DEBUG off."""
    from django.conf import settings

    env = {**worker_env, "DJANGO_SETTINGS_MODULE": "evalsite.settings.base", "ALLOWED_HOSTS": "127.0.0.1"}
    env["SECRET_KEY"] = settings.SECRET_KEY  # a session this process signs in is valid there too
    env.pop("DEBUG", None)
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=REPO,
        env=env,
        check=True,
        timeout=600,
    )
    root = Path(env["EVALSITE_VAR_DIR"]) / "staticfiles"
    port, log_path = free_port(), tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "evalsite.wsgi", "-w", "1", "--threads", "4"]
            + ["-b", f"127.0.0.1:{port}", "--timeout", "120"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")[-4000:]
            try:
                if requests.get(f"{base}/healthz", timeout=30).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz within 120 s"
            time.sleep(0.2)
        yield base, json.loads((root / "staticfiles.json").read_text())["paths"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def watched(browser, errors, statics):
    page = listener_browser.new_page(browser, errors, enforce_csp=True)
    page.add_init_script(COLLECT_VIOLATIONS)
    page.on(
        "response",
        lambda r: (
            statics.append(
                (r.url, r.status, r.headers.get("cache-control"), r.headers.get("content-encoding"))
            )
            if "/static/" in r.url
            else None
        ),
    )
    return page


def test_listener_modules_and_dashboards_load_from_hashed_compressed_long_cached_files(
    site, deployed, browser, shots
):
    base, manifest = deployed
    errors: list[str] = []
    statics: list[tuple] = []

    # The listener: the page's module graph (listener.js -> app.js -> trial.js -> ...) all by hashed name.
    page = watched(browser, errors, statics)
    page.goto(f"{base}/l/i/{site['invite']}/?PROLIFIC_PID=static-1")
    page.click("[data-testid=consent-agree]")
    listener_browser.wait_ready(page)
    modules = [s for s in statics if "/static/listening/" in s[0] and s[0].endswith(".js")]
    expected = {p for p in manifest if p.startswith("listening/") and p.endswith(".js")}
    assert len(modules) >= len(expected) - 1, modules  # every module but, perhaps, one the first screen skips
    for url, status, cache, encoding in modules:
        assert HASHED.search(url), f"{url} loaded by its plain name"
        assert (status, cache) == (200, LONG), url
        assert encoding in ("gzip", "br"), (url, encoding)
    assert page.evaluate("window.__cspViolations") == [] and errors == []

    # The researcher (signed in: a session in the shared database) opens the test's results and the run charts; every chart is drawn.
    statics.clear()
    dashboard = watched(browser, errors, statics)
    researcher = Client()
    researcher.force_login(get_user_model().objects.get(username=RESEARCHER))
    dashboard.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": base}]
    )
    for path in (f"/analysis/tests/{site['test']}/", f"/analysis/runs/{site['run']}/"):
        dashboard.goto(base + path)
        assert dashboard.url == base + path, f"{path} ended at {dashboard.url}"
        try:
            dashboard.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
        except Exception:
            dashboard.screenshot(path=str(shots / "no-charts.png"), full_page=True)
            raise AssertionError(f"{path}: no chart drawn; {errors}, {statics}") from None
        charts = dashboard.locator(".js-plotly-plot")
        assert charts.count() >= 2, path
        for k in range(charts.count()):
            charts.nth(k).locator(".main-svg").first.wait_for(state="attached", timeout=30000)
    plotly = [s for s in statics if "/static/vendor/plotly/" in s[0]]
    assert plotly and all(HASHED.search(u) and st == 200 and c == LONG for u, st, c, _ in plotly), plotly
    # What the browser's plotly registered is what the unit test's parser reads from the file.
    schema = set(dashboard.evaluate("Object.keys(Plotly.PlotSchema.get().traces)"))
    vendored = (REPO / "static" / "vendor" / "plotly" / "plotly-cartesian.min.js").read_bytes()
    assert schema == plotly_bundle.trace_types(vendored)
    assert dashboard.evaluate("window.__cspViolations") == [] and errors == []
    dashboard.goto(f"{base}/analysis/tests/{site['test']}/")
    dashboard.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
    for width in (1280, 390):
        dashboard.set_viewport_size({"width": width, "height": 900})
        dashboard.wait_for_timeout(300)  # plotly's responsive relayout
        dashboard.screenshot(path=str(shots / f"test-results-{width}.png"), full_page=False)

    # The favicon's redirect names the hashed icon; a plain name still answers, briefly cached.
    icon = requests.get(f"{base}/favicon.ico", allow_redirects=False, timeout=30)
    assert icon.status_code == 301 and HASHED.search(icon.headers["location"])
    plain = requests.get(f"{base}/static/vendor/plotly/plotly-cartesian.min.js", timeout=30)
    assert plain.status_code == 200 and plain.headers["cache-control"] == "max-age=60, public"
    assert requests.get(f"{base}/static/../manage.py", timeout=30).status_code == 404
