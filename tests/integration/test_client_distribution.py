"""The client distribution (``client/``, ``evalsite-client``) installs into a training job's fresh
virtualenv on its own: only ``requests`` and its dependencies come along (no torch, Django or
Celery to replace the job's own), offline, from the working tree and the lock's wheels, and the
installed client talks to the live server."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from evalsite.api.services import researcher_token_issue
from evalsite.runs.evalset_services import evalset_import
from evalsite.runs.models import Checkpoint, Run
from tests.factories import write_tone
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

# requests and what it depends on; anything else in the training environment came from us.
ALLOWED = {"evalsite-client", "requests", "charset-normalizer", "idna", "urllib3", "certifi"}

TRAINING_JOB = textwrap.dedent("""
    import importlib.metadata, importlib.util, json, sys
    from pathlib import Path
    from evalsite_client import EvalsiteClient

    url, token, ckpt = sys.argv[1:4]
    researcher = EvalsiteClient(url, token, backoff=0.05)
    run = researcher.run_create(name="from-a-training-env", kind="vocoder", model_family="hifigan",
                                eval_set="speech")
    trainer = EvalsiteClient(url, run["token"], backoff=0.05)
    registered = trainer.checkpoint_register(run["id"], step=100, uri=ckpt, compute_sha256=True)
    alerts, cursor = trainer.alerts(run["id"])
    print(json.dumps({
        "run": run["id"],
        "checkpoint": registered["step"],
        "alerts": alerts,
        "client_file": __import__("evalsite_client").__file__,
        "absent": {m: importlib.util.find_spec(m) is None for m in ("torch", "django", "celery", "evalsite")},
        "distributions": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
        "requires": importlib.metadata.requires("evalsite-client"),
    }))
""")


def _uv() -> Path:
    # The uv the lock names (installed with the test extra), so the lock is read by the version that wrote it.
    uv = Path(sys.executable).with_name("uv")
    assert uv.is_file(), f"{uv} is missing: install the test extra from the lock (make .venv/.installed)"
    return uv


def test_the_client_installs_alone_offline_and_talks_to_the_live_server(live_server, tmp_path):
    venv = tmp_path / "training-env"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env |= {"UV_PROJECT_ENVIRONMENT": str(venv), "UV_OFFLINE": "1", "UV_NO_PROGRESS": "1"}
    # --package: only the client's own dependencies; --no-editable: a built wheel, not a path into the repo.
    install = subprocess.run(
        [_uv(), "sync", "--frozen", "--offline", "--package", "evalsite-client", "--no-editable"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr

    clips = tmp_path / "clips"
    clips.mkdir()
    write_tone(clips / "u0.wav", freq=220, seconds=0.5, rate=22050, seed=0)
    evalset_import(name="speech", source=clips)
    user = get_user_model().objects.create_user("lab", password="x")
    token = researcher_token_issue(user=user)
    ckpt = tmp_path / "g_00000100.pt"
    ckpt.write_bytes(b"not read until generation")

    # Run outside the repository, so nothing of the working tree is importable by accident.
    job = subprocess.run(
        [venv / "bin" / "python", "-c", TRAINING_JOB, live_server.url, token, str(ckpt)],
        cwd=tmp_path,
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert job.returncode == 0, job.stderr
    out = json.loads(job.stdout)

    assert out["absent"] == {"torch": True, "django": True, "celery": True, "evalsite": True}
    assert set(out["distributions"]) == ALLOWED, set(out["distributions"]) ^ ALLOWED
    assert Path(out["client_file"]).is_relative_to(venv), out["client_file"]
    # The Lightning extra names lightning without a version: the training job's own is used.
    assert 'lightning; extra == "lightning"' in out["requires"], out["requires"]
    assert not any("torch" in r for r in out["requires"])

    run = Run.objects.get(pk=out["run"])
    assert run.name == "from-a-training-env" and run.owner == user
    assert Checkpoint.objects.filter(run=run, step=100).exists()
    assert out["alerts"] == []
