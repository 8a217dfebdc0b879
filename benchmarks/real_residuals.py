"""On real data, what each denoiser takes away: residual RMS over the noise level, and the shift of FA/MD.

Without a ground truth, a denoiser that removes noise and nothing else leaves a residual (input
minus output) of about the noise level sigma in the diffusion-weighted volumes, with no mean and
no anatomy; a residual RMS above sigma, or a mean far from 0, means that signal went with the
noise. sigma is measured from the spread of the b0 volumes (`dwivae.physics.noise.estimate_sigma`). Also
prints the mean FA and MD (DIPY WLS) in the mask before and after.

Runs on MRtrix3's multi-shell in-vivo crop (`../shared/data/mrtrix_msmt_dwi`, 15 x 15 x 11 x
102, 6 b0): DIPY MP-PCA, MRtrix3 dwidenoise (when installed), the default VAE for the protocol,
a data-matched VAE (`--atoms mixed --fresh-atoms --noise rician --snr-from` the same series),
that VAE with `--spatial`, and with a learned context network (`train --context`).

Usage: ``python benchmarks/real_residuals.py [--out benchmarks/results/real_residuals.json]``
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae.apply.denoise import denoise
from dwivae.compare.baselines import run_method
from dwivae.compare.benchmark import dti_fit
from dwivae.learn.cache import load_or_train
from dwivae.learn.context import train_context
from dwivae.learn.training import PRESETS, train
from dwivae.physics.acquisition import load_acquisition
from dwivae.physics.noise import estimate_sigma, snr_range

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mrtrix_msmt_dwi"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/real_residuals.json"))
    args = parser.parse_args()
    img = nib.load(f"{SAMPLE}.nii.gz")
    data = np.asarray(img.dataobj, dtype=np.float32)
    acq = load_acquisition(f"{SAMPLE}.bval", f"{SAMPLE}.bvec")
    s0 = data[..., acq.b0_mask].mean(axis=-1)
    mask = s0 > 0.25 * np.percentile(s0, 95)  # the crop is all brain; leave out dark edge voxels
    sigma = estimate_sigma(data, acq, mask)
    _, snr = snr_range(data, acq, mask)
    matched = train(acq, arch="vae", seed=0, config=replace(PRESETS["default"], atoms="mixed", fresh_atoms=True,
                                                           noise="rician", snr_range=snr))
    outputs = {"noisy": data}
    for name in ("mppca", "dwidenoise"):
        result = run_method(name, data, acq, mask=mask)
        if result.status == "ok":
            outputs[name] = result.denoised
        else:
            print(f"{name}: {result.status} ({result.note})")
    outputs["vae (default)"] = denoise(data, acq, load_or_train(acq, arch="vae", seed=0)[0], mask=mask)
    outputs["vae matched"] = denoise(data, acq, matched, mask=mask)
    outputs["vae matched + spatial"] = denoise(data, acq, matched, mask=mask, spatial=2.0)
    outputs["vae matched + context"] = denoise(data, acq, train_context(matched), mask=mask)
    dw = ~acq.b0_mask
    results = {"sample": SAMPLE.name, "voxels": int(mask.sum()), "sigma_b0": sigma, "methods": {}}
    print(f"{SAMPLE.name}: {int(mask.sum())} voxels, sigma {sigma:.2f} (b0 spread), training SNR {snr[0]:.3g}-{snr[1]:.3g}")
    print(f"{'method':<24} {'residual RMS / sigma':>21} {'residual mean / sigma':>22} {'mean FA':>8} {'mean MD':>9}")
    for name, out in outputs.items():
        residual = (data - out)[mask][:, dw]
        fit = dti_fit(out, acq, mask)
        row = {"residual_rms_over_sigma": float(np.sqrt(np.mean(residual ** 2)) / sigma),
               "residual_mean_over_sigma": float(residual.mean() / sigma),
               "mean_fa": float(fit["fa"].mean()), "mean_md": float(np.mean(fit["md"]))}
        results["methods"][name] = row
        print(f"{name:<24} {row['residual_rms_over_sigma']:21.3f} {row['residual_mean_over_sigma']:22.3f} "
              f"{row['mean_fa']:8.3f} {row['mean_md']:9.3e}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
