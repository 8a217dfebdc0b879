"""`dwivae demo`: train a VAE and a DAE for DIPY's in-vivo sample, denoise it with both, draw it."""
from __future__ import annotations

import argparse
from pathlib import Path

from dwivae.cli.common import number

HELP = ("denoise a realistic phantom (with its truth) and DIPY's in-vivo sample with dwivae and the peers, and "
        "write the report")
EXAMPLE = "dwivae demo --out demo_out"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae demo`."""
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    p.add_argument("--seed", type=number(int, 0), default=0)


def run(args: argparse.Namespace) -> None:
    """Run `dwivae demo` with the parsed ``args``."""
    from dwivae.compare.demo import run_demo

    run_demo(args.out, seed=args.seed, force=args.force)
