"""Driving Debian's Chromium through playwright: the browser the listener tests share, and the steps
every listener page test takes (open a page, wait for it, move a slider and wait for the save)."""

import os
import tempfile
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


def browser_fixture():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{CHROMIUM} is missing; `make test` installs Debian's chromium")
        pytest.skip(f"{CHROMIUM} is not installed (make test installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread; the ORM calls the test
    # makes between browser steps are plain synchronous code and safe here.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def shots_fixture(request):
    folder = (
        Path(os.environ.get("EVALSITE_SCREENSHOT_DIR", tempfile.gettempdir()))
        / "evalsite-screenshots"
        / request.node.name
    )
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return folder


def new_page(browser, errors, *, enforce_csp: bool = False):
    # Playwright's wait_for_function polls with eval() in the page, which the site's
    # Content-Security-Policy forbids; the policy itself is checked in test_csp_browser.py.
    context = browser.new_context(viewport={"width": 1200, "height": 900}, bypass_csp=not enforce_csp)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return page


def wait_ready(page):
    page.wait_for_selector("#listener-app[data-ready=true]", timeout=30000)


def wait_saved(page):
    page.wait_for_selector("[data-testid=save-status][data-state=saved]", timeout=15000)


def set_slider(page, label, value):
    page.locator(f"[data-testid=stim-{label}]").click()
    slider = page.locator(f"[data-testid=slider-{label}]")
    slider.wait_for(state="visible")
    page.wait_for_function(f"!document.querySelector('[data-testid=slider-{label}]').disabled", timeout=10000)
    slider.evaluate(
        "(el, v) => { el.value = String(v); el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); }",
        value,
    )
    wait_saved(page)
