"""Figures of the study, drawn with matplotlib (imported lazily, non-interactive backend).

Every function takes arrays (no model, no file reading), writes one PNG or SVG file (the
suffix of ``out`` decides) and returns its path.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np

from dwivae.learn.latent import LatentStatistics

Out = str | PathLike[str]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out: Out) -> Path:
    out = Path(out)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def _no_ticks(axes) -> None:
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])


def loss_curves(histories: Mapping[str, Sequence[dict]], out: Out) -> Path:
    """Reconstruction, KL and total loss per epoch, and the test MSE (the study's Figure 3).

    Parameters
    ----------
    histories : mapping of str to list of dict
        A model's training history (records with ``epoch``, ``recon``, ``kl``, ``total`` and,
        every few epochs, ``test_mse``), by model name.
    out : path
    """
    plt = _pyplot()
    fig, (ax_loss, ax_kl, ax_test) = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    for k, (name, history) in enumerate(histories.items()):
        colour = f"C{k}"
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["recon"] for r in history], color=colour, label=f"{name} reconstruction")
        ax_loss.plot(epochs, [r["total"] for r in history], color=colour, ls="--", label=f"{name} total")
        if any(r["kl"] > 0 for r in history):
            ax_kl.plot(epochs, [r["kl"] for r in history], color=colour, label=name)
        ax_test.plot(epochs, [r["recon"] for r in history], color=colour, alpha=0.5, label=f"{name} train (Huber)")
        tested = [r for r in history if "test_mse" in r]
        ax_test.plot([r["epoch"] for r in tested], [r["test_mse"] for r in tested], "o-", color=colour,
                     label=f"{name} test MSE")
    ax_loss.set(title="(a) training loss", xlabel="epoch", ylabel="loss", yscale="log")
    ax_kl.set(title="(b) KL divergence (nats per sample)", xlabel="epoch", ylabel="KL")
    ax_test.set(title="(c) training loss and test MSE", xlabel="epoch", yscale="log")
    for ax in (ax_loss, ax_kl, ax_test):
        if ax.lines:
            ax.legend(fontsize=7)
    if not ax_kl.lines:
        ax_kl.text(0.5, 0.5, "no KL term (DAE or beta = 0)", ha="center", va="center", transform=ax_kl.transAxes)
    return _save(fig, out)


def reconstruction_examples(clean: np.ndarray, noisy: np.ndarray, reconstructions: Mapping[str, np.ndarray],
                            out: Out, *, sigma: float, labels: Sequence[str] | None = None) -> Path:
    """Clean, noisy and reconstructed simulated signals, one column per model (Figures 2 and 4).

    Parameters
    ----------
    clean, noisy : (K, N) ndarray
        K example signals, normalised by S0.
    reconstructions : mapping of str to (K, N) ndarray
        Each model's reconstruction of ``noisy``.
    sigma : float
        The noise standard deviation, for the title.
    labels : sequence of str, optional
        A name for each example (e.g. its FA).
    """
    plt = _pyplot()
    k, n = clean.shape
    cols = max(len(reconstructions), 1)
    fig, axes = plt.subplots(k, cols, figsize=(4.6 * cols, 2.4 * k), squeeze=False, sharex=True,
                             constrained_layout=True)
    volumes = np.arange(n)
    for col, (name, recon) in enumerate(reconstructions.items()):
        for row in range(k):
            ax = axes[row, col]
            ax.plot(volumes, noisy[row], ".", color="0.6", label="noisy")
            ax.plot(volumes, clean[row], "k-", lw=1.5, label="clean")
            rmse = float(np.sqrt(np.mean((recon[row] - clean[row]) ** 2)))
            ax.plot(volumes, recon[row], "-", color=f"C{col}", label=f"{name} (RMSE {rmse:.3f})")
            ax.set_ylim(-0.05, max(1.1, float(noisy[row].max()) + 0.05))
            ax.legend(fontsize=7, loc="upper right")
            if labels is not None:
                ax.set_ylabel(labels[row], fontsize=8)
        axes[0, col].set_title(name)
        axes[-1, col].set_xlabel("volume")
    fig.suptitle(f"simulated signals (S/S0) with Gaussian noise, sigma = {sigma:g}")
    return _save(fig, out)


def in_vivo_comparison(noisy: np.ndarray, denoised: Mapping[str, np.ndarray], out: Out, *,
                       slice_index: int | None = None, volume: int, bvalue: float | None = None) -> Path:
    """Noisy and denoised images of one axial slice and volume, and the difference of the first
    two denoised ones (the study's Figure 5: noisy, VAE, DAE, VAE - DAE).

    Parameters
    ----------
    noisy : (X, Y, Z, N) ndarray
    denoised : mapping of str to (X, Y, Z, N) ndarray
    slice_index : int, optional
        Axial slice (default: the middle one).
    volume : int
    bvalue : float, optional
        The volume's b-value, for the title.
    """
    plt = _pyplot()
    z = noisy.shape[2] // 2 if slice_index is None else slice_index
    images = {"noisy": noisy[:, :, z, volume].T} | {k: v[:, :, z, volume].T for k, v in denoised.items()}
    names = list(denoised)
    diff = images[names[0]] - images[names[1]] if len(names) >= 2 else None
    fig, axes = plt.subplots(1, len(images) + (diff is not None), figsize=(3.3 * (len(images) + 1), 3.6),
                             constrained_layout=True, squeeze=False)
    axes = axes[0]
    vmax = float(np.percentile(images["noisy"], 99.5)) or 1.0
    for ax, (title, image) in zip(axes, images.items()):
        shown = ax.imshow(image, cmap="gray", vmin=0, vmax=vmax, origin="lower")
        ax.set_title(title)
    fig.colorbar(shown, ax=axes[:len(images)], shrink=0.8, label="signal")
    if diff is not None:
        dmax = float(np.abs(diff).max()) or 1.0
        shown = axes[-1].imshow(diff, cmap="RdBu_r", vmin=-dmax, vmax=dmax, origin="lower")
        axes[-1].set_title(f"{names[0]} - {names[1]}")
        fig.colorbar(shown, ax=axes[-1], shrink=0.8)
    _no_ticks(axes)
    b = f", b={bvalue:g} s/mm²" if bvalue is not None else ""
    fig.suptitle(f"axial slice {z}, volume {volume}{b}")
    return _save(fig, out)


def residual_maps(noisy: np.ndarray, denoised: Mapping[str, np.ndarray], out: Out, *, dw: np.ndarray,
                  slice_index: int | None = None, volume: int) -> Path:
    """Residuals (denoised - noisy) of one slice: one volume, and the RMS over the diffusion-
    weighted volumes. Residuals of a good denoiser look like noise, with no anatomy in them.

    Parameters
    ----------
    noisy : (X, Y, Z, N) ndarray
    denoised : mapping of str to (X, Y, Z, N) ndarray
    dw : (N,) bool ndarray
        The diffusion-weighted volumes.
    slice_index : int, optional
    volume : int
    """
    plt = _pyplot()
    z = noisy.shape[2] // 2 if slice_index is None else slice_index
    residuals = {k: v[:, :, z] - noisy[:, :, z] for k, v in denoised.items()}
    one = {k: r[..., volume].T for k, r in residuals.items()}
    rms = {k: np.sqrt(np.mean(r[..., dw] ** 2, axis=-1)).T for k, r in residuals.items()}
    fig, axes = plt.subplots(2, len(residuals), figsize=(3.6 * len(residuals) + 1, 6.6), squeeze=False,
                             constrained_layout=True)
    rmax = max(float(np.percentile(np.abs(r), 99.5)) for r in one.values()) or 1.0
    smax = max(float(np.percentile(r, 99.5)) for r in rms.values()) or 1.0
    for col, name in enumerate(residuals):
        top = axes[0, col].imshow(one[name], cmap="RdBu_r", vmin=-rmax, vmax=rmax, origin="lower")
        axes[0, col].set_title(f"{name}: volume {volume}")
        bottom = axes[1, col].imshow(rms[name], cmap="magma", vmin=0, vmax=smax, origin="lower")
        axes[1, col].set_title(f"{name}: RMS over DW volumes")
    fig.colorbar(top, ax=axes[0, :], shrink=0.8, label="denoised - noisy")
    fig.colorbar(bottom, ax=axes[1, :], shrink=0.8, label="RMS residual")
    _no_ticks(axes)
    fig.suptitle(f"residual maps, axial slice {z}")
    return _save(fig, out)


def residual_histograms(residuals: Mapping[str, np.ndarray], out: Out, *, description: str) -> Path:
    """Histograms of denoised - original (the study's Figure 6), with a Gaussian of the same
    mean and standard deviation for reference.

    Parameters
    ----------
    residuals : mapping of str to (M,) ndarray
        Residual values of each method (e.g. every masked voxel of a slice range, every
        diffusion-weighted volume).
    description : str
        Which voxels and volumes, for the title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    spread = max(float(np.percentile(np.abs(r), 99.5)) for r in residuals.values()) or 1.0
    bins = np.linspace(-spread, spread, 121)
    centres = 0.5 * (bins[1:] + bins[:-1])
    for k, (name, r) in enumerate(residuals.items()):
        mean, std = float(r.mean()), float(r.std())
        ax.hist(r, bins=bins, density=True, histtype="step", lw=1.5, color=f"C{k}",
                label=f"{name}: mean {mean:.3g}, sd {std:.3g}")
        if std > 0:
            gauss = np.exp(-0.5 * ((centres - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))
            ax.plot(centres, gauss, ls=":", color=f"C{k}")
    ax.set(xlabel="denoised - original", ylabel="density", title=f"residuals: {description}")
    ax.legend(fontsize=8)
    return _save(fig, out)


def map_grid(images: Mapping[str, np.ndarray], out: Out, *, title: str, label: str,
             cmap: str = "gray", vmin: float | None = None, vmax: float | None = None) -> Path:
    """2D maps side by side on one colour scale (e.g. FA maps of several methods).

    Parameters
    ----------
    images : mapping of str to (X, Y) ndarray
    title, label : str
        Figure title and colour-bar label.
    cmap : str
    vmin, vmax : float, optional
        Colour range (default: 0 to the 99.5th percentile of all maps).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(images), figsize=(3.2 * len(images) + 1, 3.6), squeeze=False,
                             constrained_layout=True)
    values = np.concatenate([np.ravel(v) for v in images.values()])
    values = values[np.isfinite(values)]
    vmin = 0.0 if vmin is None else vmin
    vmax = (float(np.percentile(values, 99.5)) if values.size else 1.0) if vmax is None else vmax
    for ax, (name, image) in zip(axes[0], images.items()):
        shown = ax.imshow(np.asarray(image).T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower")
        ax.set_title(name)
    fig.colorbar(shown, ax=axes[0], shrink=0.8, label=label)
    _no_ticks(axes)
    fig.suptitle(title)
    return _save(fig, out)


def latent_gaussians(statistics: Mapping[str, LatentStatistics], out: Out) -> Path:
    """Each latent's typical posterior N(mean mu, mean sigma), one panel per model (Figure 7).

    Latents the KL term pushed back to the prior sit on N(0, 1) (dashed: inactive); latents that
    carry the signal are narrow and spread over the data. Without the KL term (the study's
    Figure 9c) the posteriors are peaks with almost no variance.

    Parameters
    ----------
    statistics : mapping of str to LatentStatistics
        By model name (VAEs only: a DAE has no posterior variance).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(statistics), figsize=(5.5 * len(statistics), 3.8), squeeze=False,
                             constrained_layout=True)
    for ax, (name, stats) in zip(axes[0], statistics.items()):
        reach = max(4.0, float(np.max(np.abs(stats.mean_mu) + 4 * stats.mean_sigma)))
        x = np.linspace(-reach, reach, 801)
        ax.plot(x, np.exp(-0.5 * x ** 2) / np.sqrt(2 * np.pi), color="0.7", lw=4, label="prior N(0, 1)")
        peak = 0.0
        for j, (m, s, kl, active) in enumerate(zip(stats.mean_mu, stats.mean_sigma, stats.kl, stats.active)):
            s = max(float(s), 1e-6)
            density = np.exp(-0.5 * ((x - m) / s) ** 2) / (s * np.sqrt(2 * np.pi))
            peak = max(peak, float(density.max()))
            ax.plot(x, density, ls="-" if active else "--", color=f"C{j % 10}",
                    label=f"z{j + 1}: KL {kl:.2f}" + ("" if active else " (inactive)"))
        ax.set_ylim(0, min(peak * 1.05, 8.0))
        ax.set(title=f"{name}: {int(stats.active.sum())} of {len(stats.active)} latents active",
               xlabel="z", ylabel="density")
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, out)


def latent_influence(traversal: np.ndarray, influence: np.ndarray, out: Out, *, name: str,
                     steps: Sequence[float]) -> Path:
    """What each latent does to the reconstruction (the study's Figure 8).

    Parameters
    ----------
    traversal : (L, K, N) ndarray
        Decoded signals with latent ``j`` moved by ``steps[k]`` deviations (see
        :func:`dwivae.learn.latent.latent_traversal`).
    influence : (L,) ndarray
        RMS change of the reconstruction per latent (:func:`dwivae.learn.latent.latent_influence`).
    name : str
        Model name, for the title.
    steps : sequence of float
    """
    plt = _pyplot()
    L = traversal.shape[0]
    cols = min(L, 5)
    rows = -(-L // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharey=True,
                             constrained_layout=True)
    colours = plt.get_cmap("coolwarm")(np.linspace(0, 1, len(steps)))
    for j in range(rows * cols):
        ax = axes.flat[j]
        if j >= L:
            ax.axis("off")
            continue
        for k, step in enumerate(steps):
            ax.plot(traversal[j, k], color=colours[k], lw=1.2, label=f"{step:+g} sd")
        ax.set_title(f"z{j + 1}: influence {influence[j]:.3g}", fontsize=9)
    axes.flat[0].legend(fontsize=6)
    fig.supxlabel("volume")
    fig.supylabel("decoded S/S0")
    fig.suptitle(f"{name}: each latent moved from the mean code, the others fixed")
    return _save(fig, out)


def benchmark_errors(methods: Mapping[str, dict], out: Out, *, title: str) -> Path:
    """FA and MD errors per tissue class and wall time of each method on one phantom.

    Parameters
    ----------
    methods : mapping of str to dict
        Rows of ``results.json`` (``fa_mae``, ``md_mae``: per tissue; ``seconds``), by method;
        rows whose ``status`` is not ``ok`` are left out.
    title : str
    """
    plt = _pyplot()
    rows = {k: v for k, v in methods.items() if v.get("status") == "ok"}
    tissues = ["WM", "GM", "CSF", "crossing"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), constrained_layout=True)
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(tissues))
    for k, (name, row) in enumerate(rows.items()):
        axes[0].bar(x + k * width, [row["fa_mae"][t] for t in tissues], width, label=name, color=f"C{k}")
        axes[1].bar(x + k * width, [row["md_mae"][t] * 1e6 for t in tissues], width, color=f"C{k}")
        axes[2].bar(k, max(row["seconds"], 1e-3), color=f"C{k}")
    for ax, label in zip(axes[:2], ("FA mean absolute error", "MD mean absolute error (1e-6 mm²/s)")):
        ax.set_xticks(x + 0.4 - width / 2, tissues)
        ax.set_ylabel(label)
    axes[1].set_yscale("log")
    axes[2].set_xticks(range(len(rows)), list(rows), rotation=30)
    axes[2].set(yscale="log", ylabel="wall time (s)")
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, out)
