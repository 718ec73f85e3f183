"""Fréchet distance on 2048-d statistics: metrics.functional.frechet vs frechet_audio_distance.

Same process, same float64 inputs. Usage:
    HF_HUB_OFFLINE=1 python benchmarks/frechet_speed.py [--dim 2048] [--n 4000] [--repeats 5] [--ref-repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402

from metrics.functional.frechet import frechet_distance, frechet_distance_to_reference  # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, list[float]]:
    times, value = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t0)
    return float(value), times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--n", type=int, default=4000, help="samples per set used to build the statistics")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=1)
    args = ap.parse_args()

    from frechet_audio_distance import FrechetAudioDistance

    rng = np.random.default_rng(0)
    d, n = args.dim, args.n
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a = np.maximum(rng.normal(size=(n, d)) @ mix, 0)  # ReLU features, like an embedder's
    b = np.maximum(rng.normal(size=(n, d)) @ mix + 0.05, 0)
    m1, s1, m2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, dim={d}, n={n}")

    frechet_distance(m1, s1, m2, s2)  # warm-up (library initialisation)
    ours, ours_t = _timed(lambda: frechet_distance(m1, s1, m2, s2).value, args.repeats)
    theirs, theirs_t = _timed(
        lambda: FrechetAudioDistance.calculate_frechet_distance(None, m1, s1, m2, s2), args.ref_repeats
    )
    ours_med, theirs_med = statistics.median(ours_t), statistics.median(theirs_t)
    print(
        f"ours   (cholesky+eigvalsh, float64, cpu): median {ours_med:.3f} s  runs={[f'{t:.3f}' for t in ours_t]}"
    )
    print(
        f"theirs (scipy sqrtm, complex cast):        median {theirs_med:.3f} s  runs={[f'{t:.3f}' for t in theirs_t]}"
    )
    print(
        f"speed-up: {theirs_med / ours_med:.1f}x   value ours={ours:.9f} theirs={theirs:.9f} "
        f"|diff|={abs(ours - theirs):.3e} rel={abs(ours - theirs) / abs(theirs):.3e}"
    )

    gen = b[:500]
    _, low_t = _timed(lambda: frechet_distance_to_reference(gen, (m1, s1, n)).value, 3)
    print(
        f"500 generated samples vs stored 2048-d reference (low-rank path, incl. reference factor): "
        f"median {statistics.median(low_t):.3f} s"
    )

    if torch.cuda.is_available():
        t1, t2 = torch.as_tensor(s1, device="cuda"), torch.as_tensor(s2, device="cuda")
        u1, u2 = torch.as_tensor(m1, device="cuda"), torch.as_tensor(m2, device="cuda")
        frechet_distance(u1, t1, u2, t2)
        torch.cuda.synchronize()
        gpu, gpu_t = _timed(lambda: frechet_distance(u1, t1, u2, t2).value, args.repeats)
        print(
            f"ours on {torch.cuda.get_device_name()}: median {statistics.median(gpu_t):.4f} s, value {gpu:.9f}"
        )


if __name__ == "__main__":
    main()
