"""Issue 14 finding 11: model-store files were unpickled, so a writable shared store ran code on every worker.

The attack as run: the CLAP, VGGish PCA and PANNs loaders called ``torch.load(weights_only=False)`` on
files from the model store, so a pickle whose ``__reduce__`` calls ``exec``, put in the store under the
file name a loader reads, ran its code when an embedder was built. Now each store file is checked
against the digest the catalogue records for it before it is read, and read with
``weights_only=True`` (besides tensors only numeric numpy arrays, which upstream files hold).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings

import numpy as np
import pytest
import torch

from metrics.embedders import ModelStore, WeightIntegrityError, fetch, get_embedder
from metrics.embedders.fetch import fetch_hint
from metrics.embedders.store import STORE_FILE_NO_DIGEST, WeightFile, file_digest
from metrics.embedders.vggish import VGGishNet
from tests.model_store import digests_matching, patch_catalogue

# (embedder, store file it reads): every loader that reads a pickle from the store.
LOADERS = [
    ("vggish-16k", "vggish/vggish-10086976.pth"),
    ("vggish-16k-pca8bit", "vggish/vggish_pca_params-970ea276.pth"),
    ("panns-cnn14-16k", "panns/Cnn14_16k_mAP=0.438.pth"),
    ("panns-cnn14-32k", "panns/Cnn14_mAP=0.431.pth"),
    ("clap-laion-630k-audioset-48k", "clap/630k-audioset-best.pt"),
    ("encodec-24k", "encodec/encodec_24khz-d7cc33bc.th"),
]
NO_DIGEST = ("clap-laion-music-speech-audioset-48k", "clap/music_speech_audioset_epoch_15_esc_89.98.pt")


class _Exec:
    """Pickles as a call of ``exec`` on source that writes ``marker``: the attack's payload."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code from the model store ran')",)


def _malicious(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {"model": {"w": torch.zeros(2)}, "state_dict": {"w": torch.zeros(2)}, "hook": _Exec(marker)}, path
    )


def _weight(relpath: str) -> WeightFile:
    return fetch.remote_files()[relpath].weight


def _store_with_good_vggish(root) -> str:
    """The PCA loader reads the VGGish weights first: a good copy (the caller patches in its digest)."""
    relpath = "vggish/vggish-10086976.pth"
    (root / relpath).parent.mkdir(parents=True, exist_ok=True)
    torch.save(VGGishNet().state_dict(), root / relpath)
    return relpath


def test_the_payload_runs_code_when_unpickled_as_before(tmp_path):
    """Control: the file is the attack (a weights_only=False load runs it), so its refusal below means something."""
    marker = tmp_path / "control-ran"
    _malicious(tmp_path / "evil.pth", marker)
    torch.load(tmp_path / "evil.pth", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize(("embedder", "relpath"), LOADERS, ids=[name for name, _ in LOADERS])
def test_a_malicious_pickle_under_a_loaders_file_name_fails_its_checksum_and_runs_nothing(
    embedder, relpath, tmp_path, monkeypatch
):
    marker = tmp_path / "pwned"
    good = [_store_with_good_vggish(tmp_path)] if embedder == "vggish-16k-pca8bit" else []
    patch_catalogue(monkeypatch, digests_matching(tmp_path, good))  # the attacked file keeps its real digest
    path = tmp_path / relpath
    _malicious(path, marker)

    with pytest.raises(WeightIntegrityError) as info:
        get_embedder(embedder, store=tmp_path, device="cpu")

    message = str(info.value)
    assert message.startswith(f"model store file {path} failed its checksum: ")
    remote = fetch.remote_files()[relpath]
    if remote.md5:
        assert f"MD5 {file_digest(path, 'md5')} does not match the published {remote.md5}" in message
    elif remote.sha256:
        assert f"SHA-256 {file_digest(path)} does not match the expected {remote.sha256}" in message
    else:
        assert (
            f"SHA-256 {file_digest(path)} does not start with the published prefix {remote.sha256_prefix}"
            in message
        )
    assert f"`{fetch_hint(remote.weight)} --replace`" in message
    assert not marker.exists(), "unpickling the store file ran its code"


@pytest.mark.parametrize(("embedder", "relpath"), LOADERS, ids=[name for name, _ in LOADERS])
def test_a_malicious_pickle_whose_digest_the_catalogue_records_is_still_not_unpickled(
    embedder, relpath, tmp_path, monkeypatch
):
    """Even a file that passes its checksum (a poisoned mirror, a wrong digest) is read weights-only."""
    marker = tmp_path / "pwned"
    if embedder == "vggish-16k-pca8bit":
        _store_with_good_vggish(tmp_path)
    _malicious(tmp_path / relpath, marker)
    patch_catalogue(monkeypatch, digests_matching(tmp_path))

    with pytest.raises(WeightIntegrityError) as info:
        get_embedder(embedder, store=tmp_path, device="cpu")

    message = str(info.value)
    assert re.match(
        re.escape(
            f"model store file {tmp_path / relpath} holds Python objects other than tensors and "
            "numeric arrays (first refused: "
        )
        + r"(builtins\.)?exec\); it was not loaded",
        message,
    )
    assert f"`{fetch_hint(_weight(relpath))} --replace`" in message
    assert not marker.exists(), "unpickling the store file ran its code"


def test_a_file_whose_catalogue_entry_has_no_digest_is_loaded_weights_only_with_a_warning(
    tmp_path, monkeypatch
):
    embedder, relpath = NO_DIGEST
    assert not fetch.remote_files()[relpath].has_digest
    marker = tmp_path / "pwned"
    _malicious(tmp_path / relpath, marker)
    with pytest.warns(UserWarning, match="has no checksum recorded in the catalogue"):
        with pytest.raises(WeightIntegrityError, match=r"first refused: (builtins\.)?exec\)"):
            get_embedder(embedder, store=tmp_path, device="cpu")
    assert not marker.exists()

    good = tmp_path / relpath
    torch.save({"epoch": 15, "state_dict": {"w": torch.ones(3)}}, good)
    store = ModelStore(tmp_path)
    with pytest.warns(UserWarning) as caught:
        state, path = store.load_torch(_weight(relpath))
    assert torch.equal(state["state_dict"]["w"], torch.ones(3)) and path == good
    assert str(caught[0].message).startswith(STORE_FILE_NO_DIGEST.split("{")[0] + str(good))
    assert hashlib.sha256(good.read_bytes()).hexdigest() in str(caught[0].message)


def test_a_good_file_with_a_wrong_digest_is_refused_naming_both_digests_and_the_fix(tmp_path, monkeypatch):
    path = tmp_path / "panns" / "Cnn14_16k_mAP=0.438.pth"
    path.parent.mkdir()
    torch.save({"iteration": 0, "model": {"w": torch.zeros(3)}}, path)
    real = fetch.remote_files()["panns/Cnn14_16k_mAP=0.438.pth"]
    with pytest.raises(WeightIntegrityError) as info:
        get_embedder("panns-cnn14-16k", store=tmp_path, device="cpu")
    assert str(info.value) == (
        f"model store file {path} failed its checksum: MD5 {hashlib.md5(path.read_bytes()).hexdigest()} does not "
        f"match the published {real.md5}. It is damaged or was replaced, and was not loaded; restore the official "
        f"file with `python manage.py models_fetch panns-cnn14-16k --replace`."
    )


def test_good_synthetic_files_whose_digests_match_load_numpy_arrays_included(tmp_path, monkeypatch):
    _store_with_good_vggish(tmp_path)
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(128, 128)))
    torch.save(
        {"pca_eigen_vectors": q, "pca_means": np.zeros((128, 1))},  # float64, as torchvggish ships them
        tmp_path / "vggish" / "vggish_pca_params-970ea276.pth",
    )
    patch_catalogue(monkeypatch, digests_matching(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified files load without the no-digest warning
        emb = get_embedder("vggish-16k-pca8bit", store=tmp_path, device="cpu")
    out = emb.embed([np.zeros(16000, np.float32)])
    assert out[0].shape == (1, 128)


def test_object_arrays_are_refused_even_though_numeric_arrays_are_allowed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    _store_with_good_vggish(tmp_path)
    torch.save(
        {"pca_eigen_vectors": np.array([_Exec(marker)], dtype=object), "pca_means": np.zeros(128)},
        tmp_path / "vggish" / "vggish_pca_params-970ea276.pth",
    )
    patch_catalogue(monkeypatch, digests_matching(tmp_path))
    with pytest.raises(
        WeightIntegrityError, match="holds Python objects other than tensors and numeric arrays"
    ):
        get_embedder("vggish-16k-pca8bit", store=tmp_path, device="cpu")
    assert not marker.exists()


def test_a_file_swapped_after_it_was_opened_and_while_it_was_checked_is_not_loaded(tmp_path, monkeypatch):
    relpath = "vggish/vggish-10086976.pth"
    _store_with_good_vggish(tmp_path)
    patch_catalogue(monkeypatch, digests_matching(tmp_path))
    marker = tmp_path / "pwned"
    swap = tmp_path / "evil.pth"
    _malicious(swap, marker)
    store = ModelStore(tmp_path)
    real_verify = ModelStore.verify

    def verify_then_swap(self, weight, path=None):
        digest = real_verify(self, weight, path)
        os.replace(swap, self.path(weight))  # the verified file is replaced before it is read
        return digest

    monkeypatch.setattr(ModelStore, "verify", verify_then_swap)
    with pytest.raises(WeightIntegrityError, match="changed while it was being checked"):
        store.load_torch(_weight(relpath))
    assert not marker.exists()
