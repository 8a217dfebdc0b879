"""Simulated diffusion signals: tensor forward model, parameter sampling and noise.

Everything is vectorised over samples (no Python loop per sample) and every random draw takes an
explicit ``numpy.random.Generator``.
"""
from __future__ import annotations

import numpy as np

from dwivae.physics.acquisition import Acquisition

GRID_STEPS = 10
DIAGONAL_RANGE = (0.0, 3e-3)
"""The study's grid range of Dxx, Dyy, Dzz, mm²/s."""
OFF_DIAGONAL_RANGE = (-1e-3, 1e-3)
"""The study's grid range of Dxy, Dxz, Dyz, mm²/s."""

STUDY_NOISE_LEVELS = np.concatenate([[0.0], 0.01 + 0.03 * np.arange(1, 31)])
"""The study's 31 Gaussian noise standard deviations (S0 = 1): 0 (clean), then 0.04 to 0.91 in
steps of 0.03. The study names 0 and 0.91 as the ends and about 13.3 M noisy samples from about
428 k signals, that is 31 levels; 0.01 + 0.03 i for i = 1..30 is the grid that fits all three."""


def b_matrix(acq: Acquisition) -> np.ndarray:
    """Rows ``b [gx², gy², gz², 2gxgy, 2gxgz, 2gygz]`` so that ``b gᵀDg = B @ D``.

    Returns
    -------
    B : (N, 6) ndarray, s/mm²
        Tensor elements are ordered (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz) throughout dwivae.
    """
    g = acq.bvecs
    b = acq.bvals[:, None]
    return b * np.stack(
        [g[:, 0] ** 2, g[:, 1] ** 2, g[:, 2] ** 2,
         2 * g[:, 0] * g[:, 1], 2 * g[:, 0] * g[:, 2], 2 * g[:, 1] * g[:, 2]], axis=1)


def tensor_signals(D: np.ndarray, acq: Acquisition, *, S0: float | np.ndarray = 1.0) -> np.ndarray:
    """Signals of diffusion tensors.

    Parameters
    ----------
    D : (M, 6) ndarray, mm²/s
        Tensors as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).
    acq : Acquisition
        The protocol (N volumes).
    S0 : float or (M,) ndarray
        Signal without diffusion weighting.

    Returns
    -------
    signals : (M, N) ndarray, float32

    Notes
    -----
    ``S_k = S0 exp(-b_k g_kᵀ D g_k)``. Volumes with no gradient direction get ``S0``.
    """
    B = b_matrix(acq).astype(np.float32)
    signals = np.exp(-(np.asarray(D, dtype=np.float32) @ B.T))
    return signals * np.asarray(S0, dtype=np.float32).reshape(-1, 1)


def study_grid(acq: Acquisition, *, steps: int = GRID_STEPS) -> np.ndarray:
    """The study's grid of tensors, filtered as the study did.

    Each of Dxx, Dyy, Dzz takes ``steps`` values over ``DIAGONAL_RANGE`` and each of Dxy, Dxz,
    Dyz ``steps`` values over ``OFF_DIAGONAL_RANGE`` (``steps**6`` candidates). A tensor is kept
    when every diagonal element is >= every off-diagonal element and its signal never exceeds
    S0 on this protocol (``gᵀDg >= 0`` for every direction).

    Returns
    -------
    D : (M, 6) ndarray, float32, mm²/s
    """
    diag = np.linspace(*DIAGONAL_RANGE, steps)
    off = np.linspace(*OFF_DIAGONAL_RANGE, steps)
    grids = np.meshgrid(diag, diag, diag, off, off, off, indexing="ij")
    D = np.stack([g.ravel() for g in grids], axis=1)
    keep = D[:, :3].min(axis=1) >= D[:, 3:].max(axis=1)
    D = D[keep]
    exponent = D @ b_matrix(acq).T
    D = D[np.all(exponent >= -1e-12, axis=1)]
    return D.astype(np.float32)


def random_rotations(n: int, *, rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed rotation matrices, from normalised Gaussian quaternions.

    Returns
    -------
    R : (n, 3, 3) ndarray
    """
    q = rng.standard_normal((n, 4))
    w, x, y, z = (q / np.linalg.norm(q, axis=1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], axis=-1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], axis=-1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=1)


def random_tensors(
    n: int,
    *,
    rng: np.random.Generator,
    axial_range: tuple[float, float] = (0.5e-3, 3.0e-3),
    min_radial: float = 0.1e-3,
    isotropic_fraction: float = 0.0,
    isotropic_range: tuple[float, float] = (0.5e-3, 3.5e-3),
) -> np.ndarray:
    """Random physiological tensors with uniformly random orientation.

    The largest eigenvalue is uniform over ``axial_range`` and the two others uniform between
    ``min_radial`` and it, covering grey matter and highly anisotropic white matter. Drawn that
    way, an isotropic tensor such as free water (CSF, ~3e-3 mm²/s) is all but absent: with
    ``isotropic_fraction`` > 0 that fraction of the tensors is ``d I`` instead, with d uniform
    over ``isotropic_range``.

    Returns
    -------
    D : (n, 6) ndarray, float32, mm²/s
    """
    axial = rng.uniform(*axial_range, n)
    radial = min_radial + rng.uniform(0.0, 1.0, (n, 2)) * (axial[:, None] - min_radial)
    evals = np.concatenate([axial[:, None], radial], axis=1)
    if isotropic_fraction > 0:
        isotropic = rng.uniform(0.0, 1.0, n) < isotropic_fraction
        evals[isotropic] = rng.uniform(*isotropic_range, (int(isotropic.sum()), 1))
    R = random_rotations(n, rng=rng)
    M = (R * evals[:, None, :]) @ R.transpose(0, 2, 1)  # R diag(evals) R^T (matmul: 10x einsum here)
    return np.stack([M[:, 0, 0], M[:, 1, 1], M[:, 2, 2], M[:, 0, 1], M[:, 0, 2], M[:, 1, 2]],
                    axis=1).astype(np.float32)


def ball_and_sticks_signals(acq: Acquisition, *, d: np.ndarray, fractions: np.ndarray,
                            directions: np.ndarray) -> np.ndarray:
    """Signals of the ball-and-sticks model (S0 = 1).

    Parameters
    ----------
    acq : Acquisition
    d : (M,) ndarray, mm²/s
        Diffusivity of the ball and of every stick.
    fractions : (M, K) ndarray
        Volume fraction of each stick (a fraction 0 switches it off); the ball takes the rest.
    directions : (M, K, 3) ndarray
        Unit direction of each stick.

    Returns
    -------
    signals : (M, N) ndarray, float32

    Notes
    -----
    ``S_k = (1 - sum_i f_i) exp(-b_k d) + sum_i f_i exp(-b_k d (g_k · v_i)²)`` (Behrens et al.
    2003, Magn Reson Med 50:1077); DIPY's ``sims.voxel.sticks_and_ball`` for one voxel.
    """
    # float32 throughout: the signals are float32, and exp of (M, K, N) float64 values dominated
    d = np.asarray(d, dtype=np.float32)[:, None]
    b = acq.bvals.astype(np.float32)[None, :]
    cos2 = np.square(np.asarray(directions, dtype=np.float32) @ acq.bvecs.T.astype(np.float32))  # (M, K, N)
    f = np.asarray(fractions, dtype=np.float32)
    sticks = (f[:, None, :] @ np.exp(-(b * d)[:, None, :] * cos2))[:, 0]
    return (1.0 - f.sum(axis=1, keepdims=True)) * np.exp(-b * d) + sticks


def random_ball_and_sticks(n: int, *, rng: np.random.Generator, max_sticks: int = 3,
                           d_range: tuple[float, float] = (0.5e-3, 3.0e-3),
                           stick_fraction: tuple[float, float] = (0.2, 0.8)) -> dict[str, np.ndarray]:
    """Random ball-and-sticks parameters: 1 to ``max_sticks`` sticks in random directions.

    The total stick fraction is uniform over ``stick_fraction`` and shared among the sticks by a
    flat Dirichlet draw; the diffusivity is uniform over ``d_range``.

    Returns
    -------
    dict
        ``d`` (n,), ``fractions`` (n, max_sticks) with zeros for absent sticks, ``directions``
        (n, max_sticks, 3): the keyword arguments of :func:`ball_and_sticks_signals`.
    """
    count = rng.integers(1, max_sticks + 1, n)
    shares = rng.dirichlet(np.ones(max_sticks), n) * (np.arange(max_sticks)[None, :] < count[:, None])
    shares /= shares.sum(axis=1, keepdims=True)
    fractions = shares * rng.uniform(*stick_fraction, (n, 1))
    directions = rng.standard_normal((n, max_sticks, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return {"d": rng.uniform(*d_range, n), "fractions": fractions, "directions": directions}


def add_gaussian_noise(
    signals: np.ndarray,
    sigma: float | np.ndarray,
    *,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add zero-mean Gaussian noise and set negative values to 0, as the study did.

    Magnitude images have no negative values; the study clipped the noisy signals at 0 and so do
    we (the clean targets are never clipped: they lie in (0, S0] already).

    Parameters
    ----------
    signals : (M, N) ndarray
        Clean signals.
    sigma : float or (M,) ndarray
        Noise standard deviation, in the units of ``signals`` (S0 = 1: a fraction of S0).
    rng : numpy.random.Generator

    Returns
    -------
    noisy : (M, N) ndarray, float32
    """
    sigma = np.asarray(sigma, dtype=np.float32).reshape(-1, 1)
    noise = rng.standard_normal(signals.shape, dtype=np.float32)
    return np.maximum(signals + sigma * noise, 0.0, dtype=np.float32)


NOISE_KINDS = ("gaussian", "rician", "nc-chi")


def add_noncentral_chi_noise(
    signals: np.ndarray,
    sigma: float | np.ndarray,
    *,
    coils: int = 1,
    rng: np.random.Generator,
) -> np.ndarray:
    """Magnitude noise of a sum-of-squares reconstruction over ``coils`` receiver channels.

    Each coil sees ``S / sqrt(coils)`` plus complex Gaussian noise of standard deviation
    ``sigma`` in both the real and imaginary parts; the magnitude is the root sum of squares.
    With one coil this is Rician noise; with ``n`` coils, noncentral chi with ``2n`` degrees of
    freedom (Constantinides et al. 1997, Magn Reson Med 38:852; Dietrich et al. 2008, Magn Reson
    Imaging 26:754).

    Parameters
    ----------
    signals : (..., N) ndarray
        Clean magnitudes.
    sigma : float or ndarray broadcasting against ``signals``
        Per-channel noise standard deviation, in the units of ``signals``.
    coils : int
    rng : numpy.random.Generator

    Returns
    -------
    noisy : ndarray, float32, same shape as ``signals``
    """
    if coils < 1:
        raise ValueError(f"the number of coils must be >= 1; got {coils}")
    per_coil = np.asarray(signals, dtype=np.float32) / np.float32(np.sqrt(coils))
    sigma = np.asarray(sigma, dtype=np.float32)
    power = np.zeros(per_coil.shape, dtype=np.float32)
    for _ in range(coils):
        power += (per_coil + sigma * rng.standard_normal(per_coil.shape, dtype=np.float32)) ** 2
        power += (sigma * rng.standard_normal(per_coil.shape, dtype=np.float32)) ** 2
    return np.sqrt(power, out=power)
