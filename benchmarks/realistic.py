"""The plain `dwivae denoise` against DIPY mppca, MRtrix3 dwidenoise and DIPY Patch2Self on realistic phantoms.

Each phantom directory (``dwivae phantom --tissue realistic``) is denoised by every method in the
same run, all in the phantom's head mask: ours as a user runs it (``dwivae denoise dwi.nii.gz
--mask labels.nii.gz --out ...``, ``--coils`` for noncentral-chi phantoms, model trained or taken
from the cache), and the peers. Scored against the clean series (FA, MD, RMSE, and MK on multi-shell protocols), over all
tissue and per tissue; ``worse than noisy`` lists every tissue and metric where a method ends
worse than the noisy input. Peer outputs are cached in CACHE (DIPY's mppca takes minutes).

Usage: python benchmarks/realistic.py CACHE PHANTOM [PHANTOM ...] [--json OUT.json] [--peers NAME ...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae.compare.baselines import run_method
from dwivae.compare.benchmark import dti_fit, has_kurtosis, load_phantom, mean_kurtosis, score

METRICS = ("rmse", "fa_mae", "md_mae", "mk_mae")
PEERS = ("mppca", "dwidenoise", "patch2self")


def _plain_dwivae(phantom: Path, coils: int, tmp: Path) -> tuple[np.ndarray, float]:
    out = tmp / f"{phantom.name}.nii.gz"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dwivae.cli", "denoise", str(phantom / "dwi.nii.gz"), "--out", str(out),
                    "--mask", str(phantom / "labels.nii.gz"), "--quiet", "--force",
                    *(["--coils", str(coils)] if coils > 1 else [])],
                   check=True, capture_output=True)
    return np.asarray(nib.load(out).dataobj, dtype=np.float32), time.perf_counter() - started


def _peer(name: str, phantom: dict, cache: Path) -> tuple[np.ndarray, float]:
    path = cache / f"{phantom['name']}_{name}.npy"
    if path.exists():
        return np.load(path), float("nan")
    result = run_method(name, phantom["noisy"], phantom["acq"], mask=phantom["labels"] > 0, threads=2)
    if result.status != "ok":
        raise RuntimeError(f"{name} on {phantom['name']}: {result.status}, {result.note}")
    np.save(path, result.denoised)
    return result.denoised, result.seconds


def benchmark(path: Path, cache: Path, tmp: Path, peers: tuple[str, ...] = PEERS) -> dict:
    """Scores of noisy, the ``peers`` and the plain dwivae on one phantom directory."""
    phantom = load_phantom(path)
    acq, labels = phantom["acq"], phantom["labels"]
    mask = labels > 0
    reference = dti_fit(phantom["clean"], acq, mask)
    if has_kurtosis(acq):
        reference["mk"] = mean_kurtosis(phantom["clean"], acq, mask)
    outputs = {"noisy": (phantom["noisy"], 0.0)}
    for name in peers:
        outputs[name] = _peer(name, phantom, cache)
    outputs["dwivae"] = _plain_dwivae(path, int(phantom["info"].get("coils") or 1), tmp)
    scores = {name: score(out, phantom["clean"], labels, reference, acq) | {"seconds": seconds}
              for name, (out, seconds) in outputs.items()}
    for name, s in scores.items():
        s["worse_than_noisy"] = [f"{metric} {tissue}" for metric in METRICS if metric in s
                                 for tissue, value in s[metric].items()
                                 if value > scores["noisy"][metric][tissue] + 1e-12]
    return scores


def markdown(name: str, scores: dict) -> str:
    """One table: a row per method, all tissue, and where it is worse than the noisy input."""
    kurtosis = "mk_mae" in scores["noisy"]
    head = ("| method | RMSE | FA error | MD error (1e-6 mm²/s) | CSF MD bias | WM FA error | WM angle (deg) | "
            + ("MK error | " if kurtosis else "") + "seconds | worse than noisy |")
    lines = [f"**{name}**", "", head, "|" + "---|" * (head.count("|") - 1)]
    for method, s in scores.items():
        lines.append(f"| {method} | {s['rmse']['all']:.2f} | {s['fa_mae']['all']:.4f} | {s['md_mae']['all'] * 1e6:.1f} | "
                     f"{s['md_bias']['CSF'] * 1e6:+.1f} | {s['fa_mae']['WM']:.4f} | {s['angle_wm_deg']:.2f} | "
                     + (f"{s['mk_mae']['all']:.3f} | " if kurtosis else "")
                     + f"{s['seconds']:.1f} | {', '.join(s['worse_than_noisy']) or 'none'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache", type=Path)
    parser.add_argument("phantoms", type=Path, nargs="+")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--peers", nargs="*", choices=PEERS, default=list(PEERS),
                        help="peers to run (default: all; DIPY's mppca takes minutes per phantom)")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.phantoms:
            results[path.name] = benchmark(path, args.cache, Path(tmp), tuple(args.peers))
            print(markdown(path.name, results[path.name]) + "\n", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
