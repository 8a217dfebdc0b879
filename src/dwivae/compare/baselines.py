"""The denoisers we compare with, behind one call: ``run_method(name, data, acq, mask=...)``.

``noisy`` (no denoising: the floor), ``dwivae`` (the plain ``dwivae denoise``: a model trained
for the data's protocol and noise, then the grouped estimate; training included in its time),
``vae`` and ``dae`` (a given or cached network, voxel by voxel), ``mppca`` (DIPY's Marchenko-
Pastur PCA), ``dwidenoise`` (MRtrix3's binary, run as a user runs it), ``patch2self`` (DIPY) and
``svd`` (a linear subspace fitted on simulated signals: the linear counterpart of our networks).
A method that cannot run here is reported as skipped with the reason; an output that fails the
sanity checks is reported as broken and never scored.
"""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

from dwivae.errors import InputError
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.signals import normalise_by_b0
from dwivae.physics.simulate import random_tensors, tensor_signals

if TYPE_CHECKING:
    from dwivae.learn.training import TrainedModel

METHODS = ("noisy", "dwivae", "vae", "dae", "mppca", "dwidenoise", "patch2self", "svd")
SVD_TOLERANCE = 0.005
"""RMS error (fraction of S0) that the SVD subspace leaves on clean simulated signals."""


@dataclass
class MethodResult:
    """What one method did to one volume.

    Attributes
    ----------
    name : str
    status : {"ok", "skipped", "broken"}
    denoised : (X, Y, Z, N) ndarray or None
        None unless ``status == "ok"``.
    seconds : float
        Wall time of the method alone (for ``dwidenoise``: writing its input, the binary and
        reading its output back).
    note : str
        Why it was skipped or broken, or how it was run.
    """

    name: str
    status: str
    denoised: np.ndarray | None = None
    seconds: float = 0.0
    note: str = ""


class Skipped(Exception):
    """A method that cannot run on this machine (missing binary or package)."""


def _ours(data: np.ndarray, acq: Acquisition, mask: np.ndarray, model: TrainedModel | None) -> tuple[np.ndarray, str]:
    from dwivae.apply.denoise import denoise
    if model is None:
        raise InputError("vae and dae need a trained model for the protocol")
    note = f"{model.model_config.arch}, latent {model.model_config.latent}"
    return denoise(data, acq, model, mask=mask), note + (", learned context" if model.context is not None else "")


def _plain(data: np.ndarray, acq: Acquisition, mask: np.ndarray, coils: int) -> tuple[np.ndarray, str]:
    from dwivae.apply.grouping import DEFAULT_GROUP
    from dwivae.apply.plain import plain_denoise
    note = f"plain dwivae denoise (groups of {DEFAULT_GROUP}, {coils} coil(s))"
    return plain_denoise(data, acq, mask, coils=coils), note


def _mppca(data: np.ndarray, acq: Acquisition, mask: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    from dipy.denoise.localpca import mppca
    out = mppca(data, mask=mask, patch_radius=2)
    return np.where(mask[..., None], out, data).astype(np.float32), "DIPY localpca.mppca, patch radius 2"


def _dwidenoise(data: np.ndarray, acq: Acquisition, mask: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    binary = shutil.which("dwidenoise")
    if binary is None:
        raise Skipped("MRtrix3 is not installed (Debian: apt-get install mrtrix3)")
    with tempfile.TemporaryDirectory(prefix="dwivae-dwidenoise-") as tmp:
        affine = np.eye(4)
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), f"{tmp}/in.nii")
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), f"{tmp}/mask.nii")
        run = subprocess.run([binary, f"{tmp}/in.nii", f"{tmp}/out.nii", "-mask", f"{tmp}/mask.nii",
                              "-nthreads", str(threads), "-quiet", "-force"], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"dwidenoise failed: {run.stderr.strip()[-300:]}")
        out = np.asarray(nib.load(f"{tmp}/out.nii").dataobj, dtype=np.float32)
    version = subprocess.run([binary, "-version"], capture_output=True, text=True).stdout.splitlines()
    return np.where(mask[..., None], out, data), f"{version[0] if version else 'dwidenoise'}, -nthreads {threads}"


@contextlib.contextmanager
def _ridge_copying_x() -> Iterator[None]:
    """Make DIPY's Patch2Self fit ``Ridge(copy_X=True)``.

    DIPY 1.12.1 builds ``Ridge(copy_X=False)`` for 'ols' and then predicts on the very matrix
    the fit centred in place; with scikit-learn >= 1.9 that shifts every output volume.
    """
    from types import SimpleNamespace

    import dipy.denoise.patch2self as p2s
    from sklearn import linear_model
    from sklearn.base import BaseEstimator

    def ridge(*args, **kwargs):
        return linear_model.Ridge(*args, **{**kwargs, "copy_X": True})

    original = p2s.linear_model
    p2s.linear_model = SimpleNamespace(Ridge=ridge, Lasso=linear_model.Lasso, BaseEstimator=BaseEstimator)
    try:
        yield
    finally:
        p2s.linear_model = original


def _patch2self(data: np.ndarray, acq: Acquisition, mask: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    if importlib.util.find_spec("sklearn") is None:  # Patch2Self's regressions
        raise Skipped("scikit-learn is not installed (pip install 'dwivae[bench]')")
    from dipy.denoise.patch2self import patch2self
    # Version 1: DIPY 1.12.1's default version 3 returns its last two volumes as copies of two
    # earlier ones (DIPY issue #3968).
    with _ridge_copying_x():
        out = patch2self(data, acq.bvals, model="ols", version=1, shift_intensity=False, clip_negative_vals=True)
    return np.where(mask[..., None], out, data).astype(np.float32), "DIPY patch2self version 1, OLS (copy_X fixed)"


def svd_basis(acq: Acquisition, *, tolerance: float = SVD_TOLERANCE, n: int = 100_000,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The linear subspace of simulated clean tensor signals (S0 = 1) for a protocol.

    Its rank is the smallest whose projection of the simulated signals has an RMS error below
    ``tolerance`` (tensor signals are not linear in their parameters: rank 7, the networks'
    latent size, leaves 1.8 % of S0 on seed32; rank 15 leaves 0.3 %).

    Returns
    -------
    mean : (N,) ndarray
    basis : (rank, N) ndarray
        Orthonormal rows.
    """
    signals = tensor_signals(random_tensors(n, rng=np.random.default_rng(seed)), acq).astype(np.float64)
    mean = signals.mean(axis=0)
    _, singular, vt = np.linalg.svd(signals - mean, full_matrices=False)
    residual = np.sqrt(np.maximum(np.cumsum((singular ** 2)[::-1])[::-1], 0.0) / signals.size)
    rank = int(np.argmax(np.append(residual[1:], 0.0) < tolerance)) + 1  # error left after `rank` components
    return mean, vt[:rank]


def _svd(data: np.ndarray, acq: Acquisition, mask: np.ndarray, threads: int) -> tuple[np.ndarray, str]:
    mean, basis = svd_basis(acq)
    signals = data[mask]
    normalised, s0, valid = normalise_by_b0(signals, acq)
    x = normalised[valid].astype(np.float64) - mean
    projected = (x @ basis.T @ basis + mean) * s0[valid, None]
    denoised = signals.copy()
    dw = ~acq.b0_mask
    denoised[np.flatnonzero(valid)[:, None], np.flatnonzero(dw)] = projected[:, dw]
    out = data.copy()
    out[mask] = denoised
    return out, f"projection on the {basis.shape[0]} principal components of simulated tensor signals"


def why_broken(out: np.ndarray, data: np.ndarray, acq: Acquisition, mask: np.ndarray) -> str | None:
    """Why a denoised series cannot be scored, or None when it passes the checks."""
    if out.shape != data.shape:
        return f"returned shape {out.shape}, not the input's {data.shape}"
    inside, source = out[mask], data[mask]
    if not np.isfinite(inside).all():
        return "non-finite values in the mask"
    dw = np.flatnonzero(~acq.b0_mask)
    for a in range(len(dw)):
        for b in range(a + 1, len(dw)):
            if np.array_equal(inside[:, dw[a]], inside[:, dw[b]]) and not np.array_equal(source[:, dw[a]], source[:, dw[b]]):
                return f"volume {dw[b]} is a copy of volume {dw[a]}"
    return None


def mean_shift(out: np.ndarray, data: np.ndarray, mask: np.ndarray) -> float:
    """Largest relative change of a volume's mean in the mask (0.1: 10 %).

    A denoiser removes zero-mean noise, so the means barely move; a large shift is a bias (or
    a bug such as DIPY 1.12.1's Patch2Self 'ols' with scikit-learn 1.9). Reported, not hidden.
    """
    before, after = data[mask].mean(axis=0), out[mask].mean(axis=0)
    return float(np.max(np.abs(after - before) / np.maximum(np.abs(before), 1e-6)))


def run_method(name: str, data: np.ndarray, acq: Acquisition, *, mask: np.ndarray,
               model: TrainedModel | None = None, threads: int = 1, coils: int = 1) -> MethodResult:
    """Denoise ``data`` with one method, timed and checked.

    Parameters
    ----------
    name : str
        One of ``METHODS``.
    data : (X, Y, Z, N) ndarray
    acq : Acquisition
    mask : (X, Y, Z) bool ndarray
        Voxels to denoise (outside it every method returns the input).
    model : TrainedModel, optional
        The network for ``vae`` and ``dae``.
    threads : int
        Threads that ``dwidenoise`` may use.
    coils : int
        Receive coils of the data's magnitude noise, for ``dwivae`` (1: Rician).

    Returns
    -------
    MethodResult
    """
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    data = np.asarray(data, dtype=np.float32)
    if name == "noisy":
        return MethodResult(name, "ok", data, 0.0, "no denoising")
    started = time.perf_counter()
    try:
        if name in ("vae", "dae"):
            out, note = _ours(data, acq, mask, model)
        elif name == "dwivae":
            out, note = _plain(data, acq, mask, coils)
        else:
            out, note = {"mppca": _mppca, "dwidenoise": _dwidenoise, "patch2self": _patch2self,
                         "svd": _svd}[name](data, acq, mask, threads)
    except Skipped as why:
        return MethodResult(name, "skipped", note=str(why))
    seconds = time.perf_counter() - started
    problem = why_broken(out, data, acq, mask)
    if problem is not None:
        return MethodResult(name, "broken", None, seconds, f"{note}: {problem}")
    return MethodResult(name, "ok", out, seconds, note)
