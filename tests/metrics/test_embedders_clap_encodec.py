"""CLAP (laion_clap's model class) and EnCodec embedders, built offline, random weights in upstream layouts."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import json  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metrics.embedders import MissingWeightsError, ModelStore, get_embedder  # noqa: E402
from tests.model_store import digests_matching, patch_catalogue  # noqa: E402


def _sine(sr: int, seconds: float, f: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _toy_tokenizer(directory) -> None:
    """A tiny byte-level BPE vocabulary in roberta-base's file format (vocab.json + merges.txt)."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ"]:
        vocab[ch] = len(vocab)
    vocab["do"] = len(vocab)
    directory.mkdir(parents=True)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\nd o\n")


@pytest.fixture(scope="module")
def clap_store(tmp_path_factory):
    pytest.importorskip("laion_clap")
    from metrics.embedders.clap import build_clap_model

    root = tmp_path_factory.mktemp("clap-store")
    torch.manual_seed(0)
    model = build_clap_model("HTSAT-tiny")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    sd["module.text_branch.embeddings.position_ids"] = torch.arange(514)[None]  # as in pre-4.31 checkpoints
    (root / "clap").mkdir()
    torch.save({"epoch": 45, "state_dict": sd}, root / "clap" / "630k-audioset-best.pt")
    del model, sd
    with pytest.MonkeyPatch.context() as mp:  # the real file's digest, as it were
        patch_catalogue(mp, digests_matching(root))
        yield ModelStore(root)


@pytest.fixture(scope="module")
def clap(clap_store):
    return get_embedder("clap-laion-630k-audioset-48k", store=clap_store, device="cpu")


def test_clap_loads_an_upstream_layout_checkpoint_offline_and_records_its_sha256(clap, clap_store):
    path = clap_store.root / "clap" / "630k-audioset-best.pt"
    assert clap.weights_checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert clap.sample_rate == 48000 and clap.dim == 512


def test_clap_embeds_one_unit_vector_per_10s_window(clap):
    out = clap.embed([_sine(48000, 1.0), _sine(48000, 12.0, 220.0)])
    assert [o.shape for o in out] == [(1, 512), (2, 512)]
    np.testing.assert_allclose(np.linalg.norm(out[1], axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        clap.embed([_sine(48000, 1.0)])[0], out[0], rtol=1e-4, atol=1e-5
    )  # deterministic


def test_clap_short_windows_are_repeat_padded(clap):
    w = clap.windows(_sine(48000, 3.0))
    assert w.shape == (1, 480000)
    np.testing.assert_array_equal(w[0, :144000], w[0, 144000:288000])
    assert np.all(w[0, 432000:] == 0)


def test_clap_text_embedding_names_the_missing_tokenizer_files(clap, clap_store):
    with pytest.raises(MissingWeightsError) as err:
        clap.embed_text(["a dog barks"])
    msg = str(err.value)
    assert "vocab.json" in msg and "merges.txt" in msg
    assert str(clap_store.root / "clap" / "roberta-base") in msg and "roberta-base" in msg


def test_clap_text_embedding_with_tokenizer_files_in_the_store(clap, clap_store):
    _toy_tokenizer(clap_store.root / "clap" / "roberta-base")
    clap._tokenizer = None
    out = clap.embed_text(["a dog barks", "rain on a roof"])
    assert out.shape == (2, 512)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(out[0], out[1])


def test_clap_spec_changes_with_the_window_hop(clap_store, clap):
    from metrics.embedders.clap import ClapEmbedder

    other = ClapEmbedder(clap_store, "cpu", hop_s=1.0)
    assert other.name == "clap-laion-630k-audioset-48k-hop1s"
    assert other.preprocess_spec().key() != clap.preprocess_spec().key()


def test_encodec_loads_the_24khz_state_dict_and_gives_128d_frames_at_75hz(tmp_path, monkeypatch):
    pytest.importorskip("encodec")
    from metrics.embedders.codec import build_encodec_24k

    torch.manual_seed(0)
    (tmp_path / "encodec").mkdir()
    path = tmp_path / "encodec" / "encodec_24khz-d7cc33bc.th"
    torch.save(build_encodec_24k().state_dict(), path)
    patch_catalogue(monkeypatch, digests_matching(tmp_path))
    emb = get_embedder("encodec-24k", store=tmp_path, device="cpu")
    assert emb.weights_checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    clips = [_sine(24000, 1.0), _sine(24000, 0.5, 220.0), _sine(24000, 1.0, 660.0)]
    out = emb.embed(clips)
    assert [o.shape for o in out] == [(75, 128), (38, 128), (75, 128)]
    np.testing.assert_allclose(emb.embed(clips[:1])[0], out[0], rtol=1e-4, atol=1e-5)
