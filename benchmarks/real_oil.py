"""Real scans outside the training distribution: the oil phantom of ../shared/data/dib2019.

Oil barely diffuses (b=2000 signal ~0.99 of b0). One acquisition (pt1, 22 volumes) is denoised by
each method; the b=2000 / b0 signal ratio and the mean MD in the sample are compared with the
reference from all four acquisitions together (86 volumes). A denoiser that invents diffusion
moves both. Usage: python benchmarks/real_oil.py [OUT.json]; prints a Markdown table.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae.apply.mask import auto_mask
from dwivae.compare.baselines import run_method
from dwivae.compare.benchmark import dti_fit
from dwivae.physics.acquisition import Acquisition, load_acquisition

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dib2019"
PARTS = ("oil_lte_pt1_14", "oil_lte_pt2_16", "oil_lte_pt3_18", "oil_lte_pt4_20")


def _read(name: str) -> tuple[np.ndarray, Acquisition]:
    return (np.asarray(nib.load(DATA / f"{name}.nii.gz").dataobj, dtype=np.float32),
            load_acquisition(DATA / f"{name}.bval", DATA / f"{name}.bvec"))


def _ratio(data: np.ndarray, acq: Acquisition, mask: np.ndarray) -> float:
    high = np.abs(acq.bvals - 2000) < 100
    return float(data[mask][:, high].mean() / data[mask][:, acq.b0_mask].mean())


def _dwivae(name: str, extra: list[str], tmp: Path) -> tuple[np.ndarray, float]:
    out = tmp / f"{len(list(tmp.iterdir()))}.nii"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dwivae.cli", "denoise", str(DATA / f"{name}.nii.gz"),
                    "--bvals", str(DATA / f"{name}.bval"), "--bvecs", str(DATA / f"{name}.bvec"),
                    "--out", str(out), "--quiet", *extra], check=True, capture_output=True)
    return np.asarray(nib.load(out).dataobj, dtype=np.float32), time.perf_counter() - started


def main() -> None:
    data, acq = _read(PARTS[0])
    img = nib.load(DATA / f"{PARTS[0]}.nii.gz")
    mask = auto_mask(img, acq)
    parts = [_read(p) for p in PARTS]
    together = np.concatenate([d for d, _ in parts], axis=-1)
    joint = Acquisition(np.concatenate([a.bvals for _, a in parts]), np.concatenate([a.bvecs for _, a in parts]))
    reference = {"ratio": _ratio(together, joint, mask), "md": float(dti_fit(together, joint, mask)["md"].mean())}
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:  # the plain command: trained for the data, then pooled
        outputs = {name: (result.denoised, result.seconds) for name in ("noisy", "mppca", "dwidenoise")
                   if (result := run_method(name, data, acq, mask=mask, threads=2)).status == "ok"}
        outputs["dwivae"] = _dwivae(PARTS[0], [], Path(tmp))
        for name, (out, seconds) in outputs.items():
            ratio, md = _ratio(out, acq, mask), float(dti_fit(out, acq, mask)["md"].mean())
            rows[name] = {"ratio_b2000_b0": ratio, "ratio_error": ratio / reference["ratio"] - 1,
                          "md": md, "md_error": md / reference["md"] - 1, "seconds": seconds}
    print(f"reference (4 acquisitions, {together.shape[-1]} volumes): b2000/b0 {reference['ratio']:.4f}, "
          f"MD {reference['md'] * 1e6:.1f}e-6 mm²/s; {int(mask.sum())} voxels")
    print("| method | b2000/b0 | vs reference | MD (1e-6 mm²/s) | vs reference | seconds |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['ratio_b2000_b0']:.4f} | {r['ratio_error']:+.1%} | {r['md'] * 1e6:.1f} | "
              f"{r['md_error']:+.1%} | {r['seconds']:.1f} |")
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(json.dumps({"reference": reference, "methods": rows}, indent=2))


if __name__ == "__main__":
    main()
