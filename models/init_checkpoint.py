"""Write a randomly initialised checkpoint in our format.

Usage::

    python -m models.init_checkpoint --family hifigan --config v1 --out ckpt/hifigan_v1.pt --seed 0
    python -m models.init_checkpoint --family evagan --config tiny --out evagan_tiny.pt
    python -m models.init_checkpoint --family sat --config tiny --out sat_tiny.pt
    python -m models.init_checkpoint --family aar --config tiny --out aar_tiny.pt

``--config`` is a preset name of the family or a path to a JSON file of constructor kwargs.
``--family`` also accepts plug-in names (entry points or ``package.module:factory``); a dotted
path typed here is allowed because whoever runs this command chooses their own code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.base import AudioModel
from models.checkpoint import save_checkpoint
from models.errors import ModelLoadError
from models.registry import available_families, build_model, resolve_family


def _config(family: str, spec: str | None) -> Any:
    builder = resolve_family(family, plugins=[family])
    if spec is not None and Path(spec).suffix == ".json":
        return json.loads(Path(spec).read_text())
    if isinstance(builder, type) and issubclass(builder, AudioModel):
        if spec is None:
            return builder.config_class()
        return builder.preset(spec)
    if spec is not None:
        raise ValueError(
            f"family {family!r} is a factory without presets; pass --config as a .json kwargs file"
        )
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m models.init_checkpoint", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--family", required=True, help=f"one of {available_families()} or package.module:factory"
    )
    parser.add_argument(
        "--config", default=None, help="preset name (e.g. v1, v2, v3, tiny) or kwargs .json file"
    )
    parser.add_argument("--out", required=True, type=Path, help="checkpoint file to write")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    args = parser.parse_args(argv)
    try:
        config = _config(args.family, args.config)
        torch.manual_seed(args.seed)
        model = build_model(args.family, config, plugins=[args.family])
    except (ModelLoadError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = save_checkpoint(model, args.out, metadata={"seed": args.seed, "preset": args.config})
    params = sum(p.numel() for p in model.parameters())
    print(
        f"wrote {path} (family={model.family}, kind={model.kind}, params={params}, sample_rate={model.sample_rate})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
