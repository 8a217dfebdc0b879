"""`dwivae figures`: draw the study's figures for models and denoised outputs."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from dwivae.cli.common import figure_args, named_models

HELP = "draw the study's figures for models and denoised outputs"
EXAMPLE = ("dwivae figures models/vae32 models/dae32 models/vae32_latent10 --out figures/\n"
           "  dwivae figures models/vae32 --denoised dwi_vae.nii.gz dwi_dae.nii.gz --slices 22 94 --out figures/")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae figures`."""
    p.add_argument("models", type=Path, nargs="*", help="model directories (loss curves, reconstructions, latents)")
    p.add_argument("--denoised", type=Path, nargs="+", default=[],
                   help="outputs of `dwivae denoise` for one input (in-vivo images, residuals, FA)")
    p.add_argument("--out", type=Path, required=True, help="directory for the figures and figures.json")
    figure_args(p)


def run(args: argparse.Namespace) -> None:
    """Run `dwivae figures` with the parsed ``args``."""
    from dwivae.show.gallery import save_figures

    listing = save_figures(args.out, outputs=args.denoised, models=named_models(args.models),
                           benchmark=args.benchmark, fmt=args.format, slices=args.slices, seed=args.seed,
                           force=args.force)
    print(f"{len(json.loads(listing.read_text())['figures'])} figures -> {args.out}")
