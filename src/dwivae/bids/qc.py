"""The QC record of one denoised scan: what a user checks before trusting it.

Voxels and seconds of the run, the noise level used, the residual (input minus output) of the
diffusion-weighted volumes in the mask in units of sigma (mean ~0 and sd ~1 where only noise was
removed; the floor removal moves the mean below 0 at low SNR), the correlation of its RMS with the mean b0 over the
mask's voxels (about 0 where it holds no anatomy), and the mean FA and MD in the
mask before and after, from DTI (WLS) on the volumes up to b = 1500 s/mm² where that leaves six
directions or more (all volumes otherwise). A figure shows the middle axial slice of FA before
and after and the residual's RMS over sigma.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dwivae.apply.denoise_file import DenoiseStats
from dwivae.bids.layout import Scan
from dwivae.compare.benchmark import dti_fit
from dwivae.physics.acquisition import Acquisition

DTI_MAX_B = 1500.0
"""Highest b-value (s/mm²) of the volumes of the QC's tensor fit."""


def dti_volumes(acq: Acquisition) -> np.ndarray:
    """Which volumes the QC's tensor fit takes: (N,) bool, those up to :data:`DTI_MAX_B` where they
    hold six diffusion-weighted ones or more, else all."""
    keep = acq.bvals <= DTI_MAX_B
    return keep if int((keep & ~acq.b0_mask).sum()) >= 6 else np.ones(acq.n_volumes, bool)


def scan_qc(scan: Scan, acq: Acquisition, paths: dict[str, Path], stats: DenoiseStats, *,
            figure: Path | None = None) -> dict:
    """The QC record of a scan denoised into ``paths`` (:meth:`Scan.outputs`), as JSON-ready values.

    The mask is where the written noise map is above 0 (the mask of the run).
    """
    import nibabel as nib

    noisy = np.asarray(nib.load(scan.dwi).dataobj, dtype=np.float32)
    denoised = np.asarray(nib.load(paths["denoised"]).dataobj, dtype=np.float32)
    sigma_map = np.asarray(nib.load(paths["sigma"]).dataobj, dtype=np.float32)
    mask = sigma_map > 0
    sigma = float(sigma_map[mask].max()) if mask.any() else 0.0
    weighted = ~acq.b0_mask
    residual = (noisy - denoised)[mask][:, weighted] / (sigma or 1.0)
    keep = dti_volumes(acq)
    dti = Acquisition(acq.bvals[keep], acq.bvecs[keep], b0_threshold=acq.b0_threshold)
    before, after = (dti_fit(data[..., keep], dti, mask) for data in (noisy, denoised))
    rms = np.sqrt(np.mean(residual**2, axis=1))
    mean_b0 = noisy[mask][:, acq.b0_mask].mean(axis=1)
    if figure is not None:
        _figure(figure, scan, mask, before["fa"], after["fa"], rms)
    return {
        "Scan": str(scan.relative),
        "Subject": scan.subject,
        "Session": scan.session,
        "Protocol": acq.describe(),
        "ProtocolFingerprint": acq.fingerprint(),
        "Voxels": stats.denoised,
        "DenoiseSeconds": round(stats.seconds, 2),
        "Sigma": sigma,
        "NoiseFloorInData": stats.floor_in_data,
        "ResidualMean": float(residual.mean()),
        "ResidualSD": float(residual.std()),
        "ResidualB0Correlation": _correlation(rms, mean_b0),
        "FABefore": float(before["fa"].mean()),
        "FAAfter": float(after["fa"].mean()),
        "MDBefore": float(before["md"].mean()),
        "MDAfter": float(after["md"].mean()),
        "DTIVolumes": int(dti.n_volumes),
        "Figure": figure.name if figure is not None else None,
    }


def _correlation(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's correlation of two series; None where either is constant or too short."""
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def _figure(path: Path, scan: Scan, mask: np.ndarray, fa_before: np.ndarray, fa_after: np.ndarray,
            residual_rms: np.ndarray) -> None:
    """The middle axial slice of FA before and after and of the residual's RMS (in sigma), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z = mask.shape[2] // 2
    panels = []
    for values in (fa_before, fa_after, residual_rms):
        volume = np.full(mask.shape, np.nan)
        volume[mask] = values
        panels.append(volume[:, :, z].T)
    fig, axes = plt.subplots(1, 3, figsize=(7.5, 2.8), constrained_layout=True)
    for ax, image, title, vmax in zip(axes, panels, ("FA before", "FA after", "residual RMS / sigma"), (1.0, 1.0, 2.0)):
        shown = ax.imshow(image, origin="lower", cmap="gray" if vmax == 1.0 else "magma", vmin=0, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, shrink=0.8)
    fig.suptitle(f"{scan.name}, slice {z}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(temp, dpi=80)
    plt.close(fig)
    temp.replace(path)
