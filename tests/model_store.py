"""Synthetic model-store files for tests: the catalogue's digests are patched to match them.

Embedders check every store file against the digest the catalogue (``metrics.embedders.fetch``)
records for it, so a test that saves random weights under an upstream file name patches the
catalogue, as the real files' digests would be, instead of switching the check off.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from metrics.embedders import fetch


def digests_matching(root: Path, relpaths: list[str] | None = None) -> dict[str, fetch.RemoteFile]:
    """The real catalogue with the entries of the files under ``root`` given those files' digests.

    The kind of digest stays the catalogue's own: MD5 for a Zenodo file, full SHA-256 otherwise.
    """
    real = fetch.remote_files()
    out = dict(real)
    for relpath in relpaths if relpaths is not None else [r for r in real if (Path(root) / r).is_file()]:
        data = (Path(root) / relpath).read_bytes()
        remote = real[relpath]
        if remote.md5:
            out[relpath] = dataclasses.replace(remote, md5=hashlib.md5(data).hexdigest(), size=None)
        else:
            out[relpath] = dataclasses.replace(
                remote, sha256=hashlib.sha256(data).hexdigest(), sha256_prefix=None, size=len(data)
            )
    return out


def patch_catalogue(monkeypatch: pytest.MonkeyPatch, catalogue: dict[str, fetch.RemoteFile]) -> None:
    monkeypatch.setattr(fetch, "remote_files", lambda: dict(catalogue))
