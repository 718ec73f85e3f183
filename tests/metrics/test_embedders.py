"""Embedders with store-loaded weights: model store errors, checksums, VGGish and PANNs Cnn14 layouts.

Random weights are saved in the exact upstream file names and layouts into a temporary store
and loaded through the embedders, so the loading path is the one real checkpoints take (the
catalogue's digests are patched to match them, as the real files' digests would).
"""

import hashlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metrics.embedders import (  # noqa: E402
    MissingWeightsError,
    ModelStore,
    available_embedders,
    embedder_names,
    get_embedder,
    required_weights,
)
from metrics.embedders.panns import CNN14_CONFIGS, Cnn14, PannsCnn14Embedder  # noqa: E402
from metrics.embedders.store import WeightFile, sha256_file  # noqa: E402
from metrics.embedders.vggish import VGGishEmbedder, VGGishNet, vggish_mel_matrix  # noqa: E402
from tests.model_store import digests_matching, patch_catalogue  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _sine(sr: int, seconds: float, f: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def _randomize_bn(net: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A model store holding random VGGish (+PCA) and Cnn14-16k weights in the upstream layouts."""
    root = tmp_path_factory.mktemp("model-store")
    torch.manual_seed(0)
    (root / "vggish").mkdir()
    torch.save(VGGishNet().state_dict(), root / "vggish" / "vggish-10086976.pth")
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(128, 128)))
    torch.save(
        {"pca_eigen_vectors": q.astype(np.float32), "pca_means": np.zeros(128, np.float32)},
        root / "vggish" / "vggish_pca_params-970ea276.pth",
    )
    (root / "panns").mkdir()
    net = Cnn14(CNN14_CONFIGS[16000])
    _randomize_bn(net, 1)
    torch.save({"iteration": 0, "model": net.state_dict()}, root / "panns" / "Cnn14_16k_mAP=0.438.pth")
    with pytest.MonkeyPatch.context() as mp:
        patch_catalogue(mp, digests_matching(root))
        yield ModelStore(root)


# -- model store ----------------------------------------------------------------------------------
def test_missing_weights_error_names_the_file_the_directory_and_the_source(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        get_embedder("panns-cnn14-32k", store=tmp_path, device="cpu")
    msg = str(err.value)
    assert "Cnn14_mAP=0.431.pth" in msg
    assert str(tmp_path / "panns") in msg
    assert "Zenodo" in msg and "EVALSITE_MODEL_STORE" in msg


@pytest.mark.parametrize(
    "name,filename,subdir",
    [
        ("vggish-16k", "vggish-10086976.pth", "vggish"),
        ("panns-cnn14-16k", "Cnn14_16k_mAP=0.438.pth", "panns"),
        ("clap-laion-630k-audioset-48k", "630k-audioset-best.pt", "clap"),
        ("encodec-24k", "encodec_24khz-d7cc33bc.th", "encodec"),
    ],
)
def test_each_store_embedder_names_its_upstream_file_when_missing(tmp_path, name, filename, subdir):
    with pytest.raises(MissingWeightsError, match=filename) as err:
        get_embedder(name, store=ModelStore(tmp_path), device="cpu")
    assert str(tmp_path / subdir) in str(err.value)
    assert required_weights(name, tmp_path)[0] == str(tmp_path / subdir / filename)


def test_store_root_defaults_to_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("EVALSITE_MODEL_STORE", str(tmp_path))
    assert ModelStore().root == tmp_path.absolute()
    monkeypatch.delenv("EVALSITE_MODEL_STORE")
    assert ModelStore().root == (ModelStore("var/model-store")).root


def test_available_embedders_reports_which_weights_are_present(store, tmp_path):
    avail = available_embedders(store)
    assert avail["vggish-16k"] and avail["vggish-16k-pca8bit"] and avail["panns-cnn14-16k"]
    assert not avail["panns-cnn14-32k"] and not avail["encodec-24k"]
    assert avail["crepe-full-16k"] and avail["resemblyzer-16k"]
    empty = available_embedders(tmp_path)
    assert not empty["vggish-16k"] and empty["crepe-tiny-16k"]
    assert set(avail) == set(embedder_names())


def test_unknown_embedder_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="vggish-16k"):
        get_embedder("vggish-8k")


def test_weights_checksum_is_the_sha256_of_the_loaded_file(store):
    emb = get_embedder("panns-cnn14-16k", store=store, device="cpu")
    path = store.path(WeightFile("panns", "Cnn14_16k_mAP=0.438.pth", ""))
    assert emb.weights_checksum == hashlib.sha256(path.read_bytes()).hexdigest() == sha256_file(path)


# -- VGGish ---------------------------------------------------------------------------------------
def test_vggish_has_the_torchvggish_keys_shapes_and_parameter_count():
    sd = VGGishNet().state_dict()
    expected = {
        "features.0.weight": (64, 1, 3, 3),
        "features.3.weight": (128, 64, 3, 3),
        "features.6.weight": (256, 128, 3, 3),
        "features.8.weight": (256, 256, 3, 3),
        "features.11.weight": (512, 256, 3, 3),
        "features.13.weight": (512, 512, 3, 3),
        "embeddings.0.weight": (4096, 12288),
        "embeddings.2.weight": (4096, 4096),
        "embeddings.4.weight": (128, 4096),
    }
    expected.update({k.replace("weight", "bias"): (v[0],) for k, v in expected.items()})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    assert sum(v.numel() for v in sd.values()) == 72_141_184


def test_vggish_mel_matrix_matches_htk_triangles_from_125_to_7500_hz():
    w = vggish_mel_matrix()
    assert w.shape == (257, 64)
    assert np.all(w[0] == 0) and np.all(w >= 0) and w.max() <= 1.0
    hz = np.linspace(0, 8000, 257)
    assert np.all(w[hz < 125] == 0) and np.all(w[hz > 7500] == 0)
    assert np.all(w.sum(axis=0) > 0)  # every band has support


def test_vggish_embeds_one_row_per_096s_patch_from_the_store(store):
    emb = get_embedder("vggish-16k", store=store, device="cpu")
    out = emb.embed([_sine(16000, 3.0), _sine(16000, 0.3), _sine(16000, 1.0, 1000.0)])
    # 3 s: 1 + (298 - 96) // 96 = 3 patches; 0.3 s is padded to one patch.
    assert [o.shape for o in out] == [(3, 128), (1, 128), (1, 128)]
    assert all(o.dtype == np.float32 and np.isfinite(o).all() for o in out)
    assert emb.embed_clip([_sine(16000, 3.0)]).shape == (1, 128)
    np.testing.assert_allclose(
        emb.embed_clip([_sine(16000, 3.0)])[0], out[0].mean(axis=0), rtol=1e-5, atol=1e-6
    )
    half = get_embedder("vggish-16k-hop0.5s", store=store, device="cpu")
    assert half.embed([_sine(16000, 3.0)])[0].shape == (5, 128)  # 1 + (298 - 96) // 50


def test_vggish_batching_does_not_change_embeddings(store):
    emb = VGGishEmbedder(store, "cpu", batch_size=2)
    clips = [_sine(16000, 2.0, f) for f in (220.0, 330.0, 440.0)]
    together = emb.embed(clips)
    alone = [emb.embed([c])[0] for c in clips]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_vggish_pca_variant_is_quantised_to_8_bits(store):
    emb = get_embedder("vggish-16k-pca8bit", store=store, device="cpu")
    out = emb.embed([_sine(16000, 2.0)])[0]
    assert out.shape == (2, 128) and out.min() >= 0 and out.max() <= 255
    assert np.array_equal(out, np.round(out))
    files = [store.root / "vggish" / n for n in ("vggish-10086976.pth", "vggish_pca_params-970ea276.pth")]
    lines = sorted(f"{p.name}:{hashlib.sha256(p.read_bytes()).hexdigest()}" for p in files)
    assert emb.weights_checksum == hashlib.sha256("\n".join(lines).encode()).hexdigest()


def test_preprocess_spec_differs_when_a_preprocessing_parameter_differs(store):
    a = VGGishEmbedder(store, "cpu")
    b = VGGishEmbedder(store, "cpu", hop_s=0.5)
    c = VGGishEmbedder(store, "cpu", pca=True)
    keys = {a.preprocess_spec().key(), b.preprocess_spec().key(), c.preprocess_spec().key()}
    assert len(keys) == 3
    assert a.preprocess_spec().key() == VGGishEmbedder(store, "cpu").preprocess_spec().key()
    assert a.preprocess_spec().audio.target_sr == 16000
    assert a.name != b.name != c.name
    assert a.cache_key() != b.cache_key()


def test_prepare_downmixes_and_resamples_to_the_embedder_rate(store):
    emb = VGGishEmbedder(store, "cpu")
    stereo = np.stack([_sine(48000, 1.0), _sine(48000, 1.0)])
    x = emb.prepare(stereo, 48000)
    assert x.shape == (16000,) and x.dtype == np.float32
    with pytest.raises(ValueError, match=r"mono \(T,\)"):
        emb.embed([stereo])


# -- PANNs Cnn14 ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sr,n_fft", [(16000, 512), (32000, 1024)])
def test_cnn14_has_the_released_checkpoint_keys_and_shapes(sr, n_fft):
    sd = Cnn14(CNN14_CONFIGS[sr]).state_dict()
    bins = n_fft // 2 + 1
    assert tuple(sd["spectrogram_extractor.stft.conv_real.weight"].shape) == (bins, 1, n_fft)
    assert tuple(sd["spectrogram_extractor.stft.conv_imag.weight"].shape) == (bins, 1, n_fft)
    assert tuple(sd["logmel_extractor.melW"].shape) == (bins, 64)
    assert tuple(sd["conv_block1.conv1.weight"].shape) == (64, 1, 3, 3)
    assert tuple(sd["conv_block6.conv2.weight"].shape) == (2048, 2048, 3, 3)
    assert tuple(sd["fc1.weight"].shape) == (2048, 2048)
    assert tuple(sd["fc_audioset.weight"].shape) == (527, 2048)
    assert "bn0.num_batches_tracked" in sd and "conv_block3.bn2.running_var" in sd
    blocks = {f"conv_block{i}.{p}.{t}" for i in range(1, 7) for p in ("conv1", "conv2") for t in ("weight",)}
    blocks |= {
        f"conv_block{i}.{b}.{t}"
        for i in range(1, 7)
        for b in ("bn1", "bn2")
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    }
    blocks |= {f"bn0.{t}" for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    blocks |= {
        "fc1.weight",
        "fc1.bias",
        "fc_audioset.weight",
        "fc_audioset.bias",
        "logmel_extractor.melW",
        "spectrogram_extractor.stft.conv_real.weight",
        "spectrogram_extractor.stft.conv_imag.weight",
    }
    assert set(sd) == blocks
    body = sum(
        v.numel()
        for k, v in sd.items()
        if "extractor" not in k and "running" not in k and "num_batches" not in k
    )
    assert body == 80_753_615  # Cnn14's published parameter count


def test_cnn14_front_end_matches_torchlibrosa():
    tl = pytest.importorskip("torchlibrosa")
    cfg = CNN14_CONFIGS[32000]
    net = Cnn14(cfg)
    spec = tl.Spectrogram(
        n_fft=1024,
        hop_length=320,
        win_length=1024,
        window="hann",
        center=True,
        pad_mode="reflect",
        freeze_parameters=True,
    )
    logmel = tl.LogmelFilterBank(
        sr=32000,
        n_fft=1024,
        n_mels=64,
        fmin=50,
        fmax=14000,
        ref=1.0,
        amin=1e-10,
        top_db=None,
        freeze_parameters=True,
    )
    x = torch.as_tensor(_sine(32000, 0.5))[None] + 0.01 * torch.randn(
        1, 16000, generator=torch.Generator().manual_seed(0)
    )
    with torch.inference_mode():
        ours = net.logmel_extractor(net.spectrogram_extractor(x))
        theirs = logmel(spec(x))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=2e-3)


def test_panns_embeds_one_2048_row_per_clip_and_classifies_527_classes(store):
    emb = get_embedder("panns-cnn14-16k", store=store, device="cpu")
    assert emb.frame_level is False and emb.dim == 2048 and emb.sample_rate == 16000
    clips = [_sine(16000, 1.0), _sine(16000, 1.0, 880.0), _sine(16000, 0.5)]
    frames = emb.embed(clips)
    assert [f.shape for f in frames] == [(1, 2048)] * 3
    assert all((f >= 0).all() for f in frames)  # ReLU(fc1)
    logits = emb.classify(clips)
    probs = emb.classify(clips, activation="sigmoid")
    assert logits.shape == probs.shape == (3, 527)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), rtol=1e-5)
    e2, l2 = emb.embed_and_classify(clips[:1])
    np.testing.assert_allclose(e2[0], frames[0][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l2[0], logits[0], rtol=1e-4, atol=1e-4)
    assert not np.allclose(frames[0], frames[1])


def test_panns_rejects_unreleased_sample_rates(store):
    with pytest.raises(ValueError, match="16000, 32000"):
        PannsCnn14Embedder(store, "cpu", sample_rate=8000)


@CUDA
def test_panns_gives_the_same_embedding_on_cuda(store):
    cpu = get_embedder("panns-cnn14-16k", store=store, device="cpu")
    gpu = get_embedder("panns-cnn14-16k", store=store, device="cuda")
    clips = [_sine(16000, 1.0)]
    np.testing.assert_allclose(gpu.embed_clip(clips), cpu.embed_clip(clips), rtol=1e-3, atol=1e-3)
