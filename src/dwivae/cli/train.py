"""`dwivae train`: train a VAE or DAE on simulated signals for a protocol."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from dwivae.cli.common import COUNT, POSITIVE, acquisition, number, protocol_args, refuse_existing
from dwivae.errors import InputError
from dwivae.learn.config import ARCHITECTURES, ATOM_SOURCES, LOSSES, NORMALISATIONS, PRESETS
from dwivae.physics.simulate import NOISE_KINDS

HELP = "train a VAE or DAE on simulated signals for a protocol"
EXAMPLE = ("dwivae train --protocol seed32 --arch vae --out models/vae32\n"
           "  dwivae train --bvals dwi.bval --bvecs dwi.bvec --arch dae --seed 1 --out models/dae\n"
           "  dwivae train --bvals dwi.bval --bvecs dwi.bvec --atoms mixed --fresh-atoms --noise rician "
           "--snr-from dwi.nii.gz --context --out models/vae_context")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae train`."""
    protocol_args(p)
    p.add_argument("--arch", choices=ARCHITECTURES, default="vae")
    p.add_argument("--latent", type=COUNT, default=7, help="latent size (default 7)")
    p.add_argument("--hidden", type=COUNT, nargs="+", metavar="WIDTH",
                   help="encoder hidden widths (default: the study's, narrowing evenly to the latent, e.g. 26 20 13)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help="default: fresh noise on fewer samples; study: all atoms x 31 levels")
    p.add_argument("--epochs", type=COUNT)
    p.add_argument("--beta-max", type=number(float, 0.0), help="maximum KL weight (0: no KL term)")
    p.add_argument("--loss", choices=LOSSES)
    p.add_argument("--lr", type=POSITIVE, help="Adam learning rate")
    p.add_argument("--batch-size", type=COUNT)
    p.add_argument("--atoms", choices=ATOM_SOURCES,
                   help="clean signals: the study's tensor grid (default), random tensors, ball-and-sticks or both")
    p.add_argument("--noise", choices=NOISE_KINDS,
                   help="training noise (default gaussian, clipped at 0, as the study)")
    p.add_argument("--coils", type=COUNT, help="receiver channels of nc-chi noise")
    p.add_argument("--snr-range", type=POSITIVE, nargs=2, metavar=("LOW", "HIGH"),
                   help="draw each sample's SNR (S0 / sigma) log-uniformly from this range instead of "
                        "the study's 31 noise levels")
    p.add_argument("--snr-from", type=Path, metavar="DWI",
                   help="measure the SNR range on this series of the protocol (sigma from the MP-PCA noise "
                        "estimate, S0 from its b0 volumes)")
    p.add_argument("--mask", default="auto", help="mask for --snr-from: a NIfTI file or 'auto' (median_otsu)")
    p.add_argument("--fresh-atoms", action="store_true",
                   help="online simulation: new random clean signals every batch (random, sticks or mixed atoms)")
    p.add_argument("--free-water", type=number(float, 0.0, high=1.0), metavar="FRACTION",
                   help="make this fraction of the random tensors isotropic, up to free water (3.5e-3 mm²/s); "
                        "random or mixed atoms")
    p.add_argument("--normalise", choices=NORMALISATIONS,
                   help="divide each training sample by the true S0 (s0, the study's default) or, as denoising "
                        "real data does, by the mean of its own noisy b0 volumes (b0)")
    p.add_argument("--context", action="store_true",
                   help="then train a network that combines the latent codes of each voxel's 3x3x3 "
                        "neighbourhood, on simulated neighbourhoods with tissue boundaries; "
                        "`dwivae denoise` uses it")
    p.add_argument("--context-steps", type=COUNT, default=3000, metavar="N",
                   help="training steps of the context network (default 3000, 1024 neighbourhoods each)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="fixes simulation, split and initialisation")
    p.add_argument("--out", type=Path, required=True, help="model directory to create")


def run(args: argparse.Namespace) -> None:
    """Run `dwivae train` with the parsed ``args``."""
    from tqdm import tqdm

    from dwivae.learn.checkpoint import save_model
    from dwivae.learn.training import PRESETS, train

    acq = acquisition(args)
    refuse_existing(args.out, args.force)
    config = PRESETS[args.preset]
    overrides = {k: v for k, v in {"epochs": args.epochs, "loss": args.loss, "beta_max": args.beta_max,
                                   "lr": args.lr, "batch_size": args.batch_size,
                                   "atoms": args.atoms, "noise": args.noise, "coils": args.coils,
                                   "snr_range": args.snr_range,
                                   "fresh_atoms": args.fresh_atoms or None,
                                   "free_water": args.free_water, "normalise": args.normalise}.items()
                 if v is not None}
    if args.snr_from is not None:
        if args.snr_range is not None:
            raise InputError("give --snr-range or --snr-from, not both")
        overrides["snr_range"] = _snr_from_data(args.snr_from, acq, args.mask)
    config = replace(config, **overrides)
    with tqdm(total=config.epochs, desc=f"train {args.arch}", unit="epoch", disable=args.quiet) as bar:
        def show(record: dict) -> None:
            bar.set_postfix(loss=f"{record['total']:.4g}", **({"test_mse": f"{record['test_mse']:.4g}"}
                                                              if "test_mse" in record else {}))
            bar.update()
        model = train(acq, arch=args.arch, latent=args.latent, seed=args.seed, config=config, callback=show,
                      hidden=tuple(args.hidden) if args.hidden else None)
    s = model.summary
    print(f"trained {args.arch} (latent {args.latent}) for {acq.describe()}: test MSE {s['test_mse']:.4g}, "
          f"{s['samples_per_second'] / 1e6:.2f} M samples/s, {s['wall_seconds']:.1f} s")
    if args.context:
        _train_context(model, steps=args.context_steps, quiet=args.quiet)
    save_model(model, args.out, force=args.force)
    print(f"-> {args.out}")


def _snr_from_data(dwi: Path, acq, mask_arg: str) -> tuple[float, float]:
    """The training SNR range measured on a diffusion series of the training protocol."""

    from dwivae import io
    from dwivae.apply.mask import auto_mask
    from dwivae.physics.noise import SIGMA_METHODS, sigma_method, snr_range

    img = io.load_dwi(dwi)
    if img.shape[3] != acq.n_volumes:
        raise InputError(f"{dwi.name} has {img.shape[3]} volumes but the protocol has {acq.n_volumes}: "
                         "pass the gradient files of that series")
    mask = auto_mask(img, acq) if mask_arg == "auto" else io.load_mask(mask_arg, img)
    sigma, (low, high) = snr_range(img.dataobj, acq, mask)
    print(f"{dwi.name}: sigma {sigma:.4g} from the {SIGMA_METHODS[sigma_method()]}; "
          f"training SNR range {low:.3g}-{high:.3g}", file=sys.stderr)
    return low, high



def _train_context(model, *, steps: int, quiet: bool) -> None:
    from tqdm import tqdm

    from dwivae.learn.context import train_context
    from dwivae.learn.models import ContextConfig

    config = ContextConfig(latent=model.model_config.latent, steps=steps)
    with tqdm(total=steps, desc="train context", unit="step", disable=quiet) as bar:
        def show(step: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.4g}")
            bar.update(step - bar.n)
        train_context(model, config=config, callback=show)
    c = model.summary["context"]
    print(f"trained a {config.size}-voxel context network: centre-voxel test MSE {c['test_mse']:.4g} "
          f"(voxel-wise {c['test_mse_voxelwise']:.4g}), log-signal MSE {c['test_log_mse']:.4g} "
          f"(voxel-wise {c['test_log_mse_voxelwise']:.4g}), {c['seconds']:.1f} s")
