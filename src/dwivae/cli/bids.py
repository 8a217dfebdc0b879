"""`dwivae bids`: denoise a whole BIDS dataset (a BIDS App: participant, then group)."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dwivae.cli.common import COUNT, number
from dwivae.errors import InputError
from dwivae.learn.config import PRESETS

HELP = ("denoise every *_dwi.nii[.gz] of a BIDS dataset into a BIDS derivative, on Dask (one model per protocol; "
        "rerun skips what is done), and write a QC page over the participants")
EXAMPLE = ("dwivae bids /data/study /data/study/derivatives/dwivae participant --participant-label 01 02\n"
           "  dwivae bids /data/study /data/study/derivatives/dwivae participant --scheduler tcp://head:8786\n"
           "  dwivae bids /data/study /data/study/derivatives/dwivae group")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of `dwivae bids`."""
    p.add_argument("bids_dir", type=Path, help="root of the BIDS dataset (with dataset_description.json)")
    p.add_argument("output_dir", type=Path, help="the derivative folder to write (e.g. BIDS_DIR/derivatives/dwivae)")
    p.add_argument("analysis_level", choices=("participant", "group"),
                   help="participant: denoise the scans; group: one HTML page over what participant wrote")
    p.add_argument("--participant-label", nargs="+", metavar="LABEL",
                   help="participants to denoise (01 or sub-01; default: all)")
    p.add_argument("--session", nargs="+", metavar="LABEL", help="sessions to denoise (1 or ses-1; default: all)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler to submit to (tcp://host:8786; default: a LocalCluster here)")
    p.add_argument("--workers", type=COUNT, help="worker processes of the LocalCluster (default: one per CPU)")
    p.add_argument("--coils", type=COUNT, default=1, help="receive coils of the magnitudes (1: Rician)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="training preset of the models")
    p.add_argument("--seed", type=number(int, 0), default=0, help="seed of the models' training and the grouping")


def run(args: argparse.Namespace) -> int:
    """Run `dwivae bids` with the parsed ``args``; 1 if a scan failed."""
    if args.analysis_level == "group":
        from dwivae.bids.group import write_group_page

        print(f"-> {write_group_page(args.output_dir, force=args.force)}")
        return 0
    try:
        import bids  # noqa: F401
        import distributed  # noqa: F401
    except ImportError as err:
        raise InputError(f"dwivae bids needs pybids and Dask distributed ({err.name} is not installed): "
                         "pip install 'dwivae[bids]'") from None
    from dwivae.bids.participant import run_participant

    summary = run_participant(args.bids_dir, args.output_dir, participants=args.participant_label,
                              sessions=args.session, scheduler=args.scheduler, workers=args.workers, force=args.force,
                              coils=args.coils, seed=args.seed, preset=args.preset,
                              command=shlex.join(["dwivae", *args.argv]),
                              log=(lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr)))
    print(summary.line())
    if summary.failed:
        print(f"{len(summary.failed)} failed: see {args.output_dir / 'logs'}", file=sys.stderr)
    return 1 if summary.failed else 0
