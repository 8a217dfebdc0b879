"""`dwivae phantom`: simulate a brain-like phantom with ground truth (tensors, fibres, tissue labels)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from dwivae.cli.common import COUNT, POSITIVE, acquisition, number, protocol_args
from dwivae.errors import InputError
from dwivae.physics.phantom import TISSUES
from dwivae.physics.simulate import NOISE_KINDS

HELP = "simulate a brain-like phantom with ground truth (tensors, fibres, tissue labels)"
EXAMPLE = ("dwivae phantom --protocol seed32 --shape 96 96 50 --snr 20 --noise rician --out phantoms/seed32_snr20\n"
           "  dwivae phantom --bvals dwi.bval --bvecs dwi.bvec --tissue realistic --noise nc-chi --coils 4 "
           "--out phantoms/realistic")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae phantom`."""
    protocol_args(p)
    p.add_argument("--tissue", choices=TISSUES, default="simple",
                   help="simple: one tensor per tissue, piecewise constant; realistic: multi-compartment tissue "
                        "(dispersed sticks, zeppelin, free water; two-pool grey matter; CSF), parameters drawn per "
                        "voxel, partial volume at every boundary, fibres crossing at 90 and 60 degrees")
    p.add_argument("--shape", type=COUNT, nargs=3, default=[96, 96, 50], metavar=("X", "Y", "Z"))
    p.add_argument("--snr", type=POSITIVE, default=20.0, help="S0 / sigma in white matter (default 20)")
    p.add_argument("--noise", choices=NOISE_KINDS, default="rician")
    p.add_argument("--coils", type=COUNT, default=1, help="receiver channels of nc-chi noise")
    p.add_argument("--seed", type=number(int, 0), default=0, help="fixes the noise")
    p.add_argument("--out", type=Path, required=True, help="phantom directory")


def run(args: argparse.Namespace) -> None:
    """Run `dwivae phantom` with the parsed ``args``."""
    from dwivae.physics.phantom import (
        make_phantom,
        make_realistic_phantom,
        write_phantom,
    )

    acq = acquisition(args)
    if (args.out / "phantom.json").exists() and not args.force:
        raise InputError(f"{args.out} already holds a phantom; pass --force to overwrite it")
    make = make_realistic_phantom if args.tissue == "realistic" else make_phantom
    phantom = make(acq, shape=tuple(args.shape), snr=args.snr, noise=args.noise, coils=args.coils, seed=args.seed)
    settings = {"tissue": args.tissue, "snr": args.snr, "noise": args.noise, "coils": args.coils, "seed": args.seed,
                "command": shlex.join(["dwivae", *args.argv])}
    write_phantom(phantom, acq, args.out, settings=settings, force=args.force)
    print(f"phantom {'x'.join(map(str, args.shape))} for {acq.describe()}, {args.noise} noise, SNR {args.snr:g} "
          f"(sigma {phantom.sigma:g}) -> {args.out}")
