"""The main job on real data that ships with DIPY: train, denoise, compare, with no download."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae.acquisition import load_acquisition
from dwivae.checkpoint import save_model
from dwivae.denoise import denoise_file
from dwivae.errors import InputError
from dwivae.figures import in_vivo_comparison
from dwivae.report import build_report
from dwivae.training import train

SAMPLE = "small_64D"
"""DIPY's bundled in-vivo sample: 10 x 10 x 10 voxels, 1 b0 + 64 directions at b=1000."""


def run_demo(
    out: str | PathLike[str], *, seed: int = 0, force: bool = False, log=print
) -> dict[str, Path]:
    """Train a VAE and a DAE for DIPY's ``small_64D`` protocol, denoise it with both, draw the result.

    Parameters
    ----------
    out : path
        Output directory: ``models/vae``, ``models/dae``, ``dwi_vae.nii.gz``, ``dwi_dae.nii.gz``
        (with residuals and sidecars), ``comparison.png`` and ``report.html``.
    seed : int
    force : bool
        Overwrite the outputs of an earlier run.
    log : callable
        Receives one line per step.

    Returns
    -------
    dict of str to Path
    """
    from dipy.data import get_fnames

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise InputError(f"{out} exists and is not empty; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    dwi, bval, bvec = (Path(p) for p in get_fnames(name=SAMPLE))
    acq = load_acquisition(bval, bvec)
    log(f"data: DIPY {SAMPLE} ({acq.describe()})")
    paths: dict[str, Path] = {}
    for arch in ("vae", "dae"):
        model = train(acq, arch=arch, seed=seed)
        paths[f"model_{arch}"] = save_model(model, out / "models" / arch, force=True)
        s = model.summary
        log(f"trained {arch}: test MSE {s['test_mse']:.4g} in {s['wall_seconds']:.1f} s")
        # The sample is a 10-voxel crop inside the brain: every voxel is tissue, so no mask.
        written, stats = denoise_file(dwi, acq, model, out / f"dwi_{arch}.nii.gz", mask=None, force=True,
                                      provenance={"Command": f"dwivae demo (seed {seed})",
                                                  "Model": {"path": str(paths[f"model_{arch}"].resolve())},
                                                  "GradientFiles": {"bval": str(bval), "bvec": str(bvec)}})
        paths[arch] = written["denoised"]
        log(f"{arch}: {stats.line()}")
    noisy = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    denoised = {a.upper(): np.asarray(nib.load(paths[a]).dataobj) for a in ("vae", "dae")}
    volume = int(np.flatnonzero(~acq.b0_mask)[0])
    paths["figure"] = in_vivo_comparison(noisy, denoised, out / "comparison.png", volume=volume,
                                         bvalue=float(acq.bvals[volume]))
    log(f"figure: {paths['figure']}")
    paths["report"] = build_report([paths["vae"], paths["dae"]], out / "report.html", seed=seed, force=True)
    log(f"report: {paths['report']}")
    return paths

