"""`dwivae report`: write a self-contained HTML report of denoised outputs."""
from __future__ import annotations

import argparse
from pathlib import Path

from dwivae.cli.common import figure_args, named_models
from dwivae.errors import InputError

HELP = "write a self-contained HTML report of denoised outputs"
EXAMPLE = ("dwivae report dwi_vae.nii.gz dwi_dae.nii.gz --out report.html\n"
           "  dwivae report dwi_vae.nii.gz --models models/vae32_nokl --out report.html")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae report`."""
    p.add_argument("outputs", type=Path, nargs="+", help="outputs of `dwivae denoise` for one input")
    p.add_argument("--models", type=Path, nargs="+", default=[],
                   help="more model directories to show (e.g. latent 10, trained without KL)")
    p.add_argument("--peers", type=Path, nargs="+", default=[],
                   help="other denoisers' outputs of the same input (e.g. dwidenoise's), shown beside ours, "
                        "named by file name")
    p.add_argument("--out", type=Path, required=True, help="the .html file to write")
    figure_args(p)


def run(args: argparse.Namespace) -> None:
    """Run `dwivae report` with the parsed ``args``."""
    from dwivae.show.report import build_report

    peers = {p.name.removesuffix(".gz").removesuffix(".nii"): p for p in args.peers}
    if len(peers) != len(args.peers):
        raise InputError(f"--peers file names must be distinct, got {', '.join(p.name for p in args.peers)}")
    out = build_report(args.outputs, args.out, models=named_models(args.models), benchmark=args.benchmark,
                       fmt=args.format, slices=args.slices, seed=args.seed, force=args.force, peers=peers)
    print(f"-> {out}")
