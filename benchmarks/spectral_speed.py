"""Clips per second on CPU for the paired spectral distances (mel, MR-STFT, LSD) on 4 s clips.

Usage:
    python benchmarks/spectral_speed.py [--sr 22050] [--clips 64] [--seconds 4] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from metrics.functional.spectral import log_spectral_distance, mel_distance, mrstft_distance  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sr", type=int, default=22050)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    g = torch.Generator().manual_seed(0)
    t = int(args.sr * args.seconds)
    ref = {f"c{i}": 0.3 * torch.randn(t, generator=g) for i in range(args.clips)}
    gen = {k: v + 0.02 * torch.randn(t, generator=g) for k, v in ref.items()}
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, device={args.device}, "
        f"{args.clips} clips x {args.seconds:g} s at {args.sr} Hz, batch {args.batch_size}"
    )
    metrics = {
        "mel_l1/hifigan": lambda: mel_distance(
            gen, ref, args.sr, batch_size=args.batch_size, device=args.device
        ),
        "mrstft/auraloss-default": lambda: mrstft_distance(
            gen, ref, batch_size=args.batch_size, device=args.device
        ),
        "lsd/log10pow-n2048-h512": lambda: log_spectral_distance(
            gen, ref, batch_size=args.batch_size, device=args.device
        ),
    }
    for name, fn in metrics.items():
        fn()  # warm-up
        t0 = time.perf_counter()
        res = fn()
        dt = time.perf_counter() - t0
        print(
            f"{name:28s} {args.clips / dt:8.1f} clips/s  ({dt:.2f} s, mean {res.value:.4f}, name {res.name})"
        )


if __name__ == "__main__":
    main()
