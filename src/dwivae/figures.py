"""Figures of the study, drawn with matplotlib (imported lazily, non-interactive backend)."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def in_vivo_comparison(
    noisy: np.ndarray,
    vae: np.ndarray,
    dae: np.ndarray,
    out: str | PathLike[str],
    *,
    slice_index: int | None = None,
    volume: int,
    bvalue: float | None = None,
) -> Path:
    """Noisy, VAE, DAE and VAE - DAE for one axial slice and one volume (the study's Figure 5).

    Parameters
    ----------
    noisy, vae, dae : (X, Y, Z, N) ndarray
        The measured series and the two denoised ones.
    out : path
        PNG or SVG file to write.
    slice_index : int, optional
        Axial slice (default: the middle one).
    volume : int
        Volume to show.
    bvalue : float, optional
        Its b-value, for the title.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    z = noisy.shape[2] // 2 if slice_index is None else slice_index
    panels = [noisy, vae, dae]
    images = [p[:, :, z, volume].T for p in panels]
    vmax = float(np.percentile(images[0], 99.5)) or 1.0
    diff = images[1] - images[2]
    dmax = float(np.abs(diff).max()) or 1.0
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), constrained_layout=True)
    for ax, image, title in zip(axes, images, ("noisy", "VAE", "DAE")):
        shown = ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(title)
    fig.colorbar(shown, ax=axes[:3], shrink=0.8, label="signal")
    shown = axes[3].imshow(diff, cmap="RdBu_r", vmin=-dmax, vmax=dmax, origin="lower")
    axes[3].set_title("VAE - DAE")
    fig.colorbar(shown, ax=axes[3], shrink=0.8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    b = f", b={bvalue:g} s/mm²" if bvalue is not None else ""
    fig.suptitle(f"axial slice {z}, volume {volume}{b}")
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
