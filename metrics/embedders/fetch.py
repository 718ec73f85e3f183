"""Fetch the model store's files from their official URLs, on purpose, with checksums verified.

This is the only code that downloads weights, and only ``manage.py models_fetch`` (or a user
calling :func:`fetch_file`) runs it; embedders never do. Each file is streamed into a temporary
file in its target directory, hashed while streaming, checked against its size and the digest
written below, then moved into place with :func:`os.replace`. On any failure the temporary file
is removed, so the store holds either the verified file or nothing.

Digests. Only what an upstream project publishes (or what its file name encodes) is written
here, each with where it is published; nothing is invented:

* ``sha256``: the full SHA-256. Hugging Face shows it for files stored with Git LFS (the LFS
  object id), so a file there can be checked in full.
* ``sha256_prefix``: the leading hex digits of the SHA-256, when that is all the upstream
  project publishes (torch.hub-style names ``<name>-<first 8 hex digits of SHA-256>.<ext>``).
* ``md5``: the MD5 that Zenodo publishes for every file of a record.

A file whose digest could not be found is listed with none; :func:`fetch_file` refuses it and
says where to check it by hand.

The same digests are checked every time an embedder loads a store file
(:meth:`~metrics.embedders.store.ModelStore.load_torch`), so a file replaced in a shared store is
refused rather than loaded; a file listed with no digest is loaded with a warning.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

from metrics.embedders.store import ModelStore, WeightFile

FETCH_COMMAND = "python manage.py models_fetch"
TOKENIZER_TARGET = "roberta-base-tokenizer"
CONNECT_TIMEOUT_S = 5.0
# Seconds without a byte from the server (not the whole download: checkpoints are up to 2 GB).
READ_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20

_HF_LAION = "https://huggingface.co/lukewys/laion_clap/resolve/main/"
_HF_LAION_PAGE = "https://huggingface.co/lukewys/laion_clap/blob/main/"
_HF_ROBERTA = "https://huggingface.co/FacebookAI/roberta-base/resolve/main/"
_ZENODO_PANNS = "https://zenodo.org/records/3987831/files/"
_TORCHVGGISH = "https://github.com/harritaylor/torchvggish/releases/download/v0.1/"


@dataclass(frozen=True)
class RemoteFile:
    """Where one store file comes from and how it is checked.

    Attributes:
        weight: The store file (directory under the store root and upstream file name).
        url: Official download URL.
        sha256: Full SHA-256 (hex), when it is published.
        sha256_prefix: Leading hex digits of the SHA-256, when only those are published.
        md5: MD5 (hex), when that is what the host publishes.
        size: Size in bytes, when known; a download of another size is refused.
        digest_source: Where the digest is published (and how it was cross-checked).
    """

    weight: WeightFile
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    md5: str | None = None
    size: int | None = None
    digest_source: str = ""

    @property
    def relpath(self) -> str:
        """``<subdir>/<file name>`` under the store root."""
        return f"{self.weight.subdir}/{self.weight.filename}"

    @property
    def has_digest(self) -> bool:
        return bool(self.sha256 or self.sha256_prefix or self.md5)

    def describe_digest(self) -> str:
        """What is verified: ``"SHA-256"`` (full), ``"SHA-256 prefix 970ea276"``, ``"MD5"`` or ``"no digest"``."""
        kinds = []
        if self.sha256:
            kinds.append("SHA-256")
        elif self.sha256_prefix:
            kinds.append(f"SHA-256 prefix {self.sha256_prefix}")
        if self.md5:
            kinds.append("MD5")
        return " + ".join(kinds) or "no digest"


@dataclass(frozen=True)
class FetchResult:
    """Outcome of :func:`fetch_file` for one file.

    Attributes:
        remote: The catalogue entry.
        path: Where the file lives (or would live) in the store.
        status: ``"stored"`` (downloaded and verified), ``"present"`` (already there and verified)
            or ``"failed"``.
        message: One line for the user: what was verified, or why it failed and what to do.
        sha256: SHA-256 of the stored or present file (empty when failed).
    """

    remote: RemoteFile
    path: Path
    status: str
    message: str
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("stored", "present")


class FetchError(Exception):
    """A download or verification failed; the message says why and what to do."""


def _tokenizer_files() -> tuple[RemoteFile, ...]:
    from metrics.embedders.clap import TOKENIZER_SOURCE

    # Not LFS files: Hugging Face shows only their git blob id (SHA-1). The SHA-256 values are
    # the same in several independent public projects that pin FacebookAI/roberta-base
    # (including Nix fetchurl hashes, which fail on any mismatch); merges.txt is also byte for
    # byte GPT-2's vocab.bpe, whose SHA-256 OpenAI's tiktoken pins (VOCAB_BPE_HASH).
    source = (
        "SHA-256 not published by Hugging Face for these non-LFS files; value pinned by several "
        "independent projects that download them from huggingface.co/FacebookAI/roberta-base"
    )
    return (
        RemoteFile(
            WeightFile("clap/roberta-base", "vocab.json", TOKENIZER_SOURCE),
            _HF_ROBERTA + "vocab.json",
            sha256="9e7f63c2d15d666b52e21d250d2e513b87c9b713cfa6987a82ed89e5e6e50655",
            digest_source=source,
        ),
        RemoteFile(
            WeightFile("clap/roberta-base", "merges.txt", TOKENIZER_SOURCE),
            _HF_ROBERTA + "merges.txt",
            sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            size=456318,
            digest_source=source + "; identical to tiktoken's pinned SHA-256 of GPT-2 vocab.bpe",
        ),
    )


def remote_files() -> dict[str, RemoteFile]:
    """Every downloadable store file, keyed by ``<subdir>/<file name>``.

    Example:
        >>> remote_files()["vggish/vggish-10086976.pth"].sha256[:8]
        '10086976'
    """
    from metrics.embedders import clap, codec, panns, vggish

    clap_file = {v.key: v.weights for v in clap.CLAP_VARIANTS.values()}
    files = [
        RemoteFile(
            vggish.VGGISH_WEIGHTS,
            _TORCHVGGISH + "vggish-10086976.pth",
            sha256="10086976245803799d9194e9a73d9b6c1549c71d1b80106f5cade5608a561f4b",
            digest_source="SHA-256 prefix 10086976 is in the torchvggish v0.1 release file name "
            "(torch.hub convention); the full value is pinned by independent projects "
            "that download this release asset and agrees with that prefix",
        ),
        RemoteFile(
            vggish.VGGISH_PCA,
            _TORCHVGGISH + "vggish_pca_params-970ea276.pth",
            sha256_prefix="970ea276",
            digest_source="only the SHA-256 prefix is published, in the torchvggish v0.1 release "
            "file name (torch.hub convention <name>-<sha256[:8]>)",
        ),
        RemoteFile(
            panns.CNN14_CONFIGS[16000].weights,
            _ZENODO_PANNS + "Cnn14_16k_mAP=0.438.pth?download=1",
            md5="362fc5ff18f1d6ad2f6d464b45893f2c",
            digest_source="MD5 published by Zenodo for record 3987831 (https://zenodo.org/records/3987831); "
            "also the MD5 audioldm_eval checks",
        ),
        RemoteFile(
            panns.CNN14_CONFIGS[32000].weights,
            _ZENODO_PANNS + "Cnn14_mAP=0.431.pth?download=1",
            md5="541141fa2ee191a88f24a3219fff024e",
            size=327428481,
            digest_source="MD5 published by Zenodo for record 3987831 (https://zenodo.org/records/3987831)",
        ),
        RemoteFile(
            codec.ENCODEC_24K,
            "https://dl.fbaipublicfiles.com/encodec/v0/encodec_24khz-d7cc33bc.th",
            sha256="d7cc33bcf1aad7f2dad9836f36431530744abeace3ca033005e3290ed4fa47bf",
            size=93171529,
            digest_source="SHA-256 prefix d7cc33bc is in Meta's file name and checked by encodec itself "
            "(torch.hub check_hash=True); the full value is pinned by independent projects "
            "and agrees with that prefix",
        ),
        RemoteFile(
            clap_file["630k-audioset"],
            _HF_LAION + "630k-audioset-best.pt",
            sha256="8053c9775516af2f4902e1e8281e356cc1bf7a85e8b761908170767b77c3f037",
            size=1863587645,
            digest_source=f"Git LFS SHA-256 shown by Hugging Face ({_HF_LAION_PAGE}630k-audioset-best.pt); "
            "same value pinned by several independent projects",
        ),
        RemoteFile(
            clap_file["630k"],
            _HF_LAION + "630k-best.pt",
            sha256="e02951eae3c9955db546c50086059e6457188ec39446858f2bddbcb4b56b1cb3",
            digest_source=f"Git LFS SHA-256 shown by Hugging Face ({_HF_LAION_PAGE}630k-best.pt); "
            "value as pinned by one independent project (lukewys/laion_clap at b370834)",
        ),
        RemoteFile(
            clap_file["music-audioset"],
            _HF_LAION + "music_audioset_epoch_15_esc_90.14.pt",
            sha256="fae3e9c087f2909c28a09dc31c8dfcdacbc42ba44c70e972b58c1bd1caf6dedd",
            digest_source=f"Git LFS SHA-256 shown by Hugging Face "
            f"({_HF_LAION_PAGE}music_audioset_epoch_15_esc_90.14.pt); "
            "same value pinned by several independent projects",
        ),
        # Not found offline: compare by hand with the LFS SHA-256 on the Hugging Face file page.
        RemoteFile(
            clap_file["music-speech-audioset"],
            _HF_LAION + "music_speech_audioset_epoch_15_esc_89.98.pt",
            digest_source=f"not recorded: check the Git LFS SHA-256 shown at "
            f"{_HF_LAION_PAGE}music_speech_audioset_epoch_15_esc_89.98.pt",
        ),
        *_tokenizer_files(),
    ]
    return {f.relpath: f for f in files}


def fetch_targets() -> dict[str, tuple[RemoteFile, ...]]:
    """Names ``models_fetch`` accepts → the files each one fetches.

    The names are the embedder ids of :func:`~metrics.embedders.registry.embedder_names` that
    load files from the store, plus ``roberta-base-tokenizer`` (CLAP text embeddings).

    Example:
        >>> [f.weight.filename for f in fetch_targets()["vggish-16k-pca8bit"]]
        ['vggish-10086976.pth', 'vggish_pca_params-970ea276.pth']
    """
    from metrics.embedders.registry import _entries

    files = remote_files()
    targets = {
        name: tuple(files[f"{w.subdir}/{w.filename}"] for w in entry.weights)
        for name, entry in sorted(_entries().items())
        if entry.weights
    }
    targets[TOKENIZER_TARGET] = tuple(f for f in files.values() if f.weight.subdir == "clap/roberta-base")
    return targets


def fetch_hint(weight: WeightFile) -> str:
    """The command that fetches ``weight``, e.g. ``python manage.py models_fetch panns-cnn14-32k``."""
    relpath = f"{weight.subdir}/{weight.filename}"
    for name, files in fetch_targets().items():
        if any(f.relpath == relpath for f in files):
            return f"{FETCH_COMMAND} {name}"
    return f"{FETCH_COMMAND} --all"


def resolve_targets(names: list[str]) -> list[RemoteFile]:
    """The files to fetch for ``names`` (each file once, in order).

    Raises:
        KeyError: an unknown name; the message lists the valid ones.
    """
    targets = fetch_targets()
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise KeyError(f"unknown model name(s) {', '.join(unknown)}; valid names: {', '.join(targets)}")
    seen: dict[str, RemoteFile] = {}
    for name in names:
        for f in targets[name]:
            seen.setdefault(f.relpath, f)
    return list(seen.values())


def mirror_url(mirror: str, remote: RemoteFile) -> str:
    """``<mirror>/<subdir>/<file name>``: a copy of the store layout served over HTTP."""
    return mirror.rstrip("/") + "/" + quote(remote.relpath)


def catalogue_entry(weight: WeightFile) -> RemoteFile | None:
    """The catalogue entry of a store file (None for a file the catalogue does not list)."""
    return remote_files().get(f"{weight.subdir}/{weight.filename}")


def digest_problem(remote: RemoteFile, sha256: str, md5: str) -> str | None:
    """Why the digests do not match ``remote`` (both values named), or None when they do."""
    if remote.sha256 and sha256 != remote.sha256.lower():
        return f"SHA-256 {sha256} does not match the expected {remote.sha256}"
    if remote.sha256_prefix and not sha256.startswith(remote.sha256_prefix.lower()):
        return f"SHA-256 {sha256} does not start with the published prefix {remote.sha256_prefix}"
    if remote.md5 and md5 != remote.md5.lower():
        return f"MD5 {md5} does not match the published {remote.md5}"
    return None


def _hash_file(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def _connect_failure(exc: Exception, connect_timeout: float) -> str:
    """A short reason for a failed connection (the exception text is a page of urllib3 internals)."""
    import requests

    text = str(exc)
    if isinstance(exc, requests.ConnectTimeout):
        return f"no connection within {connect_timeout:g} s"
    if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
        return "host name lookup failed"
    if "refused" in text.lower():
        return "connection refused"
    return f"connection failed: {type(exc).__name__}"


def _download_verified(
    url: str, remote: RemoteFile, target: Path, *, connect_timeout: float, read_timeout: float
) -> str:
    """Stream ``url`` into a temporary file next to ``target``, verify it, move it into place.

    Returns the SHA-256. Raises :class:`FetchError`; the temporary file never outlives a failure.
    """
    import requests

    received = 0
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with requests.get(
                    url,
                    stream=True,
                    timeout=(connect_timeout, read_timeout),
                    headers={"Accept-Encoding": "identity"},
                ) as resp:
                    if resp.status_code != 200:
                        raise FetchError(f"{url} answered HTTP {resp.status_code} {resp.reason}")
                    length = resp.headers.get("Content-Length")
                    expected = int(length) if length and length.isdigit() else None
                    if remote.size is not None and expected is not None and expected != remote.size:
                        raise FetchError(f"{url} announces {expected} bytes; the file is {remote.size} bytes")
                    limit = remote.size if remote.size is not None else expected
                    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
                    for block in resp.iter_content(CHUNK_BYTES):
                        received += len(block)
                        if limit is not None and received > limit:
                            raise FetchError(f"{url} sent more than the expected {limit} bytes")
                        sha.update(block)
                        md5.update(block)
                        out.write(block)
            except requests.ConnectionError as exc:
                if received:
                    raise FetchError(
                        f"download of {url} broke off after {received} bytes ({type(exc).__name__})"
                    ) from exc
                # DNS failure, refused connection and connect timeout (ConnectTimeout) all land here.
                host = urlsplit(url).netloc
                raise FetchError(
                    f"cannot reach {url} ({_connect_failure(exc, connect_timeout)}): this machine "
                    f"appears to be offline, or {host} is unreachable from it"
                ) from exc
            except requests.RequestException as exc:
                raise FetchError(
                    f"download of {url} broke off, incomplete ({type(exc).__name__}: {str(exc)[:160]})"
                ) from exc
            for want in {remote.size, expected} - {None}:
                if received != want:
                    raise FetchError(f"{url} sent {received} bytes, expected {want} (truncated download)")
            out.flush()
            os.fsync(out.fileno())
        why = digest_problem(remote, sha.hexdigest(), md5.hexdigest())
        if why:
            raise FetchError(f"{url}: {why}; the download was discarded")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        return sha.hexdigest()
    finally:
        tmp.unlink(missing_ok=True)


def fetch_file(
    remote: RemoteFile,
    store: ModelStore,
    *,
    mirror: str | None = None,
    replace: bool = False,
    connect_timeout: float = CONNECT_TIMEOUT_S,
    read_timeout: float = READ_TIMEOUT_S,
) -> FetchResult:
    """Download ``remote`` into ``store`` and verify it, unless a verified copy is already there.

    A file already in the store is hashed: when it matches it is kept (``"present"``); when it
    does not, nothing is downloaded unless ``replace`` is true, and then the bad copy is replaced
    only once the new download has verified.

    Args:
        remote: Catalogue entry (see :func:`remote_files`, :func:`resolve_targets`).
        store: Target model store.
        mirror: Base URL to fetch ``<mirror>/<subdir>/<file name>`` from instead of the official
            URL (a local mirror of the store layout; the tests' HTTP server).
        replace: Replace a present file whose checksum does not match.
        connect_timeout: Seconds to wait for a connection (short, so offline fails fast).
        read_timeout: Seconds to wait for each chunk from the server.

    Returns:
        A :class:`FetchResult`; it never raises for network or checksum failures.

    Example:
        >>> remote = remote_files()["encodec/encodec_24khz-d7cc33bc.th"]
        >>> fetch_file(remote, ModelStore("/tmp/store"), mirror="http://127.0.0.1:9")  # doctest: +SKIP
        FetchResult(..., status='failed', message='cannot connect to 127.0.0.1:9 ...')
    """
    target = store.path(remote.weight)
    url = mirror_url(mirror, remote) if mirror else remote.url
    by_hand = f"Download {remote.url} by hand and put it at {target}"
    if target.is_file():
        sha, md5 = _hash_file(target)
        why = digest_problem(remote, sha, md5) if remote.has_digest else None
        if why is None:
            what = (
                f"{remote.describe_digest()} verified"
                if remote.has_digest
                else "no digest recorded, not checked"
            )
            return FetchResult(remote, target, "present", f"already present ({what})", sha)
        if not replace:
            return FetchResult(
                remote,
                target,
                "failed",
                f"present but {why}; left untouched (move it away or pass --replace)",
            )
    if not remote.has_digest:
        return FetchResult(
            remote,
            target,
            "failed",
            f"no checksum for this file is recorded in the code, so it is not downloaded. "
            f"{by_hand}, after checking it: {remote.digest_source}",
        )
    created = [p for p in (target.parent, *target.parent.parents) if not p.exists()]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        sha = _download_verified(
            url, remote, target, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
    except (FetchError, OSError) as exc:
        for d in created:  # deepest first: leave no empty directories behind either
            try:
                d.rmdir()
            except OSError:
                break
        return FetchResult(remote, target, "failed", f"{exc}. {by_hand}")
    return FetchResult(remote, target, "stored", f"stored ({remote.describe_digest()} verified)", sha)
