"""`dwivae evaluate`: score models on the held-out simulated split (the study's Table 2)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dwivae.cli.common import named_models, refuse_existing, write_json
from dwivae.errors import InputError

HELP = "score models on the held-out simulated split (the study's Table 2)"
EXAMPLE = "dwivae evaluate models/vae32 models/dae32 --out results/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae evaluate`."""
    p.add_argument("models", type=Path, nargs="+", help="model directories")
    p.add_argument("--out", type=Path, required=True, help="directory for metrics.json")


def run(args: argparse.Namespace) -> None:
    """Run `dwivae evaluate` with the parsed ``args``."""
    from dwivae.compare.evaluation import evaluate, format_table
    from dwivae.learn.checkpoint import load_model

    paths = named_models(args.models)
    if "noisy" in paths:
        raise InputError("a model directory may not be named 'noisy' (the metrics' name for the noisy input)")
    refuse_existing(args.out / "metrics.json", args.force)
    models = {name: load_model(path) for name, path in paths.items()}
    results = evaluate(models)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "metrics.json", results)
    print(format_table(results))
    print(f"-> {args.out / 'metrics.json'}")
