"""A whole dataset: `dwivae bids ... participant` on 1 and 2 Dask workers against a plain loop of
`dwivae denoise` calls, in the same run.

Eight scans of 96 x 96 x 60 x 32 (the seed32 protocol, simulated tensors in an ellipsoidal head,
Rician noise, as ``bench_denoise.py`` makes them; each its own noise) form a BIDS dataset of 4
subjects x 2 sessions. Each way starts with no model: the loop's first call trains the model and
the others take it from the cache; `dwivae bids` trains one for the protocol into its output
folder. `dwivae bids` also writes every scan's QC record (two tensor fits and a figure), which the
loop does not. Wall times are measured from outside, one run each.

Usage: ``python benchmarks/bench_bids.py [--scans 8] [--out benchmarks/results/bids.json]``
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_denoise import make_volume

from dwivae.physics.acquisition import save_acquisition, seed32


def make_dataset(root: Path, scans: int) -> list[Path]:
    """``scans`` series of the seed32 protocol under BIDS names; their paths."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "bench", "BIDSVersion": "1.9.0"}))
    paths = []
    for k in range(scans):
        subject, session = f"{k // 2 + 1:02d}", f"{k % 2 + 1}"
        folder = root / f"sub-{subject}" / f"ses-{session}" / "dwi"
        folder.mkdir(parents=True)
        stem = folder / f"sub-{subject}_ses-{session}_dwi"
        make_volume((96, 96, 60), Path(f"{stem}.nii.gz"), seed=k)
        save_acquisition(seed32(), Path(f"{stem}.bval"), Path(f"{stem}.bvec"))
        paths.append(Path(f"{stem}.nii.gz"))
    return paths


def timed(cmd: list[str], env: dict) -> float:
    """Wall seconds of a command, which must succeed."""
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed: {done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scans", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bids.json"))
    args = parser.parse_args()
    dwivae = [sys.executable, "-m", "dwivae.cli"]
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "scans": args.scans, "shape": "96x96x60x32",
                     "seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        scans = make_dataset(tmp / "data", args.scans)
        env = dict(os.environ, DWIVAE_CACHE=str(tmp / "cache"))
        started = time.perf_counter()
        for scan in scans:
            out = tmp / "loop" / scan.name.replace("_dwi.nii.gz", "_desc-denoised_dwi.nii.gz")
            out.parent.mkdir(exist_ok=True)
            timed([*dwivae, "denoise", str(scan), "--out", str(out), "--quiet"], env)
        results["seconds"]["loop of dwivae denoise"] = time.perf_counter() - started
        for workers in (1, 2):
            results["seconds"][f"dwivae bids, {workers} worker{'s' * (workers > 1)}"] = timed(
                [*dwivae, "bids", str(tmp / "data"), str(tmp / f"bids{workers}"), "participant", "--workers",
                 str(workers)], env)
    loop = results["seconds"]["loop of dwivae denoise"]
    results["speedup_vs_loop"] = {name: loop / seconds for name, seconds in results["seconds"].items()}
    for name, seconds in results["seconds"].items():
        print(f"{name:<26} {seconds:7.1f} s  {seconds / args.scans:5.1f} s/scan  "
              f"{loop / seconds:4.2f}x the loop's speed")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
