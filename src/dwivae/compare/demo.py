"""The main job, shown to a newcomer: the plain denoise on a phantom with its truth and on a real scan.

1. A realistic phantom (multi-compartment tissue with partial volume and crossing fibres, DIPY's
   64-direction protocol, Rician noise at SNR 20) denoised by the plain ``dwivae denoise``, DIPY's
   mppca and MRtrix3's dwidenoise (when installed), scored against its truth by the benchmark.
2. DIPY's real in-vivo sample ``small_64D`` denoised the same way, the peers' outputs beside it.
3. One HTML report of both, with no download.
"""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from dwivae import io
from dwivae.apply.denoise_file import denoise_file
from dwivae.apply.grouping import DEFAULT_GROUP
from dwivae.apply.plain import matched_model
from dwivae.compare.baselines import run_method
from dwivae.compare.benchmark import run_benchmark, write_results
from dwivae.errors import InputError
from dwivae.physics.acquisition import load_acquisition
from dwivae.physics.phantom import make_realistic_phantom, write_phantom
from dwivae.show.report import build_report

SAMPLE = "small_64D"
"""DIPY's bundled in-vivo sample: 10 x 10 x 10 voxels, 1 b0 + 64 directions at b=1000."""
PHANTOM_SHAPE = (28, 28, 12)
"""Voxels of the demo's phantom: small enough for DIPY's mppca to take seconds, not minutes."""
PEERS = ("mppca", "dwidenoise")


def run_demo(out: str | PathLike[str], *, seed: int = 0, force: bool = False, log=print) -> dict[str, Path]:
    """Denoise a realistic phantom and DIPY's ``small_64D`` with the plain method and the peers.

    Parameters
    ----------
    out : path
        Output directory: ``phantom/`` (with its truth), ``benchmark/`` (scores, FA and FA error
        maps), ``dwi_dwivae.nii.gz`` (with residual, sigma map and sidecar), ``dwi_<peer>.nii.gz``
        and ``report.html``.
    seed : int
        Fixes the phantom, the training and the grouping.
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
    paths: dict[str, Path] = {}

    log(f"phantom: realistic tissue, {'x'.join(map(str, PHANTOM_SHAPE))} voxels, {acq.describe()}, Rician SNR 20")
    phantom = make_realistic_phantom(acq, shape=PHANTOM_SHAPE, snr=20.0, seed=seed)
    written = write_phantom(phantom, acq, out / "phantom", settings={"tissue": "realistic", "snr": 20.0,
                                                                     "noise": "rician", "coils": 1, "seed": seed},
                            force=True)
    paths["phantom"] = written["json"].parent
    (out / "benchmark").mkdir(exist_ok=True)
    results = run_benchmark([paths["phantom"]], methods=("dwivae", *PEERS), seed=seed, log=log,
                            fa_maps=out / "benchmark", threads=2)
    results["command"] = f"dwivae demo (seed {seed})"
    paths |= {f"benchmark_{k}": p for k, p in write_results(results, out / "benchmark", force=True).items()}

    log(f"real scan: DIPY {SAMPLE} ({acq.describe()})")
    img = io.load_dwi(dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    inside = np.ones(img.shape[:3], bool)  # a 10-voxel crop inside the brain: every voxel is tissue
    model, model_path = matched_model(acq, data, inside, seed=seed, log=log)
    written, stats = denoise_file(dwi, acq, model, out / "dwi_dwivae.nii.gz", mask=None, denoise_b0=True,
                                  pooling=DEFAULT_GROUP, seed=seed, force=True,
                                  provenance={"Command": f"dwivae demo (seed {seed})",
                                              "Model": {"path": str(model_path.resolve())},
                                              "GradientFiles": {"bval": str(bval), "bvec": str(bvec)}})
    paths["dwivae"] = written["denoised"]
    log(f"dwivae: {stats.line()}")
    peers = {}
    for name in PEERS:
        result = run_method(name, data, acq, mask=inside, threads=2)
        log(f"{name}: {result.status} ({result.note}, {result.seconds:.1f} s)")
        if result.status == "ok":
            peers[name] = io.write_nifti_atomic(out / f"dwi_{name}.nii.gz", result.denoised, img, force=True)
    paths |= peers
    paths["report"] = build_report([paths["dwivae"]], out / "report.html", benchmark=out / "benchmark",
                                   peers=peers, seed=seed, force=True)
    log(f"report: {paths['report']}")
    return paths
