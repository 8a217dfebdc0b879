"""The ``dwivae`` command line: each subcommand parses, makes one library call and saves.

One module per subcommand (``dwivae.cli.<name>``: its ``HELP``, ``EXAMPLE``, ``add_arguments`` and
``run``); :mod:`dwivae.cli.common` holds what they share.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from dwivae._version import __version__
from dwivae.cli import benchmark, bids, demo, denoise, evaluate, figures, phantom, report, simulate, train
from dwivae.cli.common import Parser
from dwivae.errors import InputError

COMMANDS = {module.__name__.rsplit(".", 1)[1]: module for module in
            (simulate, train, evaluate, denoise, figures, report, phantom, benchmark, demo, bids)}
"""The subcommands, in the order ``dwivae --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = Parser(prog="dwivae", description="Denoise diffusion-weighted MRI with an autoencoder trained on "
                    "simulated diffusion signals, and compare it with the peers.")
    parser.add_argument("--version", action="version", version=f"dwivae {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, epilog=f"example:\n  {module.EXAMPLE}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--force", action="store_true", help="overwrite existing outputs")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (2 for bad input, or what the subcommand returns)."""
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
            code = args.run(args)
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
    return int(code or 0)
