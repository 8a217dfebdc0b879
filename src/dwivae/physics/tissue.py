"""Multi-compartment tissue signals: white matter, grey matter and CSF as diffusion MRI sees them.

White matter: intra-axonal sticks dispersed around the fibre direction, an extra-axonal zeppelin
whose radial diffusivity follows the tortuosity approximation, and a free-water fraction
(the "standard model" of Novikov et al. 2019, NeuroImage 187:127, with NODDI's free water).
Grey matter: two isotropic-ish pools of slow and fast diffusion, which makes the signal non-
Gaussian at high b (positive kurtosis), with a weakly anisotropic fast pool. CSF: free water.
Every parameter is drawn per voxel from a physiological range, so that no two voxels are alike.
All functions are vectorised over voxels and take S0 = 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dwivae.physics.acquisition import Acquisition

FREE_WATER = 3.0e-3
"""Diffusivity of free water at body temperature, mm²/s."""
DISPERSION_STICKS = 16
"""Sticks averaged to disperse the intra-axonal compartment around the fibre."""


@dataclass(frozen=True)
class Ranges:
    """Physiological ranges (low, high) of the tissue parameters, drawn uniformly per voxel.

    Diffusivities in mm²/s; dispersion is the angular spread (radians, standard deviation of the
    tilt) of the sticks around the fibre.
    """

    wm_d_axial: tuple[float, float] = (1.7e-3, 2.4e-3)
    wm_intra: tuple[float, float] = (0.4, 0.7)
    wm_free_water: tuple[float, float] = (0.0, 0.1)
    wm_dispersion: tuple[float, float] = (0.1, 0.4)
    gm_slow: tuple[float, float] = (0.2e-3, 0.45e-3)
    gm_fast: tuple[float, float] = (0.9e-3, 1.4e-3)
    gm_fast_fraction: tuple[float, float] = (0.4, 0.7)
    gm_anisotropy: tuple[float, float] = (0.0, 0.3)
    gm_free_water: tuple[float, float] = (0.0, 0.1)
    csf_d: tuple[float, float] = (2.8e-3, 3.2e-3)


RANGES = Ranges()


def _cos2(directions: np.ndarray, acq: Acquisition) -> np.ndarray:
    """Squared cosines between unit directions (..., 3) and the protocol's gradients: (..., N)."""
    return np.square(np.asarray(directions, np.float32) @ acq.bvecs.T.astype(np.float32))


def dispersed_directions(directions: np.ndarray, spread: np.ndarray, *, rng: np.random.Generator,
                         count: int = DISPERSION_STICKS) -> np.ndarray:
    """``count`` unit directions (M, count, 3) tilted around each of ``directions`` (M, 3) by
    Gaussian angles of standard deviation ``spread`` (M,) radians."""
    n = np.asarray(directions, np.float64)
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    helper = np.where(np.abs(n[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    u = np.cross(n, helper)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    v = np.cross(n, u)
    tilt = rng.standard_normal((len(n), count, 2)) * np.asarray(spread)[:, None, None]
    out = n[:, None] + tilt[..., :1] * u[:, None] + tilt[..., 1:] * v[:, None]
    return (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)


def white_matter(acq: Acquisition, directions: np.ndarray, *, rng: np.random.Generator,
                 ranges: Ranges = RANGES) -> np.ndarray:
    """Signals (M, N) of white matter with fibres along ``directions`` (M, 3), parameters drawn per voxel.

    Notes
    -----
    ``S = f_w e^{-b D_w} + (1 - f_w) [f_in mean_k e^{-b D_a (g.n_k)²}
    + (1 - f_in) e^{-b (D_r + (D_a - D_r)(g.n)²)}]`` with ``D_r = D_a (1 - f_in)`` (tortuosity)
    and the sticks ``n_k`` dispersed around ``n``.
    """
    m = len(directions)
    d_a = rng.uniform(*ranges.wm_d_axial, m).astype(np.float32)[:, None]
    f_in = rng.uniform(*ranges.wm_intra, m).astype(np.float32)[:, None]
    f_w = rng.uniform(*ranges.wm_free_water, m).astype(np.float32)[:, None]
    spread = rng.uniform(*ranges.wm_dispersion, m)
    b = acq.bvals.astype(np.float32)[None, :]
    sticks = np.exp(-(b * d_a)[:, None, :] * _cos2(dispersed_directions(directions, spread, rng=rng), acq))
    d_r = d_a * (1 - f_in)
    zeppelin = np.exp(-b * (d_r + (d_a - d_r) * _cos2(directions, acq)))
    tissue = f_in * sticks.mean(axis=1) + (1 - f_in) * zeppelin
    return (f_w * np.exp(-b * FREE_WATER) + (1 - f_w) * tissue).astype(np.float32)


def grey_matter(acq: Acquisition, m: int, *, rng: np.random.Generator, ranges: Ranges = RANGES) -> np.ndarray:
    """Signals (m, N) of grey matter: a slow and a fast pool (the fast one weakly anisotropic along
    a random direction) and free water, parameters drawn per voxel."""
    b = acq.bvals.astype(np.float32)[None, :]
    slow = rng.uniform(*ranges.gm_slow, m).astype(np.float32)[:, None]
    fast = rng.uniform(*ranges.gm_fast, m).astype(np.float32)[:, None]
    f_fast = rng.uniform(*ranges.gm_fast_fraction, m).astype(np.float32)[:, None]
    f_w = rng.uniform(*ranges.gm_free_water, m).astype(np.float32)[:, None]
    aniso = rng.uniform(*ranges.gm_anisotropy, m).astype(np.float32)[:, None]
    axis = rng.standard_normal((m, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    # the fast pool's mean diffusivity stays `fast`: (d_par + 2 d_perp) / 3 = fast
    d_par, d_perp = fast * (1 + 2 * aniso / 3), fast * (1 - aniso / 3)
    fast_pool = np.exp(-b * (d_perp + (d_par - d_perp) * _cos2(axis, acq)))
    tissue = (1 - f_fast) * np.exp(-b * slow) + f_fast * fast_pool
    return (f_w * np.exp(-b * FREE_WATER) + (1 - f_w) * tissue).astype(np.float32)


def csf(acq: Acquisition, m: int, *, rng: np.random.Generator, ranges: Ranges = RANGES) -> np.ndarray:
    """Signals (m, N) of cerebrospinal fluid: free water, its diffusivity drawn per voxel."""
    d = rng.uniform(*ranges.csf_d, m).astype(np.float32)[:, None]
    return np.exp(-acq.bvals.astype(np.float32)[None, :] * d)
