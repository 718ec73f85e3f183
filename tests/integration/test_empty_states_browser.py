"""Issue 17 item 2 in Debian's Chromium on PostgreSQL: a MUSHRA and an SMOS test with 0, 1 and 2 listeners, every
analysis page (results, report, the run's charts, the checkpoint comparison) at 1280 and 390 px. No raw exception
or undefined value in the visible text, no plotly chart without data points, and every empty state names what is
missing. Screenshots go to $EVALSITE_SCREENSHOT_DIR (see tests/integration/browser.py)."""

import re

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client

import tests.integration.browser as listener_browser
from tests.analysis.thin_worlds import thin_test

pytestmark = pytest.mark.integration

RAW = re.compile(r"Error|Traceback|FloatingPointError|\bnan\b|\bNaN\b|\bNone\b|\bundefined\b")
NAMES_WHAT_IS_MISSING = re.compile(r"\bneeds\b|no listener has flagged an artifact yet|\bhas \d+\b")
WIDTHS = (1280, 390)

PLOTS = """() => [...document.querySelectorAll('.js-plotly-plot')].map(el => ({
  id: el.id,
  points: (el.data || []).map(t => ['x', 'y', 'z', 'q1'].map(k => (t[k] || []).filter(v => v !== null).length)
                                      .reduce((a, b) => Math.max(a, b), 0)),
}))"""
UNDRAWN = """() => [...document.querySelectorAll('div.figure, .chart > div[id]')]
  .filter(el => !el.classList.contains('js-plotly-plot')).map(el => el.id)"""


def check_page(page, url: str, shot: str, shots) -> list[str]:
    """Open ``url`` at each width, screenshot it, and check its text and charts; the empty states' texts."""
    states: list[str] = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        response = page.goto(url)
        assert response.status == 200, url
        page.wait_for_load_state("networkidle")
        text = page.inner_text("body")
        found = RAW.search(text)
        assert not found, (url, found[0], text[max(0, found.start() - 200) : found.start() + 200])
        for plot in page.evaluate(PLOTS):
            assert plot["points"] and max(plot["points"]) > 0, (url, plot)  # no empty plot
        assert page.evaluate(UNDRAWN) == [], url  # no chart container left blank
        states = page.locator("[data-testid=empty-state]").all_inner_texts()
        for state in states:
            assert NAMES_WHAT_IS_MISSING.search(state), (url, state)
        page.screenshot(path=str(shots / f"{shot}-{width}.png"), full_page=True)
    return states


@pytest.mark.parametrize("kind", ["mushra", "smos"])
def test_every_analysis_page_of_a_thin_test_shows_data_or_says_what_is_missing(
    kind, live_server, transactional_db, browser, shots
):
    researcher = Client()
    researcher.force_login(get_user_model().objects.create_superuser(f"thin-{kind}", password="x"))
    errors: list[str] = []
    page = listener_browser.new_page(browser, errors)
    page.context.add_cookies(
        [{"name": "sessionid", "value": researcher.cookies["sessionid"].value, "url": live_server.url}]
    )
    seen: dict[int, list[str]] = {}
    for listeners in (0, 1, 2):
        cache.clear()
        test, world = thin_test(kind, listeners, name=f"{kind}-{listeners}-listeners")
        base = f"{live_server.url}/analysis/tests/{test.pk}"
        seen[listeners] = check_page(page, f"{base}/", f"{kind}-{listeners}-results", shots)
        check_page(page, f"{base}/report.html", f"{kind}-{listeners}-report", shots)
        first, second = world["checkpoints"]
        check_page(page, f"{live_server.url}/analysis/runs/{first.run_id}/", f"{kind}-{listeners}-run", shots)
        check_page(
            page,
            f"{live_server.url}/analysis/compare/?c={first.pk}&c={second.pk}",
            f"{kind}-{listeners}-compare",
            shots,
        )
    # The states shrink as listeners arrive: with none, every section waits for ratings; with one, the
    # statistics that need a second listener say so; with two, only the system-level correlation (2 systems) is out.
    assert any("needs ratings from at least 1 listener (has 0" in s for s in seen[0])
    assert any("metrics are stored (pesq)" in s for s in seen[0])
    assert any("needs at least 2 listeners who rated the same sounds (has 1" in s for s in seen[1])
    assert len(seen[0]) > len(seen[1]) > len(seen[2]) >= 1
    assert all("system level needs at least 3 conditions" in s for s in seen[2])
    assert not errors, errors
