"""Vectorised diffusion tensor fitting: design matrix, forward model, log-linear OLS/WLS fits.

Tensor elements are ordered ``(Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)`` throughout dwivae, in mm²/s;
b-values are in s/mm². DIPY's ``lower_triangular`` order ``(Dxx, Dxy, Dyy, Dxz, Dyz, Dzz)`` is
converted with :func:`to_dipy_lower` and :func:`from_dipy_lower`. Every function works on any
leading shape of voxels, with no Python loop per voxel.
"""
from __future__ import annotations

from typing import Literal

import numpy as np

_CHUNK_ELEMENTS = 2**24
"""Largest temporary array (in float64 elements, 128 MiB) that a fit makes for one chunk of voxels."""

_MATRIX_INDEX = np.array([[0, 3, 4], [3, 1, 5], [4, 5, 2]])
"""Where each entry of the symmetric 3 x 3 matrix sits in (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)."""

_TO_DIPY = np.array([0, 3, 1, 4, 5, 2])
_FROM_DIPY = np.array([0, 2, 5, 1, 3, 4])


def _check_protocol(bvals: np.ndarray, bvecs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return bvals (N,) and bvecs (N, 3) as float64, or raise ValueError on bad shapes or values."""
    bvals = np.asarray(bvals, dtype=np.float64)
    bvecs = np.asarray(bvecs, dtype=np.float64)
    if bvals.ndim != 1:
        raise ValueError(f"bvals must be a 1-D array of N b-values; got shape {bvals.shape}")
    n = bvals.shape[0]
    if bvecs.shape != (n, 3):
        hint = ": transpose FSL-style 3 x N bvecs" if bvecs.shape == (3, n) else ""
        raise ValueError(f"bvecs must have shape (N, 3) = ({n}, 3) to match bvals; got {bvecs.shape}{hint}")
    if not (np.all(np.isfinite(bvals)) and np.all(np.isfinite(bvecs))):
        raise ValueError("bvals and bvecs must be finite: remove NaN or inf entries")
    if np.any(bvals < 0):
        raise ValueError("bvals must be non-negative (s/mm²): fix the negative b-values")
    return bvals, bvecs


def _check_tensors(D: np.ndarray) -> np.ndarray:
    """Return D as a float array with last axis 6, or raise ValueError."""
    D = np.asarray(D)
    if D.ndim == 0 or D.shape[-1] != 6:
        raise ValueError(f"tensors must have shape (..., 6) as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz); got {D.shape}")
    return D


def design_matrix(bvals: np.ndarray, bvecs: np.ndarray) -> np.ndarray:
    """Design matrix of the log-linear tensor model.

    Parameters
    ----------
    bvals : (N,) ndarray, s/mm²
        b-value of each volume.
    bvecs : (N, 3) ndarray
        Unit gradient direction of each volume; zero vectors for volumes without diffusion
        weighting.

    Returns
    -------
    X : (N, 7) ndarray, float64
        Columns ``[-b gx², -b gy², -b gz², -2b gx gy, -2b gx gz, -2b gy gz, 1]`` (s/mm² for the
        first six).

    Notes
    -----
    ``log S_k = X_k @ [Dxx, Dyy, Dzz, Dxy, Dxz, Dyz, log S0]``, the logarithm of
    ``S_k = S0 exp(-b_k g_kᵀ D g_k)``. A volume with a zero gradient vector has a zero row in
    the first six columns: it carries no diffusion weighting whatever its b-value.
    """
    bvals, g = _check_protocol(bvals, bvecs)
    b = bvals[:, None]
    quadratic = np.stack([g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2,
                          2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2], 2 * g[:, 1] * g[:, 2]], axis=1)
    return np.concatenate([-b * quadratic, np.ones_like(b)], axis=1)


def tensor_signal(D: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, *,
                  S0: float | np.ndarray = 1.0) -> np.ndarray:
    """Signals of diffusion tensors (the forward model).

    Parameters
    ----------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).
    bvals : (N,) ndarray, s/mm²
        b-value of each volume.
    bvecs : (N, 3) ndarray
        Unit gradient direction of each volume; zero vectors for volumes without diffusion
        weighting.
    S0 : float or (...) ndarray
        Signal without diffusion weighting, broadcast against the leading shape of ``D``.

    Returns
    -------
    signals : (..., N) ndarray, float64

    Notes
    -----
    ``S_k = S0 exp(-b_k g_kᵀ D g_k)``. Volumes with a zero gradient vector get ``S0``.
    """
    D = _check_tensors(D)
    X = design_matrix(bvals, bvecs)
    return np.asarray(S0, dtype=np.float64)[..., None] * np.exp(D.astype(np.float64) @ X[:, :6].T)


def fit_tensor(signals: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, *,
               min_signal: float = 1e-6,
               method: Literal["ols", "wls"] = "ols") -> tuple[np.ndarray, np.ndarray]:
    """Fit diffusion tensors to signals by log-linear least squares.

    Parameters
    ----------
    signals : (..., N) ndarray
        Signals of any leading shape (voxels, samples), one value per volume on the last axis.
    bvals : (N,) ndarray, s/mm²
        b-value of each volume.
    bvecs : (N, 3) ndarray
        Unit gradient direction of each volume; zero vectors for volumes without diffusion
        weighting.
    min_signal : float
        Signals are clipped below at this strictly positive value before the logarithm: noisy
        signals can be zero or negative, and ``log 0`` is ``-inf``. DIPY's ``TensorModel``
        does the same with its ``min_signal``.
    method : {"ols", "wls"}
        ``"ols"``: ordinary least squares on the log signals, one pseudo-inverse for all voxels
        (DIPY's ``"LS"``). ``"wls"``: weighted least squares with weights the squared signals
        predicted by the OLS fit (DIPY's ``"WLS"``; Chung et al. 2006).

    Returns
    -------
    D : (..., 6) ndarray, float64, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz). Not constrained to be positive definite.
    S0 : (...) ndarray, float64
        Fitted signal without diffusion weighting, in the units of ``signals``.

    Raises
    ------
    ValueError
        If the shapes disagree, ``min_signal`` is not positive, ``method`` is unknown, or the
        protocol cannot determine a tensor (design matrix of rank below 7).

    Notes
    -----
    The model is ``S_k = S0 exp(-b_k g_kᵀ D g_k)``, linear in its logarithm:
    ``log S = X @ [Dxx, Dyy, Dzz, Dxy, Dxz, Dyz, log S0]`` with ``X`` from
    :func:`design_matrix`. OLS solves ``β = X⁺ log S``; WLS solves the 7 x 7 normal equations
    ``(Xᵀ W X) β = Xᵀ W log S`` per voxel with ``W = diag(exp(X β_OLS)²)``. Voxels are processed
    in chunks to bound memory, so millions of voxels fit in seconds.
    """
    X = design_matrix(bvals, bvecs)
    n = X.shape[0]
    signals = np.asarray(signals)
    if signals.ndim == 0 or signals.shape[-1] != n:
        raise ValueError(f"signals must have one value per volume on the last axis ({n} volumes, as bvals); "
                         f"got shape {signals.shape}")
    if not min_signal > 0:
        raise ValueError(f"min_signal must be strictly positive; got {min_signal}")
    if method not in ("ols", "wls"):
        raise ValueError(f"method must be 'ols' or 'wls'; got {method!r}")
    if np.linalg.matrix_rank(X) < 7:
        raise ValueError("the protocol cannot determine a tensor: need at least 6 non-collinear "
                         "diffusion-weighted directions and a volume that fixes S0")

    leading = signals.shape[:-1]
    flat = signals.reshape(-1, n)
    beta = np.empty((flat.shape[0], 7))
    pinv_T = np.linalg.pinv(X).T
    per_voxel = n if method == "ols" else 7 * n
    step = max(1, _CHUNK_ELEMENTS // per_voxel)
    for start in range(0, flat.shape[0], step):
        log_s = np.log(np.maximum(flat[start:start + step].astype(np.float64), min_signal))
        beta_ols = log_s @ pinv_T
        beta[start:start + step] = beta_ols if method == "ols" else _wls(X, log_s, beta_ols)
    return beta[:, :6].reshape(*leading, 6), np.exp(beta[:, 6]).reshape(leading)


def _wls(X: np.ndarray, log_s: np.ndarray, beta_ols: np.ndarray) -> np.ndarray:
    """Weighted least squares coefficients (M, 7) from log signals (M, N) and OLS coefficients (M, 7).

    The columns of X are scaled to unit norm for a well-conditioned solve, and each voxel's
    weights are divided by their largest value (which leaves the solution unchanged) so that
    they cannot all underflow.
    """
    scale = np.linalg.norm(X, axis=0)
    Xs = X / scale
    log_pred = beta_ols @ X.T
    weights = np.exp(2.0 * (log_pred - log_pred.max(axis=1, keepdims=True)))
    weighted = weights[:, :, None] * Xs
    normal = weighted.transpose(0, 2, 1) @ Xs
    rhs = np.einsum("mnj,mn->mj", weighted, log_s)
    return np.linalg.solve(normal, rhs[:, :, None])[:, :, 0] / scale


def to_matrix(D: np.ndarray) -> np.ndarray:
    """Symmetric 3 x 3 matrices of tensors.

    Parameters
    ----------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).

    Returns
    -------
    matrices : (..., 3, 3) ndarray, mm²/s
    """
    return _check_tensors(D)[..., _MATRIX_INDEX]


def to_dipy_lower(D: np.ndarray) -> np.ndarray:
    """Reorder tensors from dwivae's order to DIPY's ``lower_triangular`` order.

    Parameters
    ----------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).

    Returns
    -------
    D_lower : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz).
    """
    return _check_tensors(D)[..., _TO_DIPY]


def from_dipy_lower(D_lower: np.ndarray) -> np.ndarray:
    """Reorder tensors from DIPY's ``lower_triangular`` order to dwivae's order.

    Parameters
    ----------
    D_lower : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dxy, Dyy, Dxz, Dyz, Dzz), e.g. ``TensorFit.lower_triangular()``.

    Returns
    -------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).
    """
    return _check_tensors(D_lower)[..., _FROM_DIPY]


def eigen(D: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues and eigenvectors of tensors.

    Parameters
    ----------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).

    Returns
    -------
    evals : (..., 3) ndarray, mm²/s
        Eigenvalues in descending order (not clipped: a tensor that is not positive definite
        has non-positive eigenvalues).
    evecs : (..., 3, 3) ndarray
        Unit eigenvectors as columns: ``evecs[..., :, j]`` belongs to ``evals[..., j]``.
    """
    evals, evecs = np.linalg.eigh(to_matrix(D))
    return evals[..., ::-1], evecs[..., ::-1]


def fa(D: np.ndarray) -> np.ndarray:
    """Fractional anisotropy of tensors.

    Parameters
    ----------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).

    Returns
    -------
    fa : (...) ndarray
        Dimensionless; 0 for isotropic tensors and for the zero tensor.

    Notes
    -----
    ``FA = sqrt(1/2) sqrt((λ1-λ2)² + (λ2-λ3)² + (λ3-λ1)²) / sqrt(λ1² + λ2² + λ3²)`` with
    negative eigenvalues set to 0 first, as DIPY does (its ``min_diffusivity``), so that FA stays
    in [0, 1] for the non-positive-definite tensors that noisy fits give.
    """
    evals = np.maximum(np.linalg.eigvalsh(to_matrix(D)), 0.0)
    l1, l2, l3 = np.moveaxis(evals, -1, 0)
    spread = (l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2
    norm = l1**2 + l2**2 + l3**2
    return np.sqrt(0.5 * spread / np.where(norm > 0, norm, 1.0))


def md(D: np.ndarray) -> np.ndarray:
    """Mean diffusivity of tensors.

    Parameters
    ----------
    D : (..., 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).

    Returns
    -------
    md : (...) ndarray, mm²/s
        ``(Dxx + Dyy + Dzz) / 3``, the mean eigenvalue.
    """
    return _check_tensors(D)[..., :3].mean(axis=-1)
