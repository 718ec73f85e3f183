"""Local model store: named weight files on disk, never downloaded at run time.

Layout: ``<root>/<subdir>/<file name>``, with the file names the upstream projects publish, e.g.
``<root>/vggish/vggish-10086976.pth`` or ``<root>/panns/Cnn14_16k_mAP=0.438.pth``. The root is
``EVALSITE_MODEL_STORE`` when set, else ``./var/model-store``.

The store may be a shared, writable directory, so a file in it is data, never code:
:meth:`ModelStore.load_torch` checks the file against the digest the catalogue
(:mod:`metrics.embedders.fetch`) records for it before reading it, and reads it with
``torch.load(weights_only=True)``, allowing besides tensors only numpy arrays and scalars of numeric
dtypes (:func:`numpy_array_globals`), which upstream files hold. A file whose catalogue entry has
no digest is loaded the same way with a warning.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ROOT = Path("var") / "model-store"
ENV_VAR = "EVALSITE_MODEL_STORE"

# torch's weights-only unpickler names what it refused in one of these forms.
_REFUSED = re.compile(r"Unsupported global: GLOBAL ([\w.]+)|but got <class '([\w.]+)'>")
_checksum_lock = threading.Lock()
_checksum_cache: dict[tuple[str, int, int, str], str] = {}

STORE_FILE_CHECKSUM_MISMATCH = (
    "model store file {path} failed its checksum: {why}. It is damaged or was replaced, and was not loaded; "
    "restore the official file with `{command} --replace`."
)
STORE_FILE_CHANGED = (
    "model store file {path} changed while it was being checked; it was not loaded. Try again."
)
STORE_FILE_UNSAFE = (
    "model store file {path} holds Python objects other than tensors and numeric arrays{what}; it was not "
    "loaded, because unpickling them can run code. Restore the official file with `{command} --replace`."
)
STORE_FILE_NO_DIGEST = (
    "model store file {path} has no checksum recorded in the catalogue, so it is loaded unverified (tensors "
    "and numeric arrays only; SHA-256 {sha256}). {source}"
)


class WeightIntegrityError(ValueError):
    """A store file does not match its catalogue digest, or holds pickled objects that are not loaded.

    The message names the file, what failed (expected and actual digest, or the refused global) and
    the ``python manage.py models_fetch <name> --replace`` command that restores the official file.
    """


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


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", *, chunk_size: int = 1 << 20) -> str:
    """Hex digest (``"sha256"`` or ``"md5"``) of a file, cached per (path, size, mtime, algorithm).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> file_digest(p, "md5")
        '900150983cd24fb0d6963f7d28e17f72'
    """
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, algorithm)
    with _checksum_lock:
        if key in _checksum_cache:
            return _checksum_cache[key]
    h = hashlib.new(algorithm, usedforsecurity=algorithm != "md5")
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    digest = h.hexdigest()
    with _checksum_lock:
        _checksum_cache[key] = digest
    return digest


def sha256_file(path: str | os.PathLike, *, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, cached per (path, size, mtime).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"; _ = p.write_bytes(b"abc")
        >>> sha256_file(p)[:16]
        'ba7816bf8f01cfea'
    """
    return file_digest(path, "sha256", chunk_size=chunk_size)


def numpy_array_globals() -> list:
    """What ``torch.load(weights_only=True)`` may build besides tensors: numeric numpy arrays and scalars.

    Upstream store files hold them next to their tensors: the torchvggish PCA file is a dict of numpy
    arrays, and PANNs/CLAP training checkpoints may carry numpy state (sampler indices, random state,
    scalar metrics). Rebuilding these runs no code from the file; object arrays stay refused
    (``ObjectDType`` is not listed), as does every other class or function a pickle names.
    """
    import numpy as np
    from numpy.core import multiarray  # pickles name numpy.core.multiarray, whichever numpy wrote them

    numeric = (np.bool_, np.int32, np.int64, np.uint32, np.float32, np.float64)
    return [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in numeric),
    ]


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


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

    def verify(self, weight: WeightFile, path: Path | None = None) -> str:
        """Check the file against the digest the catalogue records for it; returns its SHA-256.

        Raises:
            WeightIntegrityError: the digest (full SHA-256, SHA-256 prefix or MD5, whichever the
                catalogue records) does not match; the message gives both and the command that
                restores the file. A file with no recorded digest passes with a warning.
        """
        from metrics.embedders.fetch import catalogue_entry, digest_problem, fetch_hint

        path = path or self.path(weight)
        sha256 = sha256_file(path)
        remote = catalogue_entry(weight)
        if remote is None or not remote.has_digest:
            where = (
                f"Compare it by hand: {remote.digest_source}"
                if remote is not None
                else "It is not in the catalogue."
            )
            warnings.warn(STORE_FILE_NO_DIGEST.format(path=path, sha256=sha256, source=where), stacklevel=3)
            return sha256
        why = digest_problem(remote, sha256, file_digest(path, "md5") if remote.md5 else "")
        if why:
            raise WeightIntegrityError(
                STORE_FILE_CHECKSUM_MISMATCH.format(path=path, why=why, command=fetch_hint(weight))
            )
        return sha256

    def load_torch(self, weight: WeightFile, *, embedder: str = "") -> tuple[Any, Path]:
        """Read a store file verified (:meth:`verify`) and with ``torch.load(weights_only=True)``.

        The file is opened before it is hashed and must still be the same file afterwards, so what
        is read is what was checked.

        Returns:
            ``(object, path)``: what the file holds (tensors, containers, numeric numpy arrays) and
            where it is.

        Raises:
            MissingWeightsError: the file is not in the store.
            WeightIntegrityError: wrong digest, or pickled objects other than tensors and numeric arrays.

        Example:
            >>> state, path = ModelStore().load_torch(WeightFile("vggish", "vggish-10086976.pth", ""))  # doctest: +SKIP
        """
        import torch

        from metrics.embedders.fetch import fetch_hint

        path = self.require(weight, embedder=embedder)
        with open(path, "rb") as f:
            opened = os.fstat(f.fileno())
            self.verify(weight, path)
            if _identity(opened) != _identity(os.stat(path)):
                raise WeightIntegrityError(STORE_FILE_CHANGED.format(path=path))
            try:
                with torch.serialization.safe_globals(numpy_array_globals()):
                    return torch.load(f, map_location="cpu", weights_only=True), path
            except pickle.UnpicklingError as exc:
                text = str(exc)
                if "Weights only load failed" not in text:
                    raise
                refused = _REFUSED.search(text)
                what = f" (first refused: {refused.group(1) or refused.group(2)})" if refused else ""
                raise WeightIntegrityError(
                    STORE_FILE_UNSAFE.format(path=path, what=what, command=fetch_hint(weight))
                ) from None

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
