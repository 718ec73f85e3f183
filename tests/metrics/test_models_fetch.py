"""metrics.embedders.fetch: download, verify and store atomically, against a local HTTP server."""

import hashlib
import re
import time

import pytest

from metrics.embedders import MissingWeightsError, ModelStore, get_embedder
from metrics.embedders.fetch import (
    FETCH_COMMAND,
    RemoteFile,
    fetch_file,
    fetch_hint,
    fetch_targets,
    mirror_url,
    remote_files,
    resolve_targets,
)
from metrics.embedders.registry import _entries
from metrics.embedders.store import WeightFile
from tests.http_fileserver import closed_port_url, serve_files

GOOD = b"weights " * 5000
WEIGHT = WeightFile("panns", "Cnn14_mAP=0.431.pth", "test")


def _remote(url: str, data: bytes = GOOD, **digests) -> RemoteFile:
    if not digests:
        digests = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    return RemoteFile(WEIGHT, url, digest_source="test", **digests)


def _left_in(root) -> list:
    return sorted(p.relative_to(root) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def store(tmp_path):
    return ModelStore(tmp_path / "store")


def test_a_good_file_is_stored_with_its_verified_sha256(store):
    with serve_files({"/w.pth": GOOD}) as base:
        result = fetch_file(_remote(base + "/w.pth"), store)
    assert result.status == "stored" and result.ok, result.message
    assert result.path == store.root / "panns" / "Cnn14_mAP=0.431.pth"
    assert result.path.read_bytes() == GOOD
    assert result.sha256 == hashlib.sha256(GOOD).hexdigest()
    assert _left_in(store.root) == [
        store.root.joinpath("panns").relative_to(store.root),
        result.path.relative_to(store.root),
    ]


def test_a_file_checked_by_zenodo_md5_or_a_sha256_prefix_is_stored(store):
    md5_only = _remote("", md5=hashlib.md5(GOOD).hexdigest())
    prefix_only = RemoteFile(
        WeightFile("vggish", "x-1234.pth", "t"), "", sha256_prefix=hashlib.sha256(GOOD).hexdigest()[:8]
    )
    with serve_files({"/panns/Cnn14_mAP=0.431.pth": GOOD, "/vggish/x-1234.pth": GOOD}) as base:
        assert fetch_file(md5_only, store, mirror=base).status == "stored"
        assert fetch_file(prefix_only, store, mirror=base).status == "stored"
    assert "MD5" in md5_only.describe_digest() and "prefix" in prefix_only.describe_digest()


def test_a_download_cut_short_is_refused_and_leaves_nothing(store):
    with serve_files({"/w.pth": GOOD}, cut_short=frozenset({"/w.pth"})) as base:
        result = fetch_file(_remote(base + "/w.pth"), store)
    assert result.status == "failed"
    assert str(result.path) in result.message
    assert _left_in(store.root) == []


def test_a_truncated_file_served_as_complete_is_refused_and_leaves_nothing(store):
    with serve_files({"/w.pth": GOOD[:1000]}) as base:
        by_size = fetch_file(_remote(base + "/w.pth"), store)
        by_digest = fetch_file(_remote(base + "/w.pth", sha256=hashlib.sha256(GOOD).hexdigest()), store)
    assert by_size.status == "failed" and "bytes" in by_size.message
    assert by_digest.status == "failed" and "SHA-256" in by_digest.message
    assert _left_in(store.root) == []


@pytest.mark.parametrize(
    "digests",
    [
        {"sha256": "0" * 64},
        {"sha256_prefix": "00000000"},
        {"md5": "0" * 32},
    ],
)
def test_a_file_with_the_wrong_checksum_is_refused_and_leaves_nothing(store, digests):
    with serve_files({"/w.pth": GOOD}) as base:
        result = fetch_file(_remote(base + "/w.pth", **digests), store)
    assert result.status == "failed" and "does not" in result.message and "discarded" in result.message
    assert _left_in(store.root) == []


def test_a_failure_does_not_remove_other_files_of_the_store(store):
    other = store.root / "panns" / "other.pth"
    other.parent.mkdir(parents=True)
    other.write_bytes(b"x")
    with serve_files({"/w.pth": GOOD}) as base:
        assert fetch_file(_remote(base + "/w.pth", sha256="0" * 64), store).status == "failed"
    assert _left_in(store.root) == [other.parent.relative_to(store.root), other.relative_to(store.root)]


def test_a_present_file_with_the_right_checksum_is_kept_without_downloading(store):
    store.path(WEIGHT).parent.mkdir(parents=True)
    store.path(WEIGHT).write_bytes(GOOD)
    result = fetch_file(_remote(closed_port_url() + "/w.pth"), store)
    assert result.status == "present" and "verified" in result.message


def test_a_present_file_with_the_wrong_checksum_is_reported_and_replaced_only_on_request(store):
    path = store.path(WEIGHT)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"corrupt")
    with serve_files({"/w.pth": GOOD}) as base:
        kept = fetch_file(_remote(base + "/w.pth"), store)
        assert kept.status == "failed" and "--replace" in kept.message
        assert path.read_bytes() == b"corrupt"
        replaced = fetch_file(_remote(base + "/w.pth"), store, replace=True)
    assert replaced.status == "stored" and path.read_bytes() == GOOD
    assert _left_in(store.root) == [path.parent.relative_to(store.root), path.relative_to(store.root)]


def test_offline_fails_fast_with_the_url_the_reason_and_where_to_put_the_file(store):
    url = closed_port_url() + "/w.pth"
    start = time.monotonic()
    result = fetch_file(_remote(url), store)
    assert time.monotonic() - start < 5.0
    assert result.status == "failed"
    assert "offline" in result.message and "127.0.0.1" in result.message
    assert str(store.path(WEIGHT)) in result.message and "by hand" in result.message
    assert _left_in(store.root) == []


def test_a_file_without_a_recorded_digest_is_never_downloaded(store):
    result = fetch_file(
        RemoteFile(WEIGHT, "http://127.0.0.1:9/w.pth", digest_source="see the file page"), store
    )
    assert (
        result.status == "failed"
        and "no checksum" in result.message
        and "see the file page" in result.message
    )


def test_the_mirror_serves_the_store_layout():
    remote = remote_files()["panns/Cnn14_mAP=0.431.pth"]
    assert mirror_url("http://m/x/", remote) == "http://m/x/panns/Cnn14_mAP%3D0.431.pth"


# -- the catalogue ---------------------------------------------------------------------------------
def test_every_store_file_an_embedder_loads_is_in_the_catalogue():
    files = remote_files()
    for name, entry in _entries().items():
        for w in entry.weights:
            assert f"{w.subdir}/{w.filename}" in files, name
    assert set(fetch_targets()["roberta-base-tokenizer"]) == {
        files["clap/roberta-base/vocab.json"],
        files["clap/roberta-base/merges.txt"],
    }


def test_catalogue_digests_are_well_formed_and_agree_with_the_file_names():
    for remote in remote_files().values():
        assert remote.url.startswith("https://") and remote.digest_source
        if remote.sha256:
            assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
        if remote.md5:
            assert re.fullmatch(r"[0-9a-f]{32}", remote.md5)
        named = re.search(r"-([0-9a-f]{8})\.(pth|th)$", remote.weight.filename)
        if named:  # torch.hub names carry the first 8 hex digits of the SHA-256
            assert (remote.sha256 or remote.sha256_prefix).startswith(named.group(1))


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(KeyError) as err:
        resolve_targets(["vggish", "panns-cnn14-16k"])
    assert "vggish" in err.value.args[0] and "vggish-16k-pca8bit" in err.value.args[0]


def test_names_sharing_a_file_fetch_it_once():
    files = resolve_targets(["vggish-16k", "vggish-16k-pca8bit"])
    assert [f.weight.filename for f in files] == ["vggish-10086976.pth", "vggish_pca_params-970ea276.pth"]


# -- the error a metric gets -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,filename",
    [
        ("panns-cnn14-32k", "Cnn14_mAP=0.431.pth"),
        ("vggish-16k-pca8bit", "vggish-10086976.pth"),
        ("clap-laion-630k-audioset-48k", "630k-audioset-best.pt"),
    ],
)
def test_missing_weights_error_names_the_file_and_the_models_fetch_command(tmp_path, name, filename):
    with pytest.raises(MissingWeightsError) as err:
        get_embedder(name, store=tmp_path, device="cpu")
    msg = str(err.value)
    assert filename in msg and f"{FETCH_COMMAND} " in msg
    fetch_name = re.search(re.escape(FETCH_COMMAND) + r" (\S+)`", msg).group(1)
    assert filename in [f.weight.filename for f in fetch_targets()[fetch_name]]


def test_fetch_hint_names_the_embedder_that_needs_the_file():
    assert (
        fetch_hint(remote_files()["encodec/encodec_24khz-d7cc33bc.th"].weight)
        == f"{FETCH_COMMAND} encodec-24k"
    )


def test_missing_clap_tokenizer_files_name_the_models_fetch_command(tmp_path):
    from types import SimpleNamespace

    from metrics.embedders.clap import ClapEmbedder

    fake = SimpleNamespace(_tokenizer=None, store=ModelStore(tmp_path), name="clap-laion-630k-audioset-48k")
    with pytest.raises(MissingWeightsError) as err:
        ClapEmbedder.tokenizer(fake)
    assert "vocab.json" in str(err.value) and f"{FETCH_COMMAND} roberta-base-tokenizer" in str(err.value)
