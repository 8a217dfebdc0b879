"""`dwivae simulate`: simulate clean tensor signals and noisy copies for a protocol."""
from __future__ import annotations

import argparse
from pathlib import Path

from dwivae.cli.common import COUNT, acquisition, number, protocol_args, refuse_existing
from dwivae.learn.config import ATOM_SOURCES

HELP = "simulate clean tensor signals and noisy copies for a protocol"
EXAMPLE = "dwivae simulate --protocol seed32 --out sims/seed32"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae simulate`."""
    protocol_args(p)
    p.add_argument("--atoms", choices=ATOM_SOURCES, default="grid",
                   help="the study's tensor grid, random physiological tensors, random ball-and-sticks "
                        "(1-3 sticks) or half tensors, half sticks (default: grid)")
    p.add_argument("--n-atoms", type=COUNT, default=500_000, help="number of random atoms")
    p.add_argument("--sigma", type=number(float, 0.0), nargs="+",
                   help="noise standard deviations (default: the study's 31)")
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument("--out", type=Path, required=True, help="output directory")


def run(args: argparse.Namespace) -> None:
    """Run `dwivae simulate` with the parsed ``args``."""
    from dwivae.learn.dataset import save_simulation

    acq = acquisition(args)
    refuse_existing(args.out / "simulate.json", args.force)
    info = save_simulation(acq, args.out, seed=args.seed, atoms=args.atoms, n_atoms=args.n_atoms, sigmas=args.sigma)
    print(f"{info['n_atoms']} clean signals ({args.atoms}) x {len(info['noise_levels'])} noise levels = "
          f"{info['n_noisy']} noisy samples for {acq.describe()} -> {args.out}")
