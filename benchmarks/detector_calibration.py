"""Detector calibration: artifacts planted at known times and strengths in clean speech.

Each artifact kind is what one detector is for (:data:`KIND_DETECTOR`). A planted clip holds
artifacts of one kind only, with the clean clip as its reference, so a detector is scored on the
clips of its own kind — the edges of a planted dropout are real spectral discontinuities, and
counting them against ``spectral_discontinuity`` would measure the planting, not the detector.

* precision: share of the detector's events on clips of its kind that overlap a planted artifact
  (each widened by :data:`TOLERANCE_S`);
* recall: share of planted artifacts that overlap one of its events;
* events/min on the clean clips, without a reference (``hf_loss``, which needs one: a copy delayed
  by two samples with −60 dBFS noise, against the clip): what an alert would see on speech with no
  artifact at all;
* events/min on that inaudibly changed copy against the clean clip, for every detector: a model
  output that is as good as its reference must not fire either.

Clean speech is eSpeak NG (Harvard sentences, six voices; offline) and, given ``--real-speech``,
the recordings in that directory (``*_ref.wav``; e.g. ``/work/shared/data/real-speech``, VCTK and
TSP under CC BY 4.0 / BSD — not copied into the repository).

Run from the repository root::

    .venv/bin/python benchmarks/detector_calibration.py --clips 60 --real-speech /work/shared/data/real-speech

The tests import :func:`plant`, :func:`espeak_clips` and :func:`evaluate` with a small seeded set.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile
from scipy.signal import butter, sosfiltfilt

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evalsite.demo.speech import DEMO_SENTENCES, DEMO_SPEAKERS, synthesize
from metrics.detectors import DETECTORS, DetectorEvent

TOLERANCE_S = 0.05
"""A detected event matches a planted artifact when they overlap after widening the plant by 50 ms
on each side: a region detector's edges sit on frame centres (up to ~25 ms off)."""

KIND_DETECTOR: dict[str, str] = {
    "click": "clicks",
    "clipping": "clipping",
    "buzz": "tonal_buzz",
    "dropout": "nan_or_silence",
    "glitch": "spectral_discontinuity",
    "band_limit": "hf_loss",
    "dc_offset": "dc_offset",
}
"""Artifact kind → the detector that must find it."""


@dataclass(frozen=True)
class Planted:
    """One planted artifact: ``kind`` at ``[start_s, end_s]`` with a kind-specific ``strength``
    (click amplitude, clipping overdrive factor, buzz level in dB re the speech RMS, ...)."""

    kind: str
    start_s: float
    end_s: float
    strength: float


@dataclass(frozen=True)
class Clip:
    """A clean clip and where it came from."""

    name: str
    audio: np.ndarray
    sample_rate: int


def espeak_clips(n: int, *, offset: int = 0) -> list[Clip]:
    """``n`` clean eSpeak NG clips at 22.05 kHz: Harvard sentences cycling through the demo voices.

    Clip ``i`` is voice ``i mod 6`` reading sentence ``(i + i // 30) mod 30``: the first 180 are
    distinct pairs, so ``offset=60`` gives clips the thresholds were not chosen on.
    """
    if n + offset > len(DEMO_SPEAKERS) * len(DEMO_SENTENCES):
        raise ValueError(
            f"only {len(DEMO_SPEAKERS) * len(DEMO_SENTENCES)} distinct clips; asked for {n} from {offset}"
        )
    clips = []
    for i in range(offset, offset + n):
        voice = DEMO_SPEAKERS[i % len(DEMO_SPEAKERS)]
        text = DEMO_SENTENCES[(i + i // len(DEMO_SENTENCES)) % len(DEMO_SENTENCES)]
        x, sr = synthesize(text, voice=voice)
        clips.append(Clip(f"espeak:{voice}:{i}", x.astype(np.float64), sr))
    return clips


def real_clips(directory: Path) -> list[Clip]:
    """The ``*_ref.wav`` recordings in ``directory`` (16-bit PCM, first channel), full-scale floats."""
    paths = sorted(Path(directory).glob("*_ref.wav"))
    if not paths:
        raise ValueError(f"{directory}: no *_ref.wav recordings found")
    clips = []
    for p in paths:
        sr, a = wavfile.read(p)
        if a.ndim == 2:
            a = a[:, 0]
        if a.dtype != np.int16:
            raise ValueError(f"{p}: expected 16-bit PCM, got {a.dtype}")
        clips.append(Clip(f"real:{p.stem}", a.astype(np.float64) / 32768.0, int(sr)))
    return clips


def _active_spots(
    x: np.ndarray, sr: int, length_s: float, rng: np.random.Generator, n: int, within_db: float = 20.0
) -> list[int]:
    """Up to ``n`` non-overlapping start samples of ``length_s`` stretches inside loud speech
    (every 10 ms frame in it within ``within_db`` of the clip's loudest), at least 0.2 s apart."""
    hop = int(0.01 * sr)
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    level = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = level >= level.max() - within_db
    need = max(1, int(np.ceil(length_s / 0.01)))
    ok = np.flatnonzero(np.convolve(loud, np.ones(need), "valid") >= need)
    # Stay clear of the first and last 100 ms (onsets and zero padding).
    ok = ok[(ok * hop > 0.1 * sr) & ((ok + need) * hop < x.size - 0.1 * sr)]
    rng.shuffle(ok)
    spots: list[int] = []
    gap = need + int(0.2 / 0.01)
    for f in ok:
        if all(abs(int(f) - s) >= gap for s in spots):
            spots.append(int(f))
        if len(spots) == n:
            break
    return sorted(s * hop for s in spots)


def _plant_click(x, sr, rng):
    out, planted = x.copy(), []
    rms = float(np.sqrt(np.mean(x**2)))
    for i in _active_spots(x, sr, 0.05, rng, 3) or [x.size // 2]:
        amp = rms * float(rng.uniform(3.0, 8.0)) * rng.choice([-1.0, 1.0])
        # A two-sample impulse: a dropped-sample or bit-flip click, not a band-limited transient.
        out[i : i + 2] += amp
        planted.append(Planted("click", i / sr, (i + 2) / sr, abs(amp) / rms))
    return out, planted


def _plant_clipping(x, sr, rng):
    out, planted = x.copy(), []
    for i in _active_spots(x, sr, 0.15, rng, 2):
        n = int(rng.uniform(0.08, 0.15) * sr)
        seg = out[i : i + n]
        drive = float(rng.uniform(1.5, 3.0))
        out[i : i + n] = np.clip(seg * drive / np.max(np.abs(seg)), -1.0, 1.0)
        planted.append(Planted("clipping", i / sr, (i + n) / sr, drive))
    return out, planted


def _plant_buzz(x, sr, rng):
    n = int(rng.uniform(0.5, 1.2) * sr)
    i = int(rng.uniform(0.1, 0.9) * max(1, x.size - n))
    f = float(rng.uniform(150.0, 3000.0))
    rms = float(np.sqrt(np.mean(x**2)))
    level_db = float(rng.uniform(-20.0, -10.0))
    t = np.arange(n) / sr
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: the tone, not its edges
    out = x.copy()
    out[i : i + n] += rms * 10 ** (level_db / 20) * np.sqrt(2) * ramp * np.sin(2 * np.pi * f * t)
    return out, [Planted("buzz", i / sr, (i + n) / sr, level_db)]


def _plant_dropout(x, sr, rng):
    out, planted = x.copy(), []
    length = float(rng.uniform(0.25, 0.4))
    # 30 dB: a quarter second with no frame 20 dB down is rare in speech (it has consonants).
    for i in _active_spots(x, sr, length, rng, 1, within_db=30.0):
        n = int(length * sr)
        out[i : i + n] = 0.0
        planted.append(Planted("dropout", i / sr, (i + n) / sr, length))
    return out, planted


def _plant_glitch(x, sr, rng):
    out, planted = x.copy(), []
    for i in _active_spots(x, sr, 0.04, rng, 2):
        n = int(rng.uniform(0.02, 0.04) * sr)
        rms = float(np.sqrt(np.mean(out[i : i + n] ** 2)))
        # A splice of noise at the local level: what a codec's lost frame or a bad overlap-add sounds like.
        out[i : i + n] = rms * rng.standard_normal(n)
        planted.append(Planted("glitch", i / sr, (i + n) / sr, n / sr))
    return out, planted


def _plant_band_limit(x, sr, rng):
    out, planted = x.copy(), []
    length = float(rng.uniform(0.4, 0.8))
    for i in _active_spots(x, sr, length, rng, 1) or [x.size // 4]:
        n = min(int(length * sr), x.size - i)
        cutoff = float(rng.uniform(2500.0, 4500.0))
        lp = sosfiltfilt(butter(8, cutoff, "low", fs=sr, output="sos"), x)
        out[i : i + n] = lp[i : i + n]
        planted.append(Planted("band_limit", i / sr, (i + n) / sr, cutoff))
    return out, planted


def _plant_dc_offset(x, sr, rng):
    n = int(rng.uniform(0.3, 0.6) * sr)
    i = int(rng.uniform(0.1, 0.9) * max(1, x.size - n))
    offset = float(rng.uniform(0.05, 0.15)) * rng.choice([-1.0, 1.0])
    out = x.copy()
    out[i : i + n] += offset
    return out, [Planted("dc_offset", i / sr, (i + n) / sr, abs(offset))]


PLANTERS: dict[str, Callable[[np.ndarray, int, np.random.Generator], tuple[np.ndarray, list[Planted]]]] = {
    "click": _plant_click,
    "clipping": _plant_clipping,
    "buzz": _plant_buzz,
    "dropout": _plant_dropout,
    "glitch": _plant_glitch,
    "band_limit": _plant_band_limit,
    "dc_offset": _plant_dc_offset,
}


def plant(kind: str, clip: Clip, seed: int) -> tuple[np.ndarray, list[Planted]]:
    """A copy of ``clip.audio`` with artifacts of ``kind`` planted; the same seed gives the same copy.

    Strengths are drawn from ranges an artifact is plainly audible in (see each planter): clicks
    3–8× the clip's RMS, clipping overdriven 1.5–3×, buzz −20 to −10 dB re the speech RMS,
    dropouts 0.25–0.4 s of digital zero, glitches 20–40 ms of noise at the local level,
    band-limiting to 2.5–4.5 kHz for 0.4–0.8 s, DC offsets 0.05–0.15 for 0.3–0.6 s.
    """
    if kind not in PLANTERS:
        raise ValueError(f"unknown artifact kind {kind!r}; known: {', '.join(PLANTERS)}")
    return PLANTERS[kind](clip.audio, clip.sample_rate, np.random.default_rng(seed))


def _match(a: DetectorEvent, p: Planted) -> bool:
    return a.start_s <= p.end_s + TOLERANCE_S and p.start_s - TOLERANCE_S <= a.end_s


@dataclass(frozen=True)
class Score:
    """One detector on one set of clips."""

    detector: str
    n_events: int
    n_true: int
    n_planted: int
    n_found: int
    clean_events: int
    clean_minutes: float
    changed_events: int

    @property
    def precision(self) -> float | None:
        return self.n_true / self.n_events if self.n_events else None

    @property
    def recall(self) -> float | None:
        return self.n_found / self.n_planted if self.n_planted else None

    @property
    def clean_per_minute(self) -> float:
        return self.clean_events / self.clean_minutes

    @property
    def changed_per_minute(self) -> float:
        return self.changed_events / self.clean_minutes


def _inaudibly_changed(clip: Clip) -> np.ndarray:
    """The clip delayed by two samples plus −60 dBFS white noise (seeded): an output that differs
    from its reference by what no listener hears, for ``hf_loss``, which needs a reference."""
    noise = np.random.default_rng(0).standard_normal(clip.audio.size) * 10 ** (-60 / 20)
    return np.concatenate([np.zeros(2), clip.audio[:-2]]) + noise


def evaluate(clips: Sequence[Clip], *, seed: int = 0, kinds: Iterable[str] | None = None) -> dict[str, Score]:
    """Plant every kind in every clip (one kind per copy), run its detector, score it.

    Returns ``{detector name: Score}`` for the detectors of ``kinds`` (default: all).
    """
    scores = {}
    for k_i, kind in enumerate(kinds or PLANTERS):
        name = KIND_DETECTOR[kind]
        detect = DETECTORS[name]
        n_events = n_true = n_planted = n_found = clean_events = changed_events = 0
        minutes = 0.0
        for c_i, clip in enumerate(clips):
            out, planted = plant(kind, clip, seed * 1_000_003 + k_i * 10_007 + c_i)
            events = detect(out, clip.sample_rate, clip.audio)
            n_events += len(events)
            n_true += sum(any(_match(e, p) for p in planted) for e in events)
            n_planted += len(planted)
            n_found += sum(any(_match(e, p) for e in events) for p in planted)
            changed_events += len(detect(_inaudibly_changed(clip), clip.sample_rate, clip.audio))
            if name == "hf_loss":
                clean_events = changed_events
            else:
                clean_events += len(detect(clip.audio, clip.sample_rate))
            minutes += clip.audio.size / clip.sample_rate / 60.0
        scores[name] = Score(
            name, n_events, n_true, n_planted, n_found, clean_events, minutes, changed_events
        )
    return scores


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=60, help="eSpeak NG clips (default 60)")
    ap.add_argument(
        "--offset",
        type=int,
        default=0,
        help="first eSpeak NG clip (60: clips the thresholds were not chosen on)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-speech", type=Path, help="directory of *_ref.wav recordings (16-bit PCM)")
    ap.add_argument(
        "--real-repeats", type=int, default=10, help="plantings per recording, each seeded apart (default 10)"
    )
    args = ap.parse_args(argv)
    sets = {"eSpeak NG": espeak_clips(args.clips, offset=args.offset)}
    if args.real_speech is not None:
        sets["real speech"] = real_clips(args.real_speech) * args.real_repeats
    print(
        "| detector | set | clips | planted | precision | recall | events | "
        "clean events/min | inaudibly changed vs reference, events/min |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for set_name, clips in sets.items():
        for s in evaluate(clips, seed=args.seed).values():
            print(
                f"| `{s.detector}` | {set_name} | {len(clips)} | {s.n_planted} | {_fmt(s.precision)} | "
                f"{_fmt(s.recall)} | {s.n_events} | {s.clean_per_minute:.2f} "
                f"({s.clean_events} in {s.clean_minutes:.1f} min) | {s.changed_per_minute:.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
