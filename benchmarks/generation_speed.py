"""Vocoder generation speed: seconds of audio produced per wall-clock second (×RT).

Times ``vocoder(mel)`` for HiFi-GAN V1 and the EVA-GAN-style base config (random weights,
weight norm folded, ``eval()``), with warm-up and ``cuda.synchronize``. Each model is measured in
its own subprocess so the CPU peak-RSS figure (``ru_maxrss``) belongs to that model alone; on GPU
the peak is ``torch.cuda.max_memory_allocated``. Prints a markdown table row per model.

Usage::

    python benchmarks/generation_speed.py                        # auto device, both models
    python benchmarks/generation_speed.py --device cpu --batch-size 2 --seconds 2 --reps 3
    python benchmarks/generation_speed.py --device cuda --bf16 --tf32
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402

MODELS = {
    "hifigan-v1": ("hifigan", "v1"),
    "evagan-base": ("evagan", "base"),
}
HEADER = (
    "| model | device | batch | clip (s) | precision | ×RT (audio s / wall s) | wall per batch (s) | "
    "peak memory (MiB) | torch |\n|---|---|---|---|---|---|---|---|---|"
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", default=",".join(MODELS), help=f"comma-separated subset of {list(MODELS)}"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=None, help="default 16 on GPU, 2 on CPU")
    parser.add_argument("--seconds", type=float, default=None, help="clip length; default 4 on GPU, 2 on CPU")
    parser.add_argument(
        "--reps", type=int, default=None, help="timed repetitions; default 10 on GPU, 3 on CPU"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--bf16", action="store_true", help="autocast to bfloat16")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions (CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _measure(args: argparse.Namespace, name: str, device: torch.device) -> dict[str, object]:
    family, preset = MODELS[name]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(0)
    model = (
        models.build_model(family, models.BUILTIN_FAMILIES[family].preset(preset))
        .fold_weight_norm()
        .eval()
        .to(device)
    )
    frames = max(1, round(args.seconds * model.sample_rate / model.hop_length))
    audio_seconds = args.batch_size * frames * model.hop_length / model.sample_rate
    mel = torch.randn(args.batch_size, model.n_mels, frames, device=device) - 5.0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else nullcontext()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    with autocast:
        for rep in range(args.warmup + args.reps):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            out = model(mel)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if rep >= args.warmup:
                times.append(time.perf_counter() - start)
    if out.shape != (args.batch_size, frames * model.hop_length):
        raise RuntimeError(
            f"expected output {(args.batch_size, frames * model.hop_length)}, got {tuple(out.shape)}"
        )
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / 2**20
        where = torch.cuda.get_device_name(device)
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        where = f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})"
    wall = statistics.median(times)
    precision = ("bf16" if args.bf16 else "fp32") + (" +tf32" if args.tf32 and device.type == "cuda" else "")
    return {
        "model": name,
        "device": where,
        "batch": args.batch_size,
        "seconds": frames * model.hop_length / model.sample_rate,
        "precision": precision,
        "xrt": audio_seconds / wall,
        "wall": wall,
        "peak_mib": peak_mib,
        "torch": str(torch.__version__),
    }


def _row(r: dict[str, object]) -> str:
    return (
        f"| {r['model']} | {r['device']} | {r['batch']} | {r['seconds']:.2f} | {r['precision']} | "
        f"{r['xrt']:.1f} | {r['wall']:.3f} | {r['peak_mib']:.0f} | {r['torch']} |"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = _parse(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    on_gpu = device.type == "cuda"
    args.batch_size = args.batch_size or (16 if on_gpu else 2)
    args.seconds = args.seconds or (4.0 if on_gpu else 2.0)
    args.reps = args.reps or (10 if on_gpu else 3)
    if args.only:
        print(json.dumps(_measure(args, args.only, device)))
        return 0
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        print(f"unknown model(s) {unknown}; choose from {list(MODELS)}", file=sys.stderr)
        return 2
    print(HEADER)
    base = [sys.executable, str(Path(__file__).resolve())] + (argv if argv is not None else sys.argv[1:])
    for name in names:
        done = subprocess.run(
            base + ["--device", str(device), "--only", name], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        print(_row(json.loads(done.stdout.strip().splitlines()[-1])), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
