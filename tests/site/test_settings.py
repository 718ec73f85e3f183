"""Configuration comes from the environment with safe defaults (checked in fresh interpreters)."""

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
import django
django.setup()
from django.conf import settings
heavy = sorted(m for m in ("torch", "laion_clap", "frechet_audio_distance", "torchaudio") if m in sys.modules)
print(json.dumps({
    "db_engine": settings.DATABASES["default"]["ENGINE"],
    "db_name": str(settings.DATABASES["default"]["NAME"]),
    "broker": settings.CELERY_BROKER_URL,
    "queue_in": settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("data_folder_in"),
    "media": str(settings.MEDIA_ROOT),
    "store": str(settings.EVALSITE_MODEL_STORE),
    "debug": settings.DEBUG,
    "secret": settings.SECRET_KEY,
    "hf_offline": os.environ.get("HF_HUB_OFFLINE"),
    "hf_home": os.environ.get("HF_HOME"),
    "torch_home": os.environ.get("TORCH_HOME"),
    "queues": [q.name for q in settings.CELERY_TASK_QUEUES],
    "acks_late": settings.CELERY_TASK_ACKS_LATE,
    "reject_on_lost": settings.CELERY_TASK_REJECT_ON_WORKER_LOST,
    "heavy_imports": heavy,
}))
"""

CLEAR = (
    "DATABASE_URL",
    "CELERY_BROKER_URL",
    "EVALSITE_MEDIA_ROOT",
    "EVALSITE_MODEL_STORE",
    "SECRET_KEY",
    "DEBUG",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "TORCH_HOME",
)


def probe(
    var_dir: Path, settings_module: str = "evalsite.settings.base", **env: str
) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in CLEAR}
    base.update(DJANGO_SETTINGS_MODULE=settings_module, EVALSITE_VAR_DIR=str(var_dir), **env)
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=base, capture_output=True, text=True, timeout=120
    )


def probe_json(var_dir: Path, **env: str) -> dict:
    proc = probe(var_dir, **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_embedded_default_uses_sqlite_a_filesystem_queue_and_local_folders_under_var(tmp_path):
    cfg = probe_json(tmp_path)
    assert cfg["db_engine"] == "django.db.backends.sqlite3"
    assert cfg["db_name"] == str(tmp_path / "evalsite.sqlite3")
    assert cfg["broker"] == "filesystem://localhost//" and cfg["queue_in"] == str(tmp_path / "queue" / "in")
    assert cfg["media"] == str(tmp_path / "media")
    assert cfg["store"] == str(tmp_path / "model-store")
    assert cfg["debug"] is False
    assert cfg["queues"] == ["gpu", "cpu"] and cfg["acks_late"] and cfg["reject_on_lost"]


def test_django_start_up_imports_no_heavy_ml_package(tmp_path):
    assert probe_json(tmp_path)["heavy_imports"] == []


def test_hubs_are_offline_and_their_caches_live_in_the_model_store(tmp_path):
    cfg = probe_json(tmp_path, EVALSITE_MODEL_STORE=str(tmp_path / "weights"))
    assert cfg["hf_offline"] == "1"
    assert cfg["hf_home"] == str(tmp_path / "weights" / "huggingface")
    assert cfg["torch_home"] == str(tmp_path / "weights" / "torch")


def test_the_generated_secret_key_is_persisted_privately_and_reused(tmp_path):
    first = probe_json(tmp_path)["secret"]
    second = probe_json(tmp_path)["secret"]
    assert first == second and len(first) >= 50
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_environment_variables_override_every_default(tmp_path):
    cfg = probe_json(
        tmp_path,
        DATABASE_URL="postgres://u@127.0.0.1:5432/evalsite",
        CELERY_BROKER_URL="redis://127.0.0.1:6379/3",
        EVALSITE_MEDIA_ROOT=str(tmp_path / "m"),
        SECRET_KEY="k" * 60,
        DEBUG="1",
    )
    assert cfg["db_engine"] == "django.db.backends.postgresql" and cfg["db_name"] == "evalsite"
    assert cfg["broker"] == "redis://127.0.0.1:6379/3" and cfg["queue_in"] is None
    assert cfg["media"] == str(tmp_path / "m") and cfg["secret"] == "k" * 60 and cfg["debug"] is True


def test_production_mode_refuses_to_start_without_a_secret_key(tmp_path):
    proc = probe(tmp_path, settings_module="evalsite.settings.production")
    assert proc.returncode != 0
    assert "SECRET_KEY must be set in the environment in production mode" in proc.stderr


@pytest.mark.parametrize("module", ["evalsite.settings.production"])
def test_production_mode_passes_the_deploy_checks(tmp_path, module):
    env = {k: v for k, v in os.environ.items() if k not in CLEAR}
    env.update(
        DJANGO_SETTINGS_MODULE=module,
        EVALSITE_VAR_DIR=str(tmp_path),
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="evalsite.example.org",
    )
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
