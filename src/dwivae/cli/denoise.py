"""`dwivae denoise`: denoise a 4D diffusion NIfTI (the plain command, or with a given model)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dwivae.apply.grouping import DEFAULT_GROUP
from dwivae.cli.common import COUNT, GROUP, POSITIVE, number
from dwivae.errors import InputError
from dwivae.learn.config import ARCHITECTURES

HELP = ("denoise a 4D diffusion NIfTI: with no --model, by a VAE trained for its protocol and noise (cached), "
        "voxels grouped by latent codes, noise floor removed")
EXAMPLE = ("dwivae denoise sub-01_dwi.nii.gz --out sub-01_desc-denoised_dwi.nii.gz\n"
           "  dwivae denoise dwi.nii.gz --bvals dwi.bval --bvecs dwi.bvec --coils 4 --out dwi_denoised.nii.gz\n"
           "  dwivae denoise dwi.nii.gz --model models/vae32 --out dwi_vae.nii.gz")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae denoise`."""
    p.add_argument("dwi", type=Path, help="4D NIfTI (.nii or .nii.gz)")
    p.add_argument("--bvals", type=Path, help="FSL .bval (default: the BIDS file next to the image)")
    p.add_argument("--bvecs", type=Path, help="FSL .bvec (default: the BIDS file next to the image)")
    p.add_argument("--model", type=Path,
                   help="model directory from `dwivae train` (default: train one for the data's protocol and noise, "
                        "or reuse the cached one, and estimate each voxel from its group of like codes, --nonlocal)")
    p.add_argument("--train", action="store_true",
                   help="train a model for the data's protocol and noise when --model does not match, as the "
                        "command does without --model (seeded, cached in ~/.cache/dwivae/models or $DWIVAE_CACHE)")
    p.add_argument("--arch", choices=ARCHITECTURES, default="vae", help="architecture for --train")
    p.add_argument("--out", type=Path, required=True, help="denoised NIfTI; _residual is written beside it")
    p.add_argument("--mask", default="auto",
                   help="mask NIfTI on the image grid, 'auto' (DIPY median_otsu on the mean b0, default) or 'none'")
    p.add_argument("--denoise-b0", action="store_true", help="replace the b0 volumes too (default: kept as measured)")
    p.add_argument("--no-context", dest="context", action="store_false",
                   help="denoise voxel by voxel even if the model has a learned context network (`train --context`)")
    p.add_argument("--spatial", type=POSITIVE, nargs="?", const=2.0, metavar="STRENGTH",
                   help="decode each voxel's latent mean averaged over its 3x3x3 neighbourhood, weighted by how "
                        "close the neighbours' codes are (edge-aware; strength 2 if no value is given)")
    p.add_argument("--nonlocal", dest="nonlocal_", type=GROUP, nargs="?", const=DEFAULT_GROUP, metavar="GROUP",
                   help="estimate each voxel as the low-rank part of the measured series of a group of about GROUP "
                        "voxels whose latent codes are alike, noise floor removed (the plain command's method; "
                        f"GROUP {DEFAULT_GROUP} if no value is given; needs --sigma or estimates it)")
    p.add_argument("--keep-floor", action="store_true",
                   help="keep the noise floor of magnitude data in the grouped estimate, as MP-PCA and dwidenoise "
                        "keep it (for output to compare with theirs, or data that are not magnitudes)")
    p.add_argument("--bias-correct", action="store_true",
                   help="remove the Rician / noncentral-chi noise floor from the output (models trained on "
                        "Gaussian noise, the default); noise level from --sigma or the MP-PCA noise estimate")
    p.add_argument("--sigma", type=POSITIVE,
                   help="noise standard deviation per channel, for --nonlocal, --bias-correct "
                   "and --spatial (scanner units; default: the Marchenko-Pastur estimate of MP-PCA in the mask)")
    p.add_argument("--coils", type=COUNT, default=1,
                   help="receive coils combined by root sum of squares, for the plain command, --nonlocal, "
                        "--bias-correct and --spatial (1: Rician)")
    p.add_argument("--uncertainty", type=number(int, 0), default=0, metavar="K",
                   help="write _uncertainty: the standard deviation over K posterior samples (VAE only)")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="threads of the forward pass (default: every CPU this process may use)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed for --train and --uncertainty")


def run(args: argparse.Namespace) -> None:
    """Run `dwivae denoise` with the parsed ``args``."""
    from dwivae import io
    from dwivae.apply.denoise_file import denoise_file, output_paths
    from dwivae.apply.estimate import check_protocol
    from dwivae.apply.outputs import check_outputs
    from dwivae.learn.frozen import FrozenModel
    from dwivae.physics.acquisition import load_acquisition

    if bool(args.bvals) != bool(args.bvecs):
        raise InputError("give both --bvals and --bvecs, or neither to use the BIDS files next to the image")
    if args.model is None and args.nonlocal_ is None and args.spatial is None and not args.uncertainty:
        args.nonlocal_ = DEFAULT_GROUP  # the plain command pools, the b0 volumes too (as MP-PCA does):
        args.denoise_b0 = True  # with one b0, its noise would otherwise scale every fitted diffusivity
    if args.keep_floor and args.nonlocal_ is None:
        raise InputError("--keep-floor is for the grouped estimate (the plain command, or --nonlocal): drop it or add "
                         "--nonlocal")
    if (args.sigma is not None or args.coils != 1) and not (args.bias_correct or args.spatial is not None
                                                            or args.nonlocal_ is not None):
        raise InputError("--sigma and --coils describe the data's noise for --bias-correct, --spatial and "
                         "--nonlocal: add one of them")
    bvals, bvecs = (args.bvals, args.bvecs) if args.bvals else io.find_gradient_files(args.dwi)
    acq = load_acquisition(bvals, bvecs)
    img = io.load_dwi(args.dwi)
    if img.shape[3] != acq.n_volumes:
        raise InputError(f"{args.dwi.name} has {img.shape[3]} volumes but {Path(bvals).name} and {Path(bvecs).name} "
                         f"have {acq.n_volumes}: give the gradient files of this image")
    inputs = [bvals, bvecs, *([args.model] if args.model else [])]
    check_outputs(output_paths(args.out, uncertainty=args.uncertainty,
                               sigma=args.nonlocal_ is not None or args.bias_correct or args.spatial is not None),
                  inputs=[args.dwi, io.sidecar_path(args.dwi), *inputs,
                          *([args.mask] if args.mask not in ("auto", "none") else [])], force=args.force)
    model = _denoising_model(args) if args.model else None
    if model is not None and args.train and model.acquisition.mismatch(acq) is not None:
        model = None  # --train: one matched to the data instead
    if model is not None:
        check_protocol(model, acq, model_name=str(args.model))
        if not isinstance(model, FrozenModel) and args.threads is not None:
            import torch

            torch.set_num_threads(args.threads)
    mask = None if args.mask == "none" else args.mask
    provenance = {"Command": shlex.join(["dwivae", *args.argv]),
                  "GradientFiles": {"bval": str(Path(bvals).resolve()), "bvec": str(Path(bvecs).resolve())},
                  **({"Model": {"path": str(Path(args.model).resolve())}} if model is not None else {})}
    paths, stats = denoise_file(args.dwi, acq, model, args.out, mask=mask, denoise_b0=args.denoise_b0,
                                uncertainty=args.uncertainty, seed=args.seed, force=args.force,
                                bias_correct=args.bias_correct, sigma=args.sigma, coils=args.coils,
                                spatial=args.spatial, context=args.context, threads=args.threads,
                                progress=not args.quiet, inputs=inputs, pooling=args.nonlocal_,
                                keep_floor=args.keep_floor, arch=args.arch, provenance=provenance,
                                log=lambda line: print(f"{args.dwi.name}: {line}", file=sys.stderr))
    print(stats.line())
    print("-> " + ", ".join(str(p) for p in paths.values()))


def _denoising_model(args: argparse.Namespace):
    """``--model`` for `dwivae denoise`: read for the compiled forward pass alone (no torch import,
    ~2 s) where that is all the options need, else with its torch modules."""
    from dwivae.learn.checkpoint import load_frozen, load_model, read_metadata

    needs_torch = (args.uncertainty or args.spatial is not None or args.nonlocal_ is not None
                   or (args.context and "context_config" in read_metadata(Path(args.model))))
    return (None if needs_torch else load_frozen(args.model)) or load_model(args.model)
