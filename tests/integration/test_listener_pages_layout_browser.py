"""Every page a listener can meet, looked at in Debian's Chromium (playwright) against Django on
PostgreSQL at a desktop (1280 x 800) and a phone (390 x 844) size, with what a person checking the
screenshots would look for asserted: nothing wider than the screen, every control shown, inside the
screen and at least 24 px in both directions (WCAG 2.2 target size, 2.5.8), no two controls on top of
each other, the listener stylesheet applied (font, page width, the grey page), headings no larger
than 1.5rem, signal names on one line, a page title of its own, and no console errors. The page types
and what is asserted are listed in docs/developers/tests.md.

Regenerating the screenshots (they are written on every run; the path is printed)::

    EVALSITE_SCREENSHOT_DIR=/tmp/shots \\
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test CELERY_BROKER_URL=redis://127.0.0.1:6379/0 \\
    .venv/bin/python -m pytest --ds=evalsite.settings.integration \\
        tests/integration/test_listener_pages_layout_browser.py -q -s

puts ``<page>-1280.png`` and ``<page>-390.png`` (full page) under
``/tmp/shots/evalsite-screenshots/<test name>/``; without the variable, under the system's temp folder.
"""

import time

import pytest
from django.utils import timezone

from evalsite.listening.models import Assignment, Participant
from evalsite.listening.services import listening_test_publish, participant_join
from tests.factories import listening_world, make_listening_test
from tests.integration.browser import new_page, set_slider, wait_ready, wait_saved

pytestmark = pytest.mark.integration

VIEWPORTS = ((1280, 800), (390, 844))
MIN_TARGET_PX = 24  # WCAG 2.2 SC 2.5.8 Target Size (Minimum)
GENERIC_TITLE = "Listening test"  # base.html's default and TestDesign's
TITLE = "Vocoder naturalness study"
RUNS = ("hifigan-secret-run", "evagan-hidden-run")

# Run in the page: what a person would flag on a screenshot, as a list of sentences (empty: fine).
# Radio buttons are judged by their label (the whole label is the target); links are left out (inline
# links in a sentence are exempt from 2.5.8). Controls inside [hidden] or not rendered are not on the page.
LAYOUT_PROBLEMS = """({expected, minTarget}) => {
  const problems = [];
  const width = document.documentElement.clientWidth;
  const scrollWidth = document.documentElement.scrollWidth;
  if (scrollWidth > window.innerWidth) problems.push(`page is ${scrollWidth} px wide in a ${window.innerWidth} px window`);
  const shown = (el) => el.getClientRects().length > 0 && !el.closest("[hidden]")
      && getComputedStyle(el).visibility !== "hidden";
  const name = (el) => el.dataset.testid || el.id || `${el.tagName.toLowerCase()} "${el.textContent.trim().slice(0, 30)}"`;
  const targets = new Map();
  for (const el of document.querySelectorAll("button, input:not([type=hidden]), select, textarea, [role=button]")) {
    if (!shown(el)) continue;
    const target = ["radio", "checkbox"].includes(el.type) ? (el.closest("label") || el) : el;
    targets.set(target, name(el));
    if (target !== el) {
      const r = el.getBoundingClientRect();  // the button itself: round, not squeezed by its label
      if (r.width < 16 || Math.abs(r.width - r.height) > 1) problems.push(`${name(el)} is drawn ${r.width.toFixed(1)} x ${r.height.toFixed(1)} px`);
    }
  }
  const boxes = [...targets].map(([el, label]) => [label, el.getBoundingClientRect()]);
  for (const [label, r] of boxes) {
    if (r.width < minTarget || r.height < minTarget) problems.push(`${label} is ${Math.round(r.width)} x ${Math.round(r.height)} px`);
    if (r.left < -0.5 || r.right > width + 0.5) problems.push(`${label} spans x ${Math.round(r.left)}..${Math.round(r.right)} of ${width}`);
  }
  for (let i = 0; i < boxes.length; i++) {
    for (let j = i + 1; j < boxes.length; j++) {
      const [a, ra] = boxes[i], [b, rb] = boxes[j];
      const w = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
      const h = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
      if (w > 0.5 && h > 0.5) problems.push(`${a} and ${b} overlap by ${Math.round(w)} x ${Math.round(h)} px`);
    }
  }
  for (const selector of expected) {
    const found = [...document.querySelectorAll(selector)];
    if (!found.some(shown)) problems.push(`${selector} is not shown`);
  }
  const root = document.querySelector("#listener-app, main.ls-page");
  const sheet = [...document.styleSheets].find((s) => (s.href || "").endsWith("/listening/listener.css"));
  if (!sheet || sheet.cssRules.length === 0) problems.push("listener.css is not loaded");
  if (!root || !getComputedStyle(root).fontFamily.includes("system-ui")) problems.push("page text is in the browser's default font");
  if (root && getComputedStyle(root).maxWidth !== "992px") problems.push("page box is not the listener's width");
  const background = getComputedStyle(document.body).backgroundColor;
  if (background !== "rgb(242, 244, 247)") problems.push(`page background is ${background}, not the listener grey`);
  for (const h1 of document.querySelectorAll("h1")) {
    const size = parseFloat(getComputedStyle(h1).fontSize);
    if (size > 24.5) problems.push(`heading "${h1.textContent.slice(0, 30)}" is ${size} px (the browser's 2em)`);
  }
  for (const label of document.querySelectorAll(".ls-signal-name")) {
    const text = document.createRange();  // a flex item is one box; its text has a box per line
    text.selectNodeContents(label);
    const lines = new Set([...text.getClientRects()].map((r) => Math.round(r.top))).size;
    if (lines > 1) problems.push(`signal name "${label.textContent}" wraps onto ${lines} lines`);
  }
  const title = document.title.trim();
  if (!title || title === GENERIC_TITLE) problems.push(`page title is "${title}"`);
  return problems;
}""".replace("GENERIC_TITLE", repr(GENERIC_TITLE))


END_PAGE_STYLE = """() => {
  const style = (s, prop) => { const el = document.querySelector(s); return el && getComputedStyle(el)[prop]; };
  return {
    page: style("body", "backgroundColor"),
    box: style("[data-testid=completion]", "backgroundColor"),
    border: style("[data-testid=completion]", "borderTopWidth"),
    heading: style("[data-testid=completion] h1", "fontSize"),
    link: style("[data-testid=completion] a", "color"),
  };
}"""


def check_page(page, shots, name, *, expected=(), errors, allowed_status=None):
    """Screenshot ``page`` at both sizes and assert it looks right at each; ``expected``: selectors
    of controls that must be shown; ``allowed_status``: the HTTP status the page itself answers with
    (Chromium logs a non-2xx document as a console error)."""
    problems = []
    for width, height in VIEWPORTS:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(150)  # a layout pass after the resize
        page.screenshot(path=str(shots / f"{name}-{width}.png"), full_page=True)
        found = page.evaluate(LAYOUT_PROBLEMS, {"expected": list(expected), "minTarget": MIN_TARGET_PX})
        problems += [f"at {width} px: {problem}" for problem in found]
    assert problems == [], f"{name} ({shots}): {problems}"
    noise = f"status of {allowed_status}" if allowed_status else None
    assert [e for e in errors if not (noise and noise in e)] == [], name


def published(*, kind="mos", world=None, runs=RUNS, **design):
    world = world or listening_world(n_items=1, runs=runs)
    design = {"training_items": 0, "seed": 3, "title": TITLE, **design}
    return listening_test_publish(
        test=make_listening_test(name=f"layout-{kind}", kind=kind, checkpoints=world["checkpoints"], **design)
    )


def consented(open_page, live_server, test, errors, query=""):
    page = open_page(errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/{query}")
    page.click("[data-testid=consent-agree]")
    return page


def skip_to(page, participant, position):
    """Mark every trial before ``position`` done (as Continue would) and reload onto it."""
    Assignment.objects.filter(participant=participant, position__lt=position).update(
        completed_at=timezone.now()
    )
    page.reload()
    wait_ready(page)


@pytest.fixture
def open_page(browser):
    """``new_page``, with every page closed after the test, failed or not, and the server's requests
    finished: one still running while the test's database is flushed can deadlock the flush. Leaving
    a page sends its telemetry (a keepalive request that outlives the page, and that a playwright
    route does not always catch), so the page's fetch is switched off before it is closed."""
    pages = []

    def open_(errors):
        pages.append(new_page(browser, errors))
        return pages[-1]

    yield open_
    for page in pages:
        page.evaluate("() => { window.fetch = () => new Promise(() => {}); }")
        page.context.close()
    server_requests_finished()


def server_requests_finished(timeout: float = 10.0) -> None:
    """Wait until no other connection to the test database is inside a query or a transaction."""
    from django.db import connection

    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state <> 'idle'"
            )
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.05)


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.EVALSITE_LISTENING_MIN_PLAY_FRACTION = 0.0  # the checks press play and move on at once


def test_the_consent_and_message_pages_fit_a_desktop_and_a_phone(
    live_server, transactional_db, open_page, shots, media
):
    world = listening_world(n_items=1, runs=RUNS)
    test = published(world=world, votes_target=1, screened_out_redirect="https://example.org/full")
    errors: list[str] = []
    page = open_page(errors)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=worker-1")
    check_page(page, shots, "consent", expected=["[data-testid=consent-agree]"], errors=errors)

    draft = make_listening_test(
        name="layout-draft", kind="mos", checkpoints=world["checkpoints"], title=TITLE
    )
    assert page.goto(f"{live_server.url}/l/i/{draft.invite_token}/").status == 410
    check_page(
        page, shots, "message-closed", expected=["[data-testid=message]"], errors=errors, allowed_status=410
    )
    errors.clear()

    assert page.goto(f"{live_server.url}/l/p/not-a-session/").status == 404
    check_page(
        page, shots, "message-error", expected=["[data-testid=message]"], errors=errors, allowed_status=404
    )
    errors.clear()

    # Another browser presenting a crowd id already in the test.
    participant_join(test=test, external_id="worker-2")
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=worker-2")
    with page.expect_navigation():
        page.click("[data-testid=consent-agree]")
    assert "already" in page.inner_text("[data-testid=message]")
    check_page(
        page, shots, "message-crowd-id", expected=["[data-testid=message]"], errors=errors, allowed_status=409
    )
    errors.clear()

    # Every trial has its one vote (worker-2's): the next listener is turned away, with a way back.
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=worker-3")
    with page.expect_navigation():
        page.click("[data-testid=consent-agree]")
    assert "all the votes" in page.inner_text("[data-testid=message]")
    # The way back sits under the message, centred with it, not at the page's left edge.
    box, link = page.locator("[data-testid=message]").bounding_box(), page.locator("main a").bounding_box()
    assert abs((box["x"] + box["width"] / 2) - (link["x"] + link["width"] / 2)) < 2
    check_page(
        page,
        shots,
        "message-full",
        expected=["[data-testid=message]", "main a"],
        errors=errors,
        allowed_status=409,
    )


def test_the_screened_out_and_already_finished_pages_fit_a_desktop_and_a_phone(
    live_server, transactional_db, open_page, shots, media
):
    test = published(screened_out_redirect="https://example.org/screened", completion_code="DONE-7Q2X")
    errors: list[str] = []
    page = consented(open_page, live_server, test, errors, "?PROLIFIC_PID=worker-s")
    wait_ready(page)
    participant = Participant.objects.get(test=test)
    Participant.objects.filter(pk=participant.pk).update(status=Participant.Status.SCREENED_OUT)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=worker-s")
    page.wait_for_selector("[data-testid=screened-out]")
    check_page(page, shots, "screened-out", expected=["[data-testid=screened-out-link]"], errors=errors)

    Participant.objects.filter(pk=participant.pk).update(status=Participant.Status.COMPLETED)
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/?PROLIFIC_PID=worker-s")
    assert page.inner_text("[data-testid=completion-code]") == "DONE-7Q2X"
    check_page(page, shots, "finished-reopened", expected=["[data-testid=completion-code]"], errors=errors)


def test_the_calibration_and_headphone_check_fit_a_desktop_and_a_phone(
    live_server, transactional_db, open_page, shots, media
):
    test = published(headphone_check=True)
    errors: list[str] = []
    page = consented(open_page, live_server, test, errors)
    page.wait_for_selector("#listener-app[data-ready=true][data-kind=calibration]", timeout=15000)
    check_page(
        page,
        shots,
        "calibration",
        expected=["[data-testid=cal-play]", "[data-testid=cal-confirm]"],
        errors=errors,
    )
    page.click("[data-testid=cal-play]")
    page.click("[data-testid=cal-confirm]")
    page.wait_for_selector("#listener-app[data-ready=true][data-kind=headphone]", timeout=15000)
    answers = [f"[data-testid=hp-answer-{n}]" for n in (1, 2, 3)]
    # The question number, the instructions and Play stand apart (they used to touch).
    gaps = page.evaluate(
        """() => {
      const box = (s) => document.querySelector(s).getBoundingClientRect();
      const text = box(".ls-headphone .ls-instructions");
      return [text.top - box("[data-testid=hp-progress]").bottom, box("[data-testid=hp-play]").top - text.bottom,
              box("[data-testid=hp-status]").top - box("[data-testid=hp-play]").bottom];
    }"""
    )
    assert min(gaps) >= 8, gaps
    check_page(page, shots, "headphone-check", expected=["[data-testid=hp-play]", *answers], errors=errors)
    page.click("[data-testid=hp-play]")
    page.wait_for_function("!document.querySelector('[data-testid=hp-answer-1]').disabled", timeout=15000)
    check_page(page, shots, "headphone-check-answering", expected=answers, errors=errors)


def signals(page) -> list[str]:
    return [el.get_attribute("data-testid")[5:] for el in page.query_selector_all("[data-testid^=stim-]")]


def test_every_mushra_trial_type_with_seven_signals_fits_a_desktop_and_a_phone(
    live_server, transactional_db, open_page, shots, media
):
    world = listening_world(n_items=3, runs=(*RUNS, "bigvgan-private-run", "vocos-quiet-run"))
    test = published(kind="mushra", world=world, training_items=1, gold_items=1, trapping_items=1)
    errors: list[str] = []
    page = consented(open_page, live_server, test, errors)
    wait_ready(page)
    participant = Participant.objects.get(test=test)
    seen = []
    for assignment in (
        Assignment.objects.filter(participant=participant).select_related("trial").order_by("position")
    ):
        skip_to(page, participant, assignment.position)
        trial = assignment.trial
        name = "training" if trial.is_training else trial.control or "main"
        if name in seen:
            continue
        labels = signals(page)
        assert len(labels) == 7, labels
        # One signal rated and another selected, so the rated, active and untouched rows all show.
        set_slider(page, "B", 64)
        page.click("[data-testid=stim-C]")
        expected = [f"[data-testid={p}-{label}]" for label in labels for p in ("stim", "slider")]
        check_page(
            page,
            shots,
            f"mushra-{name}",
            expected=[
                *expected,
                "[data-testid=play-ref]",
                "[data-testid=play-pause]",
                "[data-testid=continue]",
            ],
            errors=errors,
        )
        seen.append(name)
    assert sorted(seen) == ["gold", "main", "training", "trapping"]


@pytest.mark.parametrize(
    ("kind", "design", "answer"),
    [
        ("mos", {}, "[data-testid=score-4]"),
        ("smos", {}, "[data-testid=score-2]"),
        ("cmos", {"comparison": True}, "[data-testid=score--1]"),
        ("ab", {}, "[data-testid=prefer-B]"),
        ("ab", {"allow_no_preference": True}, "[data-testid=prefer-none]"),
    ],
    ids=["mos", "smos", "cmos", "ab", "ab-no-preference"],
)
def test_every_categorical_trial_fits_a_desktop_and_a_phone(
    live_server, transactional_db, open_page, shots, media, kind, design, answer
):
    world = listening_world(n_items=1, runs=(*RUNS, "bigvgan-private-run"))
    checkpoints = world["checkpoints"]
    if design.pop("comparison", False):
        design["comparison"], checkpoints = checkpoints[2], checkpoints[:2]
    test = listening_test_publish(
        test=make_listening_test(
            name=f"layout-{kind}",
            kind=kind,
            checkpoints=checkpoints,
            training_items=0,
            seed=3,
            title=TITLE,
            **design,
        )
    )
    errors: list[str] = []
    page = consented(open_page, live_server, test, errors)
    wait_ready(page)
    page.click("[data-testid=stim-A]")
    page.click(answer)
    wait_saved(page)
    controls = page.evaluate(
        "[...document.querySelectorAll('[data-testid^=stim-], [data-testid^=score-], [data-testid^=prefer-]')]"
        '.map((el) => `[data-testid="${el.dataset.testid}"]`)'
    )
    assert answer.replace("=", '="').replace("]", '"]') in controls
    check_page(page, shots, f"trial-{kind}", expected=[*controls, "[data-testid=continue]"], errors=errors)


@pytest.mark.parametrize(
    "design",
    [
        {"completion_code": "CODE-8KX2"},
        {"completion_code": "CODE-8KX2", "completion_redirect": "https://example.org/back"},
        {"completion_redirect": "https://example.org/back"},
    ],
    ids=["code", "code-and-redirect", "redirect"],
)
def test_the_completion_page_fits_a_desktop_and_a_phone(
    live_server, transactional_db, open_page, shots, media, design
):
    test = published(runs=RUNS[:1], **design)
    errors: list[str] = []
    page = consented(open_page, live_server, test, errors)
    wait_ready(page)
    page.click("[data-testid=stim-A]")
    page.click("[data-testid=score-5]")
    wait_saved(page)
    page.clock.install()  # the page's timers run on as before, until paused below
    page.click("[data-testid=continue]")
    page.wait_for_selector("[data-testid=completion]", timeout=15000)
    # Stop the page's clock, so the redirect countdown waits for the checks (its text says 5 or 15 s).
    page.clock.pause_at(page.evaluate("Date.now()") + 100)
    expected = []
    if "completion_code" in design:
        expected.append("[data-testid=completion-code]")
    if "completion_redirect" in design:
        expected += ["[data-testid=completion-link]", "[data-testid=redirect-note] button"]
    check_page(page, shots, "completion", expected=expected, errors=errors)
    drawn = page.evaluate(END_PAGE_STYLE)
    # Reopening the invite: the server's end page, which must look like the one the test drew.
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.wait_for_selector("main.ls-page [data-testid=completion]")
    check_page(page, shots, "finished-reopened", expected=expected[:1], errors=errors)
    assert page.evaluate(END_PAGE_STYLE) == drawn


def test_the_layout_check_reports_what_a_person_would_see_wrong(
    live_server, transactional_db, open_page, media
):
    """The checks above would pass on a page they cannot see: here each is shown a fault of its kind."""
    test = published()
    page = open_page([])
    page.goto(f"{live_server.url}/l/i/{test.invite_token}/")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate(LAYOUT_PROBLEMS, {"expected": [], "minTarget": MIN_TARGET_PX}) == []
    page.evaluate(
        """() => {
      document.title = "Listening test";
      const main = document.querySelector("main");
      main.insertAdjacentHTML("beforeend",
        '<div style="width: 600px">wide</div>'
        + '<button data-testid="tiny" style="min-height: 0; width: 20px; height: 20px; padding: 0">x</button>'
        + '<button data-testid="under" style="position: relative; top: -30px">over</button>'
        + '<button data-testid="offside" style="position: relative; left: 380px">off</button>');
      document.querySelector("h1").style.fontSize = "2em";
      document.body.style.background = "white";
    }"""
    )
    problems = " | ".join(
        page.evaluate(LAYOUT_PROBLEMS, {"expected": ["[data-testid=gone]"], "minTarget": 24})
    )
    for fault in (
        "page is",
        "tiny is 20 x 20 px",
        "and under overlap",
        "offside spans",
        "[data-testid=gone] is not shown",
        "px (the browser's 2em)",
        "not the listener grey",
        'page title is "Listening test"',
    ):
        assert fault in problems, (fault, problems)
