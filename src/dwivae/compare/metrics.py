"""Errors of estimated signals and of the tensors fitted from them, overall and per group.

All results are dicts of Python floats, ready for JSON. Tensors are ordered
``(Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)`` in mm²/s, as everywhere in dwivae.
"""
from __future__ import annotations

import numpy as np

from dwivae.physics.tensorfit import fa, md


def _mean(x: np.ndarray) -> float:
    """Mean of all elements, accumulated in float64, as a Python float."""
    return float(np.mean(x, dtype=np.float64))


def signal_errors(estimate: np.ndarray, clean: np.ndarray) -> dict[str, float]:
    """Mean squared and mean absolute error of estimated signals.

    Parameters
    ----------
    estimate : (..., N) ndarray
        Estimated (noisy or denoised) signals.
    clean : (..., N) ndarray
        Noise-free signals, same shape and units as ``estimate``.

    Returns
    -------
    dict
        ``mse`` (units of the signal squared) and ``mae`` (units of the signal), means over all
        elements.
    """
    estimate, clean = np.asarray(estimate), np.asarray(clean)
    if estimate.shape != clean.shape:
        raise ValueError(f"estimate and clean signals must have the same shape; "
                         f"got {estimate.shape} and {clean.shape}")
    diff = estimate - clean
    return {"mse": _mean(diff * diff), "mae": _mean(np.abs(diff))}


def tensor_errors(D_est: np.ndarray, D_true: np.ndarray, *, fa_md: bool = True) -> dict[str, float]:
    """Errors of estimated diffusion tensors.

    Parameters
    ----------
    D_est : (..., 6) ndarray, mm²/s
        Estimated tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).
    D_true : (..., 6) ndarray, mm²/s
        True tensors, same shape.
    fa_md : bool
        Also give the FA and MD errors (one eigen-decomposition per tensor).

    Returns
    -------
    dict
        ``D_mse`` ((mm²/s)²) and ``D_mae`` (mm²/s), means over all six elements of all tensors;
        with ``fa_md``, also ``fa_mae`` (dimensionless) and ``md_mae`` (mm²/s), mean absolute
        errors of fractional anisotropy and mean diffusivity.
    """
    D_est, D_true = np.asarray(D_est), np.asarray(D_true)
    if D_est.shape != D_true.shape or D_est.ndim == 0 or D_est.shape[-1] != 6:
        raise ValueError(f"D_est and D_true must both have shape (..., 6); got {D_est.shape} and {D_true.shape}")
    diff = D_est - D_true
    errors = {"D_mse": _mean(diff * diff), "D_mae": _mean(np.abs(diff))}
    if fa_md:
        errors["fa_mae"] = _mean(np.abs(fa(D_est) - fa(D_true)))
        errors["md_mae"] = _mean(np.abs(md(D_est) - md(D_true)))
    return errors


def summary(estimate: np.ndarray, clean: np.ndarray, D_est: np.ndarray, D_true: np.ndarray) -> dict[str, float]:
    """All six scores of estimated signals and of the tensors fitted from them.

    Parameters
    ----------
    estimate : (M, N) ndarray
        Estimated signals.
    clean : (M, N) ndarray
        Noise-free signals.
    D_est : (M, 6) ndarray, mm²/s
        Tensors fitted from ``estimate``.
    D_true : (M, 6) ndarray, mm²/s
        True tensors of ``clean``.

    Returns
    -------
    dict
        ``signal_mse``, ``signal_mae``, ``D_mse``, ``D_mae``, ``fa_mae``, ``md_mae`` (see
        :func:`signal_errors` and :func:`tensor_errors`).
    """
    estimate, D_est = np.asarray(estimate), np.asarray(D_est)
    if estimate.shape[:-1] != D_est.shape[:-1]:
        raise ValueError(f"signals and tensors must describe the same samples; got shapes {estimate.shape} "
                         f"and {D_est.shape}")
    signal = signal_errors(estimate, clean)
    return {"signal_mse": signal["mse"], "signal_mae": signal["mae"], **tensor_errors(D_est, D_true)}


def per_group(estimate: np.ndarray, clean: np.ndarray, D_est: np.ndarray, D_true: np.ndarray,
              groups: np.ndarray) -> dict[int, dict[str, float]]:
    """The scores of :func:`summary` for each group of samples (e.g. each noise level).

    Parameters
    ----------
    estimate : (M, N) ndarray
        Estimated signals.
    clean : (M, N) ndarray
        Noise-free signals.
    D_est : (M, 6) ndarray, mm²/s
        Tensors fitted from ``estimate``.
    D_true : (M, 6) ndarray, mm²/s
        True tensors of ``clean``.
    groups : (M,) ndarray of int
        Group label of each sample.

    Returns
    -------
    dict of int to dict
        For each distinct label, in ascending order, the scores of :func:`summary` over the
        samples with that label.
    """
    estimate, groups = np.asarray(estimate), np.asarray(groups)
    if groups.shape != estimate.shape[:-1]:
        raise ValueError(f"groups must have one label per sample, shape {estimate.shape[:-1]}; got {groups.shape}")
    clean, D_est, D_true = np.asarray(clean), np.asarray(D_est), np.asarray(D_true)
    results = {}
    for label in np.unique(groups):
        mask = groups == label
        results[label.item()] = summary(estimate[mask], clean[mask], D_est[mask], D_true[mask])
    return results
