"""`dwivae benchmark`: score denoisers on phantoms against the ground truth (FA, MD, direction, RMSE)."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from dwivae.apply.grouping import DEFAULT_GROUP
from dwivae.cli.common import COUNT, GROUP, POSITIVE, named_models, number, refuse_existing
from dwivae.errors import InputError
from dwivae.kernels.bindings import default_threads

HELP = "score denoisers on phantoms against the ground truth (FA, MD, direction, RMSE)"
EXAMPLE = "dwivae benchmark --phantom phantoms/seed32_snr20 --methods vae dae mppca dwidenoise --out bench/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae benchmark`."""
    from dwivae.compare.baselines import METHODS

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
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of models trained here")
    p.add_argument("--out", type=Path, required=True, help="directory for results.json, results.md, FA maps")


def run(args: argparse.Namespace) -> None:
    """Run `dwivae benchmark` with the parsed ``args``."""
    from dwivae.compare.baselines import METHODS
    from dwivae.compare.benchmark import format_markdown, run_benchmark, write_results
    from dwivae.learn.checkpoint import load_model

    for name in ("results.json", "results.md"):
        refuse_existing(args.out / name, args.force)
    models = [load_model(path) for path in args.models]
    variants = {name: load_model(path) for name, path in named_models(args.variants).items()}
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
