"""A web process serves listeners and researchers without the model stack (issue 13, item 6).

The real WSGI app (``gunicorn evalsite.wsgi``, one sync worker) runs in a fresh process on this test's
PostgreSQL database, and ``tests.web_tier.walk`` requests every kind of page over HTTP: the listener's
consent, session, state, sounds, ratings, flags, calibration and headphone-check sounds; the researcher's
run, eval-set, run-chart, comparison, listening-test and analysis pages, a MUSHRA test built and published
from the form (its anchors are made in the web process); the API. A gunicorn hook in the worker records
which model-stack modules are loaded after each request. This test process has imported torch itself, so
only a separate process can tell.

An ``import torch`` at the top of a view module (or of anything a view imports) fails this test, naming
the request after which the module first appeared.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.factories import listening_world
from tests.integration.conftest import REPO, free_port, wait_for
from tests.web_tier import GUNICORN_HOOKS, LAST_REQUEST, site_build, walk


@pytest.fixture
def site(worker_env):
    """Demo-like data, committed: the web process reads it from this test's database."""
    return site_build(listening_world=listening_world, password="web-tier-password")


@pytest.fixture
def web_process(worker_env, tmp_path):
    """``gunicorn evalsite.wsgi`` with one sync worker on this test's database; yields (base URL, modules file)."""
    hooks, modules = tmp_path / "gunicorn_hooks.py", tmp_path / "modules.json"
    hooks.write_text(GUNICORN_HOOKS)
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "evalsite.wsgi",
                "-w",
                "1",
                "-b",
                f"127.0.0.1:{port}",
                "-c",
                str(hooks),
                "--timeout",
                "120",
            ],
            cwd=REPO,
            env={**worker_env, "WEB_TIER_MODULES": str(modules), "ALLOWED_HOSTS": "127.0.0.1"},
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
                pass  # not listening yet, or the worker is still starting
            assert time.monotonic() < deadline, "gunicorn did not answer /healthz within 120 s"
            time.sleep(0.2)
        yield base, modules
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_web_process_serves_every_page_without_importing_the_model_stack(site, web_process):
    base, modules = web_process
    walk(base, site)

    # The hook saw the walk's last request, so nothing was served unseen. gunicorn runs post_request
    # after the response has gone out, so on a busy machine the file may lag the client by a moment.
    last = LAST_REQUEST.format(run=site["run"])
    seen = wait_for(
        lambda: (s := json.loads(modules.read_text()))["last"] == last and s,
        timeout=30,
        message=f"the worker's hook to record {last!r}",
    )
    assert seen["first_seen"] == {}, (
        f"the web process imported the model stack: {seen['first_seen']} (module: the request after which it "
        "was first loaded). Web requests must not need it: import it only on the worker's code path."
    )
