"""models.training.train_vocoder on a tiny HiFi-GAN, and the example script built on it."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from models import training
from models.training import evaluate_mel_l1, train_vocoder

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "train_tiny_vocoder.py"
SR = 22050
# Small enough to keep the whole file well under 30 s on one busy core.
FAST = dict(batch_size=4, segment_s=0.2, lr=3e-3)


def harmonic(seconds: float, f0: float, *, seed: int) -> np.ndarray:
    """A voiced-speech-like signal: 8 harmonics of a gliding f0 under a syllable-rate envelope, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    pitch = f0 * (1 + 0.15 * np.sin(2 * math.pi * 0.7 * t))
    phase = 2 * math.pi * np.cumsum(pitch) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 9))
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * 3.0 * t) ** 2
    return (0.25 * wave * envelope + 0.003 * rng.standard_normal(t.size)).astype(np.float32)


def tiny_vocoder(seed: int = 0) -> models.HiFiGANVocoder:
    torch.manual_seed(seed)
    return models.HiFiGANVocoder.from_config(models.HiFiGANVocoder.preset("tiny"))


TRAIN_CLIPS = [harmonic(1.5, 130.0, seed=1), harmonic(1.5, 210.0, seed=2)]
HELD_OUT = [harmonic(1.0, 165.0, seed=3)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are too small to gain from more, and on a busy machine more
    threads than free cores make every step many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 40-step run with a checkpoint every 20 steps: (model, step-0 mel L1, history, calls, dir)."""
    out = tmp_path_factory.mktemp("ckpt")
    model = tiny_vocoder()
    before = evaluate_mel_l1(model, HELD_OUT)
    calls = []
    history = train_vocoder(
        model,
        TRAIN_CLIPS,
        SR,
        steps=40,
        checkpoint_every=20,
        checkpoint_dir=out,
        on_checkpoint=lambda step, path, loss: calls.append((step, path, loss)),
        **FAST,
    )
    return model, before, history, calls, out


def test_training_lowers_the_held_out_mel_l1_by_a_clear_margin(trained):
    model, before, history, _, _ = trained
    after = evaluate_mel_l1(model, HELD_OUT)
    assert after < 0.5 * before, (before, after)  # typically 6.8 → 0.9
    assert np.mean(history[-10:]) < np.mean(history[:10])


def test_training_returns_one_finite_loss_per_step_and_leaves_the_model_in_eval_mode(trained):
    model, _, history, _, _ = trained
    assert len(history) == 40
    assert all(math.isfinite(v) for v in history)
    assert not model.training


def test_checkpoints_have_watcher_names_load_and_reach_the_callback(trained):
    model, _, _, calls, out = trained
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint_step_20.pt", "checkpoint_step_40.pt"]
    assert [(step, path) for step, path, _ in calls] == [
        (20, out / "checkpoint_step_20.pt"),
        (40, out / "checkpoint_step_40.pt"),
    ]
    assert all(math.isfinite(loss) for _, _, loss in calls)
    loaded = models.load(out / "checkpoint_step_40.pt")
    assert loaded.family == "hifigan" and not loaded.training
    wav = torch.from_numpy(HELD_OUT[0]).unsqueeze(0)
    torch.testing.assert_close(loaded.copy_synthesis(wav), model.copy_synthesis(wav), atol=1e-5, rtol=1e-4)


def test_same_seed_gives_the_same_loss_history_and_another_seed_does_not():
    first = train_vocoder(tiny_vocoder(), TRAIN_CLIPS, SR, steps=4, seed=7, log_every=0, **FAST)
    second = train_vocoder(tiny_vocoder(), TRAIN_CLIPS, SR, steps=4, seed=7, log_every=0, **FAST)
    other = train_vocoder(tiny_vocoder(), TRAIN_CLIPS, SR, steps=4, seed=8, log_every=0, **FAST)
    assert first == second
    assert first != other


def test_checkpoints_are_written_under_a_hidden_name_then_renamed_into_place(tmp_path, monkeypatch):
    replaced = []
    real_replace = os.replace

    def spy(src, dst):
        src, dst = Path(src), Path(dst)
        if dst.name.startswith("checkpoint_step_"):
            replaced.append((src.name, dst.name, dst.exists()))
            assert src.parent == dst.parent and src.is_file()
        real_replace(src, dst)

    monkeypatch.setattr(training.os, "replace", spy)
    steps = []
    train_vocoder(
        tiny_vocoder(),
        TRAIN_CLIPS,
        SR,
        steps=5,
        checkpoint_every=2,
        checkpoint_dir=tmp_path,
        on_checkpoint=lambda step, path, loss: steps.append(step),
        log_every=0,
        **FAST,
    )
    assert steps == [2, 4, 5]  # every 2 steps, and the last one
    assert [dst for _, dst, _ in replaced] == [
        "checkpoint_step_2.pt",
        "checkpoint_step_4.pt",
        "checkpoint_step_5.pt",
    ]
    assert all(src.startswith(".") and not existed for src, _, existed in replaced)
    assert sorted(p.name for p in tmp_path.iterdir()) == [d for _, d, _ in replaced]


def test_a_failed_save_leaves_no_file_behind(tmp_path, monkeypatch):
    def broken(model, path, metadata=None):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(training, "save_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        train_vocoder(
            tiny_vocoder(),
            TRAIN_CLIPS,
            SR,
            steps=1,
            checkpoint_every=1,
            checkpoint_dir=tmp_path,
            log_every=0,
            **FAST,
        )
    assert list(tmp_path.iterdir()) == []


def test_start_step_numbers_steps_and_checkpoints_after_it(tmp_path):
    steps = []
    history = train_vocoder(
        tiny_vocoder(),
        TRAIN_CLIPS,
        SR,
        steps=2,
        checkpoint_every=2,
        checkpoint_dir=tmp_path,
        start_step=100,
        on_checkpoint=lambda step, path, loss: steps.append(step),
        log_every=0,
        **FAST,
    )
    assert len(history) == 2 and steps == [102]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint_step_102.pt"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 16000}, "resample first"),
        ({"steps": 0}, "steps must be an int >= 1"),
        ({"checkpoint_every": 5}, "needs checkpoint_dir"),
        ({"segment_s": 0.01}, "need at least"),
    ],
)
def test_bad_arguments_are_rejected_with_the_reason(kwargs, message):
    args = {"sample_rate": SR, "steps": 1, **FAST, **kwargs}
    sample_rate = args.pop("sample_rate")
    with pytest.raises(ValueError, match=message):
        train_vocoder(tiny_vocoder(), TRAIN_CLIPS, sample_rate, **args)


# --- examples/train_tiny_vocoder.py -------------------------------------------------------------


def load_example():
    spec = importlib.util.spec_from_file_location("train_tiny_vocoder", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_help_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--help"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    for option in (
        "--server",
        "--token",
        "--run-id",
        "--run-name",
        "--steps",
        "--checkpoint-every",
        "--out",
        "--eval-set",
    ):
        assert option in done.stdout


def test_example_trains_on_voices_and_sentences_the_demo_eval_set_does_not_use():
    from evalsite.demo.management.commands.demo import DEMO_EVALSET
    from evalsite.demo.speech import DEMO_SENTENCES, DEMO_SPEAKERS, available_variants, available_voices

    example = load_example()
    assert example.DEMO_EVAL_SET == DEMO_EVALSET
    assert not set(example.TRAIN_VOICES) & set(DEMO_SPEAKERS)
    assert not set(example.TRAIN_SENTENCES) & set(DEMO_SENTENCES)
    for voice in example.TRAIN_VOICES:
        base, _, variant = voice.partition("+")
        assert base in available_voices() and variant in available_variants(), voice


def test_example_options_and_token_rules():
    example = load_example()
    args = example.parse_args(["--token", "evu_x"])
    assert (args.steps, args.checkpoint_every, args.eval_set, args.run_id) == (
        1500,
        300,
        "demo-espeak-speech",
        None,
    )
    assert example.parse_args(["--token", "evr_x", "--run-id", "4"]).run_id == 4
    with pytest.raises(SystemExit):
        example.parse_args(["--token", "evr_x"])  # a run token needs --run-id


def test_example_formats_alerts_and_metrics():
    example = load_example()
    line = example.format_alert(
        {"severity": "warning", "checkpoint_step": 300, "title": "clipping up", "rule": "r"}
    )
    assert "warning" in line and "300" in line and "clipping up" in line
    assert example.format_metrics({"metrics": {"stoi": 0.61234, "pesq": None}}) == [
        "  pesq = n/a",
        "  stoi = 0.6123",
    ]


def test_example_says_clearly_when_the_server_is_unreachable(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    example = load_example()
    status = example.main(["--server", f"http://127.0.0.1:{port}", "--token", "evu_x"])
    assert status == example.EXIT_UNREACHABLE
    assert f"cannot reach evalsite at http://127.0.0.1:{port}" in capsys.readouterr().err
