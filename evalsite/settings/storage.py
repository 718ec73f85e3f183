"""Media and model-store locations.

Weights are never downloaded: hub and torch caches point inside the model store and the hubs are
switched offline (EVALSITE_HUB_ENVIRONMENT) before any library that could reach them is imported.
"""

import os
from pathlib import Path

from whitenoise.compress import Compressor

from evalsite.settings.env import BASE_DIR, VAR_DIR

MEDIA_ROOT = Path(os.environ.get("EVALSITE_MEDIA_ROOT") or VAR_DIR / "media").resolve()
MEDIA_URL = "/media/"
# Stored audio is served by evalsite.api.media after an access check. Set this to an nginx ``internal``
# location over MEDIA_ROOT (e.g. /protected-media/) to let the web server send the bytes afterwards.
EVALSITE_MEDIA_ACCEL_REDIRECT = os.environ.get("EVALSITE_MEDIA_ACCEL_REDIRECT", "")

# Static files: ``manage.py collectstatic`` writes them to STATIC_ROOT under hashed names with gzip and
# brotli copies, and WhiteNoise (evalsite.settings.base MIDDLEWARE) serves them from the web process
# with a ten-year, immutable cache for hashed names (evalsite.core.staticfiles). A server started without
# collectstatic answers 500 on every page that names a static file ("Missing staticfiles manifest
# entry"): the demo runs it itself; a deployment runs it once per release.
# Source maps are for developer tools only: not worth compressing at every collectstatic.
WHITENOISE_SKIP_COMPRESS_EXTENSIONS = (*Compressor.SKIP_COMPRESS_EXTENSIONS, "map")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "evalsite.core.staticfiles.StaticFilesStorage"},
}

EVALSITE_MODEL_STORE = Path(os.environ.get("EVALSITE_MODEL_STORE") or VAR_DIR / "model-store").resolve()


def _checkpoint_roots(value: str) -> tuple[str, ...]:
    # os.pathsep- or comma-separated; a relative root is taken from the repository root.
    parts = [p.strip() for chunk in value.split(os.pathsep) for p in chunk.split(",") if p.strip()]
    return tuple(
        str(Path(p).expanduser() if Path(p).expanduser().is_absolute() else BASE_DIR / p) for p in parts
    )


# Checkpoint files (API, client, register_checkpoint, watcher) and runs' checkpoint_dir must lie under one
# of these folders, checked on the resolved path when registered and again on the worker before it opens
# the file (evalsite.runs.checkpoint_files). "{username}" in a root is the run owner's own folder: the
# default gives each researcher var/checkpoints/<username>/, plus the demo's cached checkpoints and the
# examples' output (examples/train_tiny_vocoder.py --out) for the embedded setup.
EVALSITE_CHECKPOINT_ROOTS = _checkpoint_roots(os.environ.get("EVALSITE_CHECKPOINT_ROOTS", "")) or (
    str(VAR_DIR / "checkpoints" / "{username}"),
    str(VAR_DIR / "demo-checkpoints"),
    str(VAR_DIR / "examples"),
)

# laion_clap (and so frechet_audio_distance) contacts a model hub at import time and hangs offline: every
# process sets these (unless already set) when Django starts, before any such library is imported
# (evalsite.core.apps).
EVALSITE_HUB_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": str(EVALSITE_MODEL_STORE / "huggingface"),
    "TORCH_HOME": str(EVALSITE_MODEL_STORE / "torch"),
}

# A request body above this (files in a multipart form aside) is refused with a 400 before it is read
# into memory. No page or endpoint takes audio over HTTP (audio comes in by path through the workers),
# the API's JSON stops at EVALSITE_API_MAX_BODY_BYTES and a listener's at
# EVALSITE_LISTENER_MAX_BODY_BYTES, so Django's own default is plenty: it bounds what an anonymous post
# (a sign-in or consent form) can make the server read.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("EVALSITE_MAX_UPLOAD_BYTES", 2_621_440))
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
