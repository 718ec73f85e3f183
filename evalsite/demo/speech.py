"""The offline demo speech corpus: Harvard sentences read by several eSpeak NG voices.

The synthesis itself lives in ``evalsite.audio.speech`` (listening tests speak their attention checks
with it too); its public names are re-exported here for the demo, the examples and the benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

from evalsite.audio.speech import (
    MAX_RATE_WPM,
    MIN_RATE_WPM,
    SAMPLE_RATE,
    available_variants,
    available_voices,
    synthesize,
)

__all__ = [
    "DEMO_SENTENCES",
    "DEMO_SPEAKERS",
    "MANIFEST_NAME",
    "MAX_RATE_WPM",
    "MIN_RATE_WPM",
    "SAMPLE_RATE",
    "available_variants",
    "available_voices",
    "synthesize",
    "write_demo_corpus",
]

logger = logging.getLogger(__name__)

DEMO_SPEAKERS: tuple[str, ...] = (
    "en-us",
    "en-us+f3",
    "en-gb-x-rp+m3",
    "en-us+f4",
    "en-gb-scotland+m7",
    "en-029+f2",
)

# Harvard sentences (IEEE Recommended Practice for Speech Quality Measurements, 1969), lists 1-3.
DEMO_SENTENCES: tuple[str, ...] = (
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
)

MANIFEST_NAME = "manifest.csv"


def write_demo_corpus(out_dir: Path, *, n_items: int = 24) -> Path:
    """Write ``item_000.wav`` ... (PCM16, 22.05 kHz) and ``manifest.csv`` (path,text,speaker).

    Item ``i`` speaks ``DEMO_SENTENCES[i % 30]`` with ``DEMO_SPEAKERS[i % 6]``; manifest paths are
    relative to ``out_dir``. Re-running writes byte-identical files. Returns the manifest path.
    """
    import soundfile

    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_items):
        text = DEMO_SENTENCES[i % len(DEMO_SENTENCES)]
        speaker = DEMO_SPEAKERS[i % len(DEMO_SPEAKERS)]
        samples, rate = synthesize(text, voice=speaker)
        name = f"item_{i:03d}.wav"
        soundfile.write(out_dir / name, samples, rate, format="WAV", subtype="PCM_16")
        rows.append({"path": name, "text": text, "speaker": speaker})
    manifest = out_dir / MANIFEST_NAME
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "text", "speaker"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d demo items to %s", n_items, out_dir)
    return manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the offline eSpeak NG demo speech corpus.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--n-items", type=int, default=24)
    args = parser.parse_args(argv)
    print(write_demo_corpus(args.out_dir, n_items=args.n_items))


if __name__ == "__main__":
    main()
