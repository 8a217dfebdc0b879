"""The ``dwivae`` command line: each subcommand parses, makes one library call and saves."""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from dwivae._version import __version__
from dwivae.errors import InputError
from dwivae.grouping import DEFAULT_GROUP, MIN_GROUP
from dwivae.kernel import default_threads


def _number(kind: type, low: float, *, above: bool = False, high: float | None = None):
    """An argparse type: a number of ``kind`` that is at least ``low`` (above it with ``above``)
    and at most ``high``, refused with a message that says so."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{' whole' if kind is int else ''} number") from None
        if not (value > low if above else value >= low) or (high is not None and value > high) or value != value:
            bound = f"above {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}{f' and at most {high:g}' if high is not None else ''}, "
                                             f"got {text}")
        return value
    return parse


COUNT = _number(int, 1)
"""A whole number >= 1 (threads, coils, epochs, widths)."""
POSITIVE = _number(float, 0.0, above=True)
"""A number > 0 (sigma, SNR, learning rate)."""
GROUP = _number(int, MIN_GROUP)
"""Voxels per group of ``--nonlocal`` (at least :data:`dwivae.grouping.MIN_GROUP`)."""


def _protocol_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protocol (a built-in name, or FSL gradient files)")
    group.add_argument("--protocol", help="built-in protocol name (seed32: 2 x b=50 + 30 directions at b=1000)")
    group.add_argument("--bvals", type=Path, help="FSL .bval file")
    group.add_argument("--bvecs", type=Path, help="FSL .bvec file (3 x N or N x 3)")


def _acquisition(args: argparse.Namespace):
    from dwivae.acquisition import builtin_protocol, load_acquisition
    if args.protocol and (args.bvals or args.bvecs):
        raise InputError("give either --protocol or --bvals/--bvecs, not both")
    if args.protocol:
        return builtin_protocol(args.protocol)
    if not (args.bvals and args.bvecs):
        raise InputError("no protocol: pass --protocol seed32, or both --bvals and --bvecs")
    return load_acquisition(args.bvals, args.bvecs)


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def cmd_simulate(args: argparse.Namespace) -> None:
    import numpy as np

    from dwivae.acquisition import save_acquisition
    from dwivae.dataset import noisy_copies, simulate_split
    from dwivae.simulate import STUDY_NOISE_LEVELS

    acq = _acquisition(args)
    _refuse_existing(args.out / "simulate.json", args.force)
    split = simulate_split(acq, seed=args.seed, atoms=args.atoms, n_atoms=args.n_atoms)
    clean = np.concatenate([split.train_clean, split.test_clean])
    D = np.concatenate([split.train_D, split.test_D])
    sigmas = STUDY_NOISE_LEVELS if args.sigma is None else np.asarray(args.sigma, dtype=np.float32)
    noisy, atom, level = noisy_copies(clean, sigmas, rng=np.random.default_rng(args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    for name, array in {"clean": clean, "tensors": D, "noisy": noisy, "noisy_atom": atom,
                        "noisy_sigma": sigmas[level]}.items():
        np.save(args.out / f"{name}.npy", array)
    save_acquisition(acq, args.out / "protocol.bval", args.out / "protocol.bvec")
    info = {"protocol": acq.to_json(), "atoms": args.atoms, "n_atoms": len(clean),
            "n_train_atoms": len(split.train_clean), "n_test_atoms": len(split.test_clean),
            "noise_levels": [float(s) for s in sigmas], "n_noisy": len(noisy), "seed": args.seed}
    _write_json(args.out / "simulate.json", info)
    print(f"{len(clean)} clean signals ({args.atoms}) x {len(sigmas)} noise levels = {len(noisy)} "
          f"noisy samples for {acq.describe()} -> {args.out}")


def _snr_from_data(dwi: Path, acq, mask_arg: str) -> tuple[float, float]:
    """The training SNR range measured on a diffusion series of the training protocol."""
    import numpy as np

    from dwivae import io
    from dwivae.denoise import auto_mask
    from dwivae.noise import SIGMA_METHODS, sigma_method, snr_range

    img = io.load_dwi(dwi)
    if img.shape[3] != acq.n_volumes:
        raise InputError(f"{dwi.name} has {img.shape[3]} volumes but the protocol has {acq.n_volumes}: "
                         "pass the gradient files of that series")
    mask = auto_mask(img, acq) if mask_arg == "auto" else io.load_mask(mask_arg, img)
    sigma, (low, high) = snr_range(np.asarray(img.dataobj, dtype=np.float32), acq, mask)
    print(f"{dwi.name}: sigma {sigma:.4g} from the {SIGMA_METHODS[sigma_method(acq)]}; "
          f"training SNR range {low:.3g}-{high:.3g}", file=sys.stderr)
    return low, high


def cmd_train(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from dwivae.checkpoint import save_model
    from dwivae.training import PRESETS, train

    acq = _acquisition(args)
    _refuse_existing(args.out, args.force)
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


def _train_context(model, *, steps: int, quiet: bool) -> None:
    from tqdm import tqdm

    from dwivae.context import train_context
    from dwivae.models import ContextConfig

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


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dwivae.checkpoint import load_model
    from dwivae.evaluation import evaluate, format_table

    paths = _named_models(args.models)
    if "noisy" in paths:
        raise InputError("a model directory may not be named 'noisy' (the metrics' name for the noisy input)")
    _refuse_existing(args.out / "metrics.json", args.force)
    models = {name: load_model(path) for name, path in paths.items()}
    results = evaluate(models)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_json(args.out / "metrics.json", results)
    print(format_table(results))
    print(f"-> {args.out / 'metrics.json'}")


def cmd_denoise(args: argparse.Namespace) -> None:
    from dwivae import io
    from dwivae.acquisition import load_acquisition
    from dwivae.denoise import check_protocol, denoise_file, output_paths
    from dwivae.frozen import FrozenModel
    from dwivae.outputs import check_outputs

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
    model_path = args.model
    if model is None or (args.train and model.acquisition.mismatch(acq) is not None):
        model, model_path = _matched_model(args, acq)
    if not isinstance(model, FrozenModel) and args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    check_protocol(model, acq, model_name=str(model_path))
    mask = None if args.mask == "none" else args.mask
    paths, stats = denoise_file(args.dwi, acq, model, args.out, mask=mask, denoise_b0=args.denoise_b0,
                                uncertainty=args.uncertainty, seed=args.seed, force=args.force,
                                bias_correct=args.bias_correct, sigma=args.sigma, coils=args.coils,
                                spatial=args.spatial, context=args.context, threads=args.threads,
                                progress=not args.quiet, inputs=[*inputs, model_path], pooling=args.nonlocal_,
                                keep_floor=args.keep_floor,
                                provenance={"Command": shlex.join(["dwivae", *args.argv]),
                                            "Model": {"path": str(Path(model_path).resolve())},
                                            "GradientFiles": {"bval": str(Path(bvals).resolve()),
                                                              "bvec": str(Path(bvecs).resolve())}})
    print(stats.line())
    print("-> " + ", ".join(str(p) for p in paths.values()))


def _matched_model(args: argparse.Namespace, acq):
    """The model of the plain `dwivae denoise` (:func:`dwivae.plain.matched_model`) for ``args.dwi``."""
    import numpy as np

    from dwivae import io
    from dwivae.denoise import auto_mask
    from dwivae.plain import matched_model

    img = io.load_dwi(args.dwi)
    mask = auto_mask(img, acq) if args.mask in ("auto", "none") else io.load_mask(args.mask, img)
    return matched_model(acq, np.asarray(img.dataobj, dtype=np.float32), mask, coils=args.coils, arch=args.arch,
                         seed=args.seed, log=lambda line: print(f"{args.dwi.name}: {line}", file=sys.stderr))


def _denoising_model(args: argparse.Namespace):
    """``--model`` for `dwivae denoise`: read for the compiled forward pass alone (no torch import,
    ~2 s) where that is all the options need, else with its torch modules."""
    from dwivae.checkpoint import load_frozen, load_model, read_metadata

    needs_torch = (args.uncertainty or args.spatial is not None or args.nonlocal_ is not None
                   or (args.context and "context_config" in read_metadata(Path(args.model))))
    return (None if needs_torch else load_frozen(args.model)) or load_model(args.model)


def _named_models(paths: Sequence[Path]) -> dict[str, Path]:
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) != len(names):
        raise InputError(f"model directory names must be distinct, got {', '.join(names)}")
    return dict(zip(names, paths))


def cmd_figures(args: argparse.Namespace) -> None:
    from dwivae.gallery import save_figures

    listing = save_figures(args.out, outputs=args.denoised, models=_named_models(args.models),
                           benchmark=args.benchmark, fmt=args.format, slices=args.slices, seed=args.seed,
                           force=args.force)
    print(f"{len(json.loads(listing.read_text())['figures'])} figures -> {args.out}")


def cmd_report(args: argparse.Namespace) -> None:
    from dwivae.report import build_report

    peers = {p.name.removesuffix(".gz").removesuffix(".nii"): p for p in args.peers}
    if len(peers) != len(args.peers):
        raise InputError(f"--peers file names must be distinct, got {', '.join(p.name for p in args.peers)}")
    out = build_report(args.outputs, args.out, models=_named_models(args.models), benchmark=args.benchmark,
                       fmt=args.format, slices=args.slices, seed=args.seed, force=args.force, peers=peers)
    print(f"-> {out}")


def cmd_phantom(args: argparse.Namespace) -> None:
    from dwivae.phantom import make_phantom, make_realistic_phantom, write_phantom

    acq = _acquisition(args)
    if (args.out / "phantom.json").exists() and not args.force:
        raise InputError(f"{args.out} already holds a phantom; pass --force to overwrite it")
    make = make_realistic_phantom if args.tissue == "realistic" else make_phantom
    phantom = make(acq, shape=tuple(args.shape), snr=args.snr, noise=args.noise, coils=args.coils, seed=args.seed)
    settings = {"tissue": args.tissue, "snr": args.snr, "noise": args.noise, "coils": args.coils, "seed": args.seed,
                "command": shlex.join(["dwivae", *args.argv])}
    write_phantom(phantom, acq, args.out, settings=settings, force=args.force)
    print(f"phantom {'x'.join(map(str, args.shape))} for {acq.describe()}, {args.noise} noise, SNR {args.snr:g} "
          f"(sigma {phantom.sigma:g}) -> {args.out}")


def cmd_benchmark(args: argparse.Namespace) -> None:
    from dwivae.baselines import METHODS
    from dwivae.benchmark import format_markdown, run_benchmark, write_results
    from dwivae.checkpoint import load_model

    for name in ("results.json", "results.md"):
        _refuse_existing(args.out / name, args.force)
    models = [load_model(path) for path in args.models]
    variants = {name: load_model(path) for name, path in _named_models(args.variants).items()}
    clash = set(variants) & set(METHODS)
    if clash:
        raise InputError(f"variant directory names must differ from the methods' ({', '.join(sorted(clash))})")
    args.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["dwivae", *args.argv])

    def save(results: dict) -> None:  # after each phantom, so a long run keeps what it measured
        write_results({**results, "command": command}, args.out, force=True)

    results = run_benchmark(args.phantom, methods=args.methods, models=models, variants=variants,
                            threads=args.threads or default_threads(),
                            seed=args.seed, log=(lambda line: None) if args.quiet else print, fa_maps=args.out,
                            done=save, bias_correct=args.bias_correct, spatial=args.spatial, pooling=args.nonlocal_)
    results["command"] = command
    print(format_markdown(results))
    print(f"-> {args.out / 'results.json'}, {args.out / 'results.md'}")


def cmd_demo(args: argparse.Namespace) -> None:
    from dwivae.demo import run_demo

    run_demo(args.out, seed=args.seed, force=args.force)


EXAMPLES = {
    "simulate": "dwivae simulate --protocol seed32 --out sims/seed32",
    "train": "dwivae train --protocol seed32 --arch vae --out models/vae32\n"
             "  dwivae train --bvals dwi.bval --bvecs dwi.bvec --arch dae --seed 1 --out models/dae\n"
             "  dwivae train --bvals dwi.bval --bvecs dwi.bvec --atoms mixed --fresh-atoms --noise rician "
             "--snr-from dwi.nii.gz --context --out models/vae_context",
    "evaluate": "dwivae evaluate models/vae32 models/dae32 --out results/",
    "denoise": "dwivae denoise dwi.nii.gz --bvals dwi.bval --bvecs dwi.bvec --model models/vae32 --out dwi_vae.nii.gz\n"
               "  dwivae denoise sub-01_dwi.nii.gz --train --out sub-01_desc-denoised_dwi.nii.gz",
    "figures": "dwivae figures models/vae32 models/dae32 models/vae32_latent10 --out figures/\n"
               "  dwivae figures models/vae32 --denoised dwi_vae.nii.gz dwi_dae.nii.gz --slices 22 94 --out figures/",
    "report": "dwivae report dwi_vae.nii.gz dwi_dae.nii.gz --out report.html\n"
              "  dwivae report dwi_vae.nii.gz --models models/vae32_nokl --out report.html",
    "phantom": "dwivae phantom --protocol seed32 --shape 96 96 50 --snr 20 --noise rician --out phantoms/seed32_snr20\n"
               "  dwivae phantom --bvals dwi.bval --bvecs dwi.bvec --tissue realistic --noise nc-chi --coils 4 "
               "--out phantoms/realistic",
    "benchmark": "dwivae benchmark --phantom phantoms/seed32_snr20 --methods vae dae mppca dwidenoise --out bench/",
    "demo": "dwivae demo --out demo_out",
}


class _Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="dwivae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dwivae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           epilog=f"example:\n  {EXAMPLES[name]}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--force", action="store_true", help="overwrite existing outputs")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        return p

    p = command("simulate", "simulate clean tensor signals and noisy copies for a protocol")
    _protocol_args(p)
    p.add_argument("--atoms", choices=("grid", "random", "sticks", "mixed"), default="grid",
                   help="the study's tensor grid, random physiological tensors, random ball-and-sticks "
                        "(1-3 sticks) or half tensors, half sticks (default: grid)")
    p.add_argument("--n-atoms", type=COUNT, default=500_000, help="number of random atoms")
    p.add_argument("--sigma", type=_number(float, 0.0), nargs="+", help="noise standard deviations (default: the study's 31)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(run=cmd_simulate)

    p = command("train", "train a VAE or DAE on simulated signals for a protocol")
    _protocol_args(p)
    p.add_argument("--arch", choices=("vae", "dae"), default="vae")
    p.add_argument("--latent", type=COUNT, default=7, help="latent size (default 7)")
    p.add_argument("--hidden", type=COUNT, nargs="+", metavar="WIDTH",
                   help="encoder hidden widths (default: the study's, narrowing evenly to the latent, e.g. 26 20 13)")
    p.add_argument("--preset", choices=("default", "study"), default="default",
                   help="default: fresh noise on fewer samples; study: all atoms x 31 levels")
    p.add_argument("--epochs", type=COUNT)
    p.add_argument("--beta-max", type=_number(float, 0.0), help="maximum KL weight (0: no KL term)")
    p.add_argument("--loss", choices=("huber", "mse", "l1"))
    p.add_argument("--lr", type=POSITIVE, help="Adam learning rate")
    p.add_argument("--batch-size", type=COUNT)
    p.add_argument("--atoms", choices=("grid", "random", "sticks", "mixed"),
                   help="clean signals: the study's tensor grid (default), random tensors, ball-and-sticks or both")
    p.add_argument("--noise", choices=("gaussian", "rician", "nc-chi"),
                   help="training noise (default gaussian, clipped at 0, as the study)")
    p.add_argument("--coils", type=COUNT, help="receiver channels of nc-chi noise")
    p.add_argument("--snr-range", type=POSITIVE, nargs=2, metavar=("LOW", "HIGH"),
                   help="draw each sample's SNR (S0 / sigma) log-uniformly from this range instead of "
                        "the study's 31 noise levels")
    p.add_argument("--snr-from", type=Path, metavar="DWI",
                   help="measure the SNR range on this series of the protocol (sigma from the spread of its "
                        "b0 volumes, or with one b0 from DIPY's MP-PCA noise map)")
    p.add_argument("--mask", default="auto", help="mask for --snr-from: a NIfTI file or 'auto' (median_otsu)")
    p.add_argument("--fresh-atoms", action="store_true",
                   help="online simulation: new random clean signals every batch (random, sticks or mixed atoms)")
    p.add_argument("--free-water", type=_number(float, 0.0, high=1.0), metavar="FRACTION",
                   help="make this fraction of the random tensors isotropic, up to free water (3.5e-3 mm²/s); "
                        "random or mixed atoms")
    p.add_argument("--normalise", choices=("s0", "b0"),
                   help="divide each training sample by the true S0 (s0, the study's default) or, as denoising "
                        "real data does, by the mean of its own noisy b0 volumes (b0)")
    p.add_argument("--context", action="store_true",
                   help="then train a network that combines the latent codes of each voxel's 3x3x3 "
                        "neighbourhood, on simulated neighbourhoods with tissue boundaries; "
                        "`dwivae denoise` uses it")
    p.add_argument("--context-steps", type=COUNT, default=3000, metavar="N",
                   help="training steps of the context network (default 3000, 1024 neighbourhoods each)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="fixes simulation, split and initialisation")
    p.add_argument("--out", type=Path, required=True, help="model directory to create")
    p.set_defaults(run=cmd_train)

    p = command("evaluate", "score models on the held-out simulated split (the study's Table 2)")
    p.add_argument("models", type=Path, nargs="+", help="model directories")
    p.add_argument("--out", type=Path, required=True, help="directory for metrics.json")
    p.set_defaults(run=cmd_evaluate)

    p = command("denoise", "denoise a 4D diffusion NIfTI with a trained model")
    p.add_argument("dwi", type=Path, help="4D NIfTI (.nii or .nii.gz)")
    p.add_argument("--bvals", type=Path, help="FSL .bval (default: the BIDS file next to the image)")
    p.add_argument("--bvecs", type=Path, help="FSL .bvec (default: the BIDS file next to the image)")
    p.add_argument("--model", type=Path,
                   help="model directory from `dwivae train` (default: train one for the data's protocol and noise, "
                        "or reuse the cached one, and estimate each voxel from its group of like codes, --nonlocal)")
    p.add_argument("--train", action="store_true",
                   help="train a model for the data's protocol and noise when --model does not match, as the "
                        "command does without --model (seeded, cached in ~/.cache/dwivae/models or $DWIVAE_CACHE)")
    p.add_argument("--arch", choices=("vae", "dae"), default="vae", help="architecture for --train")
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
    p.add_argument("--sigma", type=POSITIVE, help="noise standard deviation per channel, for --nonlocal, --bias-correct "
                   "and --spatial (scanner units; default: the Marchenko-Pastur estimate of MP-PCA in the mask)")
    p.add_argument("--coils", type=COUNT, default=1,
                   help="receive coils combined by root sum of squares, for the plain command, --nonlocal, "
                        "--bias-correct and --spatial (1: Rician)")
    p.add_argument("--uncertainty", type=_number(int, 0), default=0, metavar="K",
                   help="write _uncertainty: the standard deviation over K posterior samples (VAE only)")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="threads of the forward pass (default: every CPU this process may use)")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="seed for --train and --uncertainty")
    p.set_defaults(run=cmd_denoise)

    def figure_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--format", choices=("png", "svg"), default="png", help="figure format (default png)")
        p.add_argument("--slices", type=int, nargs=2, metavar=("FIRST", "LAST"),
                       help="axial slice range of the residual histograms (default: all)")
        p.add_argument("--seed", type=_number(int, 0), default=0, help="fixes the simulated examples")
        p.add_argument("--benchmark", type=Path, help="output directory of `dwivae benchmark` to draw")

    p = command("figures", "draw the study's figures for models and denoised outputs")
    p.add_argument("models", type=Path, nargs="*", help="model directories (loss curves, reconstructions, latents)")
    p.add_argument("--denoised", type=Path, nargs="+", default=[],
                   help="outputs of `dwivae denoise` for one input (in-vivo images, residuals, FA)")
    p.add_argument("--out", type=Path, required=True, help="directory for the figures and figures.json")
    figure_args(p)
    p.set_defaults(run=cmd_figures)

    p = command("report", "write a self-contained HTML report of denoised outputs")
    p.add_argument("outputs", type=Path, nargs="+", help="outputs of `dwivae denoise` for one input")
    p.add_argument("--models", type=Path, nargs="+", default=[],
                   help="more model directories to show (e.g. latent 10, trained without KL)")
    p.add_argument("--peers", type=Path, nargs="+", default=[],
                   help="other denoisers' outputs of the same input (e.g. dwidenoise's), shown beside ours, "
                        "named by file name")
    p.add_argument("--out", type=Path, required=True, help="the .html file to write")
    figure_args(p)
    p.set_defaults(run=cmd_report)

    p = command("phantom", "simulate a brain-like phantom with ground truth (tensors, fibres, tissue labels)")
    _protocol_args(p)
    p.add_argument("--tissue", choices=("simple", "realistic"), default="simple",
                   help="simple: one tensor per tissue, piecewise constant; realistic: multi-compartment tissue "
                        "(dispersed sticks, zeppelin, free water; two-pool grey matter; CSF), parameters drawn per "
                        "voxel, partial volume at every boundary, fibres crossing at 90 and 60 degrees")
    p.add_argument("--shape", type=COUNT, nargs=3, default=[96, 96, 50], metavar=("X", "Y", "Z"))
    p.add_argument("--snr", type=POSITIVE, default=20.0, help="S0 / sigma in white matter (default 20)")
    p.add_argument("--noise", choices=("gaussian", "rician", "nc-chi"), default="rician")
    p.add_argument("--coils", type=COUNT, default=1, help="receiver channels of nc-chi noise")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="fixes the noise")
    p.add_argument("--out", type=Path, required=True, help="phantom directory")
    p.set_defaults(run=cmd_phantom)

    from dwivae.baselines import METHODS
    p = command("benchmark", "score denoisers on phantoms against the ground truth (FA, MD, direction, RMSE)")
    p.add_argument("--phantom", type=Path, nargs="+", required=True, help="phantom directories")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                   help="methods to run (default: all; noisy is always scored)")
    p.add_argument("--models", type=Path, nargs="+", default=[],
                   help="model directories for vae/dae (default: the cached model of each protocol, "
                        "trained first if missing)")
    p.add_argument("--variants", type=Path, nargs="+", default=[],
                   help="more model directories, each scored as a method named after its directory")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="threads for dwidenoise (default: every CPU this process may use)")
    p.add_argument("--spatial", type=POSITIVE, nargs="?", const=2.0, metavar="STRENGTH",
                   help="also score each network with latent means averaged over the neighbourhood "
                        "(`denoise --spatial`), as METHOD+spatial")
    p.add_argument("--nonlocal", dest="nonlocal_", type=GROUP, nargs="?", const=DEFAULT_GROUP, metavar="GROUP",
                   help="also score each network with the grouped low-rank estimate (`denoise --nonlocal`), "
                        "as METHOD+nonlocal")
    p.add_argument("--bias-correct", action="store_true",
                   help="on Rician / noncentral-chi phantoms, also score each output with the noise floor "
                        "removed (the phantom's sigma), as METHOD+bc")
    p.add_argument("--seed", type=_number(int, 0), default=0, help="seed of models trained here")
    p.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, FA maps")
    p.set_defaults(run=cmd_benchmark)

    p = command("demo", "train a VAE and a DAE for DIPY's in-vivo sample, denoise it with both, draw it")
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="output directory (default: demo_out)")
    p.add_argument("--seed", type=_number(int, 0), default=0)
    p.set_defaults(run=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version or a usage error, already printed
        return int(stop.code or 0)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        with warnings.catch_warnings():  # numpy's and torch's warnings are not for the user: errors say it all
            warnings.simplefilter("ignore")
            logging.getLogger("nibabel").setLevel(logging.CRITICAL)  # header repairs it logs as it reads
            args.run(args)
    except (InputError, OSError) as err:
        print(f"dwivae {args.command}: error: {err}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"dwivae {args.command}: error: not enough memory for this input: check its header's dimensions, "
              "or run on a machine with more memory", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dwivae {args.command}: interrupted; nothing of this run was kept", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
