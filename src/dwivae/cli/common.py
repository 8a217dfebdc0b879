"""What the subcommands share: argument types, the protocol arguments, output checks."""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from dwivae.apply.grouping import MIN_GROUP
from dwivae.errors import InputError


def number(kind: type, low: float, *, above: bool = False, high: float | None = None):
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



COUNT = number(int, 1)

POSITIVE = number(float, 0.0, above=True)

GROUP = number(int, MIN_GROUP)



def protocol_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protocol (a built-in name, or FSL gradient files)")
    group.add_argument("--protocol", help="built-in protocol name (seed32: 2 x b=50 + 30 directions at b=1000)")
    group.add_argument("--bvals", type=Path, help="FSL .bval file")
    group.add_argument("--bvecs", type=Path, help="FSL .bvec file (3 x N or N x 3)")



def acquisition(args: argparse.Namespace):
    from dwivae.physics.acquisition import builtin_protocol, load_acquisition
    if args.protocol and (args.bvals or args.bvecs):
        raise InputError("give either --protocol or --bvals/--bvecs, not both")
    if args.protocol:
        return builtin_protocol(args.protocol)
    if not (args.bvals and args.bvecs):
        raise InputError("no protocol: pass --protocol seed32, or both --bvals and --bvecs")
    return load_acquisition(args.bvals, args.bvecs)



def refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")



def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)



def named_models(paths: Sequence[Path]) -> dict[str, Path]:
    names = [Path(p).resolve().name for p in paths]
    if len(set(names)) != len(names):
        raise InputError(f"model directory names must be distinct, got {', '.join(names)}")
    return dict(zip(names, paths))



def figure_args(p: argparse.ArgumentParser) -> None:
    """The arguments of `figures` and `report` that choose what is drawn."""
    p.add_argument("--format", choices=("png", "svg"), default="png", help="figure format (default png)")
    p.add_argument("--slices", type=int, nargs=2, metavar=("FIRST", "LAST"),
                   help="axial slice range of the residual histograms (default: all)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="fixes the simulated examples")
    p.add_argument("--benchmark", type=Path, help="output directory of `dwivae benchmark` to draw")


class Parser(argparse.ArgumentParser):
    """An argument parser that reports a usage error in one line, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
