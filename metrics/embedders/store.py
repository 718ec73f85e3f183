"""Local model store: named weight files on disk, never downloaded at run time.

Layout: ``<root>/<subdir>/<file name>``, with the file names the upstream projects publish, e.g.
``<root>/vggish/vggish-10086976.pth`` or ``<root>/panns/Cnn14_16k_mAP=0.438.pth``. The root is
``EVALSITE_MODEL_STORE`` when set, else ``./var/model-store``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROOT = Path("var") / "model-store"
ENV_VAR = "EVALSITE_MODEL_STORE"

_checksum_lock = threading.Lock()
_checksum_cache: dict[tuple[str, int, int], str] = {}


class MissingWeightsError(FileNotFoundError):
    """A weight file an embedder needs is not in the model store.

    The message names the file, the directory it must be put in, where it comes from and the
    ``python manage.py models_fetch <name>`` command that fetches it; nothing is downloaded at
    run time.
    """


@dataclass(frozen=True)
class WeightFile:
    """One file an embedder loads from the store.

    Attributes:
        subdir: Directory under the store root (``"vggish"``, ``"panns"``, ...).
        filename: Exact upstream file name.
        source: Where a user gets it (upstream project and URL or file name).
    """

    subdir: str
    filename: str
    source: str


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, cached per (path, size, mtime).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    with _checksum_lock:
        if key in _checksum_cache:
            return _checksum_cache[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    digest = h.hexdigest()
    with _checksum_lock:
        _checksum_cache[key] = digest
    return digest


def combined_checksum(paths: list[Path]) -> str:
    """SHA-256 of one file, or of the sorted ``name:sha256`` lines when several files are loaded."""
    if len(paths) == 1:
        return sha256_file(paths[0])
    lines = sorted(f"{Path(p).name}:{sha256_file(p)}" for p in paths)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


class ModelStore:
    """A directory of weight files.

    Args:
        root: Store directory; defaults to ``$EVALSITE_MODEL_STORE`` or ``./var/model-store``.

    Example:
        >>> store = ModelStore("/tmp/empty-store")
        >>> store.path(WeightFile("vggish", "vggish-10086976.pth", "torchvggish")).name
        'vggish-10086976.pth'
    """

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        if root is None:
            root = os.environ.get(ENV_VAR) or DEFAULT_ROOT
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    def path(self, weight: WeightFile) -> Path:
        """Where ``weight`` lives (whether or not it exists)."""
        return self.root / weight.subdir / weight.filename

    def has(self, weight: WeightFile) -> bool:
        """Whether the file is present."""
        return self.path(weight).is_file()

    def require(self, weight: WeightFile, *, embedder: str = "") -> Path:
        """Path of ``weight``; raises :class:`MissingWeightsError` with the fix when absent."""
        path = self.path(weight)
        if not path.is_file():
            from metrics.embedders.fetch import fetch_hint

            who = f"embedder {embedder!r} needs " if embedder else "missing "
            raise MissingWeightsError(
                f"{who}weight file {weight.filename!r}, which is not in the model store. "
                f"Fetch it (official URL, checksum verified) with `{fetch_hint(weight)}`, or put it at "
                f"{path} by hand (directory {path.parent}; store root {self.root}, set with ${ENV_VAR}). "
                f"It comes from: {weight.source}. Nothing is downloaded at run time."
            )
        return path
