"""Time until a researcher's dashboards have drawn every chart, in Chromium, before and after issue 17 item 8.

Builds the two benchmark data sets into a fresh PostgreSQL database (``--database``, dropped at the end unless
``--keep``): the MUSHRA test of benchmarks/analysis_test_page.py (~50 000 ratings, 2 000 flags) and the run of
benchmarks/analysis_run_page.py (200 checkpoints x 12 metrics), both with those scripts' builders. Then serves
the site with gunicorn (one worker, four threads, DEBUG off) twice:

- **before**: the full plotly.js of the python plotly package from a Django view, static files from Django's
  static view, no WhiteNoise (benchmarks/dashboard_before/: how the site served them before);
- **after**: the site as it is: ``collectstatic`` (hashed names, gzip/brotli copies), WhiteNoise, the
  vendored partial plotly bundle.

Four dashboards are opened, each as its owner: the test's results (/analysis/tests/<id>/), the run charts
(/analysis/runs/<id>/), the comparison of the run's last ``--compare`` checkpoints (/analysis/compare/) and the
overview (/). The time of a load is from navigation start until every chart the page's figure JSON names has
plotly's ``.main-svg`` in it (and the document is parsed; a page without charts: until DOMContentLoaded),
polled every animation frame. **cold**: a new browser context (empty HTTP cache) per load; **warm**: the same
context navigating to the page again (``--repeats`` loads after one that fills the cache). The server's own
caches are warm in both (each page is requested once before timing), so the figures compare what the browser
fetches, parses and draws; the median time to first byte is given beside them. Only 127.0.0.1 is contacted.

    python benchmarks/dashboard_time.py --repeats 5

Prints one table (median and min per page, configuration and cache) and the command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import analysis_run_page  # noqa: E402
import analysis_test_page  # noqa: E402
from listening_load import PG, REPO, collect_static, drop_database, free_port, recreate_database  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# True (and the time noted once) when every chart the page's figure JSON names has been drawn.
CHARTS_DRAWN = """() => {
  if (document.readyState === "loading") return false;
  if (!window.__chartIds) {
    const ids = [];
    const byId = document.getElementById("figures");
    if (byId) ids.push(...Object.keys(JSON.parse(byId.textContent)));
    const list = document.getElementById("run-figures");
    if (list) ids.push(...JSON.parse(list.textContent).map((f) => f.id));
    window.__chartIds = ids.filter((id) => document.getElementById(id));
  }
  if (!window.__chartIds.every((id) => document.getElementById(id).querySelector(".main-svg"))) return false;
  window.__drawnAt = window.__drawnAt || performance.now();
  return true;
}"""
LOAD_FACTS = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const bytes = performance.getEntriesByType("resource").reduce((s, r) => s + r.transferSize, nav.transferSize);
  return {drawn: window.__drawnAt, ttfb: nav.responseStart, bytes, charts: window.__chartIds.length};
}"""


def build(args) -> dict:
    """Both data sets in one database; returns the dashboards as (name, path, owner's user id)."""
    from django.contrib.auth import get_user_model

    from evalsite.runs.models import Checkpoint, EvalSet, Run

    test_args = Namespace(
        systems=8, items=50, listeners=125, trials=37, careless=4, constant=2, deaf=3, flags=2000,
        metrics=6, seconds=8.0, seed=args.seed,
    )  # fmt: skip
    test_id, test_owner = analysis_test_page.build(test_args)
    # Both builders name their researcher, eval set and run alike ("bench-..."): the first ones step aside.
    get_user_model().objects.filter(pk=test_owner).update(username="bench-tests")
    EvalSet.objects.filter(name="bench-set").update(name="bench-set-tests")
    Run.objects.filter(name="bench-run").update(name="bench-run-tests")
    run_args = Namespace(
        checkpoints=200, metrics=12, items=20, seconds=4.0, events=1, alerts=30, listeners=10, seed=args.seed
    )
    run_id, run_owner = analysis_run_page.build(run_args)
    last = Checkpoint.objects.filter(run_id=run_id).order_by("-step")[: args.compare]
    compare = "&".join(f"c={c.pk}" for c in last)
    return {
        "test results": (f"/analysis/tests/{test_id}/", test_owner),
        "run charts": (f"/analysis/runs/{run_id}/", run_owner),
        "compare": (f"/analysis/compare/?{compare}", run_owner),
        "overview": ("/", run_owner),
    }


def session_cookie(user_id: int) -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=user_id))
    return client.cookies["sessionid"].value


def start_server(env: dict[str, str], var: Path, name: str) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    log = open(var / f"gunicorn-{name}.log", "wb")
    cmd = [str(Path(sys.executable).with_name("gunicorn")), "evalsite.wsgi", "-w", "1", "--threads", "4"]
    proc = subprocess.Popen(
        [*cmd, "-b", f"127.0.0.1:{port}", "--timeout", "300"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gunicorn ({name}) exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{base}/healthz", timeout=5).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"gunicorn ({name}) did not answer /healthz within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def load(page, url: str, timeout_ms: int) -> dict:
    page.goto(url, wait_until="commit", timeout=timeout_ms)
    page.wait_for_function(CHARTS_DRAWN, polling="raf", timeout=timeout_ms)
    facts = page.evaluate(LOAD_FACTS)
    if not page.url.startswith(url.split("?")[0]):
        raise SystemExit(f"{url} ended at {page.url} (not signed in?)")
    return facts


def measure(browser, base: str, path: str, cookie: str, args) -> dict[str, list[dict]]:
    url = base + path

    def context():
        # bypass_csp: Playwright's polling evaluates script, which the site's policy (rightly) refuses.
        ctx = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        ctx.add_cookies([{"name": "sessionid", "value": cookie, "url": base}])
        return ctx

    out: dict[str, list[dict]] = {"cold": [], "warm": []}
    with context() as ctx:  # the server's caches: results, snapshots, the plotly view's bytes
        load(ctx.new_page(), url, args.timeout * 1000)
    for _ in range(args.repeats):
        with context() as ctx:
            out["cold"].append(load(ctx.new_page(), url, args.timeout * 1000))
    with context() as ctx:
        page = ctx.new_page()
        load(page, url, args.timeout * 1000)
        for _ in range(args.repeats):
            out["warm"].append(load(page, url, args.timeout * 1000))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed loads per page, configuration and cache"
    )
    parser.add_argument("--compare", type=int, default=4, help="checkpoints on the comparison page")
    parser.add_argument("--timeout", type=int, default=120, help="seconds one load may take")
    parser.add_argument("--only", choices=("before", "after"), help="measure one configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--database", default="evalsite_bench_dashboards")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()

    var = Path(tempfile.mkdtemp(prefix="evalsite-dashboards-"))
    os.environ.update(
        {
            "DATABASE_URL": f"{PG}/{args.database}",
            "EVALSITE_VAR_DIR": str(var),
            "DJANGO_SETTINGS_MODULE": "evalsite.settings.base",
            "DEBUG": "0",
            "LOG_LEVEL": "WARNING",
            "ALLOWED_HOSTS": "127.0.0.1,testserver",
        }
    )
    for key in ("CELERY_BROKER_URL", "EVALSITE_MEDIA_ROOT", "CACHE_URL"):
        os.environ.pop(key, None)
    recreate_database(args.database)
    try:
        import django

        django.setup()
        t0 = time.monotonic()
        pages = build(args)
        print(
            f"(setup {time.monotonic() - t0:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        cookies = {name: session_cookie(owner) for name, (_, owner) in pages.items()}
        from django.db import connections

        connections.close_all()

        env = dict(os.environ)
        pythonpath = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        configurations = {
            "before": {
                **env,
                "DJANGO_SETTINGS_MODULE": "dashboard_before.settings",
                "PYTHONPATH": pythonpath,
            },
            "after": env,
        }
        t0 = time.monotonic()
        collect_static(env)
        print(f"(collectstatic {time.monotonic() - t0:.0f} s)")

        from playwright.sync_api import sync_playwright

        results: dict[tuple[str, str], dict] = {}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            for name, config_env in configurations.items():
                if args.only and name != args.only:
                    continue
                proc, base = start_server(config_env, var, name)
                try:
                    for page_name, (path, _) in pages.items():
                        results[(page_name, name)] = measure(browser, base, path, cookies[page_name], args)
                        print(f"  measured {page_name} ({name})", flush=True)
                finally:
                    stop_server(proc)
            browser.close()

        print(
            f"\n{'dashboard':<14} {'config':<7} {'charts':>6} | {'cold median':>11} {'min':>6} {'KiB':>6} | "
            f"{'warm median':>11} {'min':>6} {'KiB':>6} | {'TTFB warm':>9}"
        )
        for (page_name, name), r in results.items():
            cold = sorted(f["drawn"] for f in r["cold"])
            warm = sorted(f["drawn"] for f in r["warm"])
            print(
                f"{page_name:<14} {name:<7} {r['cold'][0]['charts']:>6} | "
                f"{statistics.median(cold):>8.0f} ms {cold[0]:>6.0f} "
                f"{statistics.median(f['bytes'] for f in r['cold']) / 1024:>6.0f} | "
                f"{statistics.median(warm):>8.0f} ms {warm[0]:>6.0f} "
                f"{statistics.median(f['bytes'] for f in r['warm']) / 1024:>6.0f} | "
                f"{statistics.median(f['ttfb'] for f in r['warm']):>6.0f} ms"
            )
        print(f"\nload average after: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print("command: python benchmarks/dashboard_time.py " + shlex.join(sys.argv[1:]))
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            drop_database(args.database)


if __name__ == "__main__":
    main()
