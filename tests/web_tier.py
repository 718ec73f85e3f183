"""What a web process serves, as one walk over HTTP: shared by the web-tier import test
(``tests/integration/test_web_tier_imports.py``) and the memory benchmark (``benchmarks/web_memory.py``).

``site_build`` writes demo-like data with the ORM; ``walk`` then plays a listener, a researcher (who also
builds and publishes a MUSHRA test from the form, so its anchors are made in the web process) and a
training job's API token against a running server, with ``requests`` only. ``GUNICORN_HOOKS`` is a gunicorn
config file whose hooks record, in the worker, which model-stack modules are loaded after each request.

No top-level import of Django or of ``tests``: the benchmark loads this file by path (a site-packages
``tests`` package shadows ours outside pytest).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import requests

MODEL_STACK = (
    "torch",
    "torchaudio",
    "laion_clap",
    "models",
    "librosa",
    "frechet_audio_distance",
    "resemblyzer",
    "torchcrepe",
    "encodec",
)
RESEARCHER = "web-tier-researcher"

# A gunicorn config file (-c). It is read by the master; the hooks run in the worker, which serves every
# request. $WEB_TIER_MODULES names the JSON file written after each request; with
# $WEB_TIER_IMPORT_MODEL_STACK set (the benchmark's "before"), the worker imports those modules first.
GUNICORN_HOOKS = f"""
import importlib, json, os, sys

WATCHED = {MODEL_STACK!r}
first_seen = {{}}


def _write(when):
    for name in WATCHED:
        if name in sys.modules and name not in first_seen:
            first_seen[name] = when
    path = os.environ["WEB_TIER_MODULES"]
    with open(path + ".tmp", "w") as fh:
        json.dump({{"pid": os.getpid(), "last": when, "first_seen": first_seen}}, fh)
    os.replace(path + ".tmp", path)


def post_worker_init(worker):
    for name in filter(None, os.environ.get("WEB_TIER_IMPORT_MODEL_STACK", "").split(",")):
        importlib.import_module(name)
    _write("worker start")


def post_request(worker, req, environ, resp):
    _write(f"{{req.method}} {{req.path}}")
"""
LAST_REQUEST = "PATCH /api/v1/runs/{run}/"


def site_build(*, listening_world: Callable[..., dict], password: str) -> dict[str, Any]:
    """A run and its rival with outputs, metrics and detector events, owned by one researcher; a published
    MUSHRA test of their checkpoints. Returns the plain values ``walk`` needs."""
    from django.contrib.auth import get_user_model

    from evalsite.listening import services
    from evalsite.runs.services import run_token_issue
    from evalsite.scoring.models import DetectorEvent, DetectorPass, MetricResult

    world = listening_world(runs=("web-tier-run", "web-tier-rival"), n_items=2, seconds=1.0)
    ckpt, rival = world["checkpoints"]
    researcher = get_user_model().objects.create_user(RESEARCHER, password=password)
    for checkpoint in (ckpt, rival):
        checkpoint.run.owner = researcher
        checkpoint.run.save()
        for name, value, higher in (("mel_l1", 0.4, False), ("pesq", 3.1, True)):
            MetricResult.objects.create(
                checkpoint=checkpoint,
                params_hash="p",
                name=name,
                status="done",
                value=value,
                ci_low=value - 0.1,
                ci_high=value + 0.1,
                higher_is_better=higher,
                n=2,
                spec_key=name[0] * 64,
            )
    # Detector passes and events on the run's outputs, so the run charts compare them with listener flags.
    for generation in ckpt.generations.all():
        DetectorPass.objects.create(
            generation=generation, checkpoint=ckpt, duration_s=1.0, events=1, version="1"
        )
        DetectorEvent.objects.create(
            generation=generation, checkpoint=ckpt, detector="clicks", start_s=0.2, end_s=0.21, strength=1.5
        )
    test = services.listening_test_publish(
        test=services.listening_test_build(
            design=services.TestDesign(
                name="web-tier-mushra", kind="mushra", checkpoints=[ckpt, rival], training_items=0, seed=5
            ),
            owner=researcher,
        )
    )
    return {
        "run": ckpt.run.pk,
        "checkpoints": [ckpt.pk, rival.pk],
        "step": ckpt.step,
        "eval_set": world["eval_set"].pk,
        "test": test.pk,
        "invite": test.invite_token,
        "token": run_token_issue(run=ckpt.run),
        "password": password,
        "asset": ckpt.generations.select_related("asset").first().asset.file.name,
    }


def _get(session: requests.Session, url: str, **kw) -> requests.Response:
    response = session.get(url, allow_redirects=False, timeout=120, **kw)
    if response.status_code != 200:
        raise AssertionError(f"GET {url}: {response.status_code} {response.text[:500]}")
    return response


def _post(session: requests.Session, url: str, expect: int, **kw) -> requests.Response:
    response = session.post(url, allow_redirects=False, timeout=120, **kw)
    if response.status_code != expect:
        raise AssertionError(f"POST {url}: {response.status_code}, expected {expect}: {response.text[:500]}")
    return response


def _join(base: str, invite_token: str) -> tuple[requests.Session, str, dict]:
    """A listener's browser: consent page, consent (CSRF), session page, state."""
    listener = requests.Session()
    invite = f"{base}/l/i/{invite_token}/"
    _get(listener, invite)
    joined = _post(listener, invite, 302, data={"csrfmiddlewaretoken": listener.cookies["csrftoken"]})
    session_url = base + joined.headers["location"]
    _get(listener, session_url)
    return (
        listener,
        session_url,
        _get(listener, session_url + "state", headers={"Accept": "application/json"}).json(),
    )


def _listener(base: str, site: dict) -> None:
    """Hear, rate and flag every sound of the first trial (and its reference), then complete it."""
    listener, session_url, state = _join(base, site["invite"])
    headers = {"X-CSRFToken": listener.cookies["csrftoken"]}
    trial = state["trials"][0]
    _get(listener, base + trial["reference"]["url"])
    for n, stimulus in enumerate(trial["stimuli"]):
        if _get(listener, base + stimulus["url"]).content[:4] != b"RIFF":
            raise AssertionError(f"{stimulus['url']} is not a WAV file")
        _post(
            listener,
            session_url + "rate",
            200,
            headers=headers,
            json={
                "trial": trial["id"],
                "stimulus": stimulus["id"],
                "score": 20 * n,
                "request_id": uuid.uuid4().hex,
            },
        )
        _post(
            listener,
            session_url + "flag",
            201,
            headers=headers,
            json={
                "trial": trial["id"],
                "stimulus": stimulus["id"],
                "start": 0.1,
                "end": 0.3,
                "category": "click",
                "request_id": uuid.uuid4().hex,
            },
        )
    _post(listener, session_url + "complete", 200, headers=headers, json={"trial": trial["id"]})


def _researcher(base: str, site: dict) -> None:
    """Sign in; the run, eval-set, chart, comparison, test and analysis pages; build, publish and join a test."""
    researcher = requests.Session()
    login = f"{base}/accounts/login/"
    _get(researcher, login)
    _post(
        researcher,
        login,
        302,
        data={
            "username": RESEARCHER,
            "password": site["password"],
            "csrfmiddlewaretoken": researcher.cookies["csrftoken"],
        },
    )
    run, test, (ckpt, rival) = site["run"], site["test"], site["checkpoints"]
    for path in (
        "/",
        f"/runs/{run}/",
        f"/runs/{run}/?listen=all",
        f"/evalsets/{site['eval_set']}/",
        f"/analysis/runs/{run}/",
        f"/analysis/compare/?c={ckpt}&c={rival}",
        f"/analysis/tests/{test}/",
        f"/analysis/tests/{test}/report.html",
        f"/analysis/tests/{test}/export/ratings.csv",
        "/listening/",
        f"/listening/{test}/",
        f"/listening/{test}/trials/0/",
        f"/media/{site['asset']}",
        # A static file from the web process itself (WhiteNoise), the dashboards' plotly bundle.
        "/static/vendor/plotly/plotly-cartesian.min.js",
    ):
        _get(researcher, base + path)

    build = f"{base}/listening/new/"
    _get(researcher, build)
    built = _post(
        researcher,
        build,
        302,
        data={
            "csrfmiddlewaretoken": researcher.cookies["csrftoken"],
            "name": f"web-tier-built-{uuid.uuid4().hex[:8]}",
            "kind": "mushra",
            "checkpoints": [ckpt, rival],
            "title": "Listening test",
            "training_items": 0,
            "votes_target": 5,
            "headphone_check": "on",
        },
    )
    detail = base + built.headers["location"]
    _get(researcher, detail)
    _post(researcher, detail + "publish/", 302, data={"csrfmiddlewaretoken": researcher.cookies["csrftoken"]})
    # The invite link as the researcher copies it from the test's page.
    invite = re.search(r"/l/i/([\w-]+)/", _get(researcher, detail).text).group(1)

    listener, session_url, state = _join(base, invite)
    _get(listener, base + state["calibration"]["url"])
    # The server confirms a calibration only once the noise (calibration.CALIBRATION_S, 3 s) could
    # have played (services.heard); this module stays free of evalsite imports.
    time.sleep(3.0)
    _post(
        listener,
        session_url + "calibration",
        200,
        json={"plays": 1},
        headers={"X-CSRFToken": listener.cookies["csrftoken"]},
    )
    state = _get(listener, session_url + "state", headers={"Accept": "application/json"}).json()
    for trial in state["headphone_check"]["trials"]:
        _get(listener, base + trial["url"])


def _api(base: str, site: dict) -> None:
    """A training job's token reads and changes its run; the last request is ``LAST_REQUEST``."""
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {site['token']}"
    run = site["run"]
    for path in (
        f"/api/v1/runs/{run}/",
        f"/api/v1/runs/{run}/checkpoints/",
        f"/api/v1/runs/{run}/checkpoints/{site['step']}/",
        f"/api/v1/runs/{run}/alerts/",
        "/api/v1/runs/",
        "/api/v1/schema/",
    ):
        _get(api, base + path)
    # Changing a run validates its model family: the allow-list is read without the model stack.
    family = _get(api, base + f"/api/v1/runs/{run}/").json()["model_family"]
    response = api.patch(base + f"/api/v1/runs/{run}/", json={"model_family": family}, timeout=120)
    if response.status_code != 200:
        raise AssertionError(f"PATCH run: {response.status_code} {response.text[:500]}")


def walk(base: str, site: dict) -> None:
    """Every kind of page a web process serves; raises AssertionError on an unexpected status."""
    _listener(base, site)
    _researcher(base, site)
    _api(base, site)
