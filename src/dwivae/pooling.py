"""Non-local pooling of measured signals, with weights from the autoencoder's latent codes.

Each voxel's estimate pools the measured signals of the voxels of a (2r + 1)³ search window
whose latent codes lie close to its own, ``w_j = exp(-|mu_j - mu_i|² / h²)``, where ``h`` is a
multiple of the distance that noise alone puts between two codes of one signal
(:func:`dwivae.denoise.code_noise_scale`): the encoder says which voxels hold the same tissue,
the data say what its signal is. Two things keep the pooled estimate honest:

- **The noise floor.** What is pooled is the squared magnitude, whose expectation is
  ``nu² + 2 N sigma²`` for the root sum of squares of N coils (N = 1: Rician), so that
  ``sqrt(mean M² - 2 N sigma²)`` estimates the true signal nu without the floor that averaging
  magnitudes keeps (Wiest-Daesslé et al. 2008, MICCAI LNCS 5242:171).
- **What is the voxel's own.** Pooling blurs what differs from voxel to voxel; the decoder's
  estimate of the voxel, minus the same pooling of its neighbours' decoder estimates, is that
  difference as the learned signal model sees it, and a fraction ``detail`` of it is added back.
"""
from __future__ import annotations

import numpy as np

DEFAULT_STRENGTH = 2.5
"""``h`` in units of the codes' noise scale (chosen on the 102-volume realistic phantom)."""
DEFAULT_RADIUS = 2
"""Search window radius: 5 x 5 x 5 voxels."""
DEFAULT_DETAIL = 0.6
"""Fraction of the decoder's own voxel-to-neighbourhood difference added back."""


def _bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice]:
    where = [np.flatnonzero(np.asarray(mask).any(axis=tuple(a for a in range(3) if a != k))) for k in range(3)]
    return tuple(slice(int(w[0]), int(w[-1]) + 1) for w in where)


def nonlocal_estimate(measured: np.ndarray, decoded: np.ndarray, codes: np.ndarray, valid: np.ndarray, *,
                      sigma: float, h: float, coils: int = 1, radius: int = DEFAULT_RADIUS,
                      detail: float = DEFAULT_DETAIL) -> np.ndarray:
    """The pooled estimate of every valid voxel (see the module's description).

    Parameters
    ----------
    measured : (X, Y, Z, N) ndarray
        Measured magnitudes.
    decoded : (X, Y, Z, N) ndarray
        The decoder's estimate of each voxel's noise-free signal, in the same units.
    codes : (X, Y, Z, L) ndarray
        Latent means.
    valid : (X, Y, Z) bool ndarray
        Voxels to estimate and to pool from.
    sigma : float
        Noise standard deviation per real channel, in the units of ``measured``.
    h : float
        Distance scale of the weights, in latent units.
    coils : int
        Receive coils of the root-sum-of-squares magnitude (1: Rician).
    radius : int
        Search window radius.
    detail : float
        Fraction of the decoder's voxel-to-neighbourhood difference added back (0: plain pooling).

    Returns
    -------
    (X, Y, Z, N) ndarray, float32
        The estimate in valid voxels, ``measured`` elsewhere.
    """
    out = np.array(measured, dtype=np.float32, copy=True)
    if not valid.any():
        return out
    box = _bounding_box(valid)
    inside = valid[box]
    pad = [(radius, radius)] * 3
    z = np.asarray(codes[box], np.float32) * inside[..., None]
    z_pad = np.pad(z, [*pad, (0, 0)])
    v_pad = np.pad(inside, pad)
    power = np.square(np.asarray(measured[box], np.float32)) * inside[..., None]
    dec = np.asarray(decoded[box], np.float32) * inside[..., None]
    p_pad, d_pad = np.pad(power, [*pad, (0, 0)]), np.pad(dec, [*pad, (0, 0)])
    shape = inside.shape
    sum_power = np.zeros_like(power)
    sum_dec = np.zeros_like(dec)
    weights = np.zeros(shape, np.float32)
    inv_h2 = np.float32(1.0 / h ** 2)
    span = range(2 * radius + 1)
    for i in span:
        for j in span:
            for k in span:
                window = (slice(i, i + shape[0]), slice(j, j + shape[1]), slice(k, k + shape[2]))
                diff = z - z_pad[window]
                w = np.exp(-np.einsum("...l,...l->...", diff, diff) * inv_h2) * v_pad[window]
                weights += w
                sum_power += w[..., None] * p_pad[window]
                sum_dec += w[..., None] * d_pad[window]
    weights = np.maximum(weights, np.float32(1e-12))[..., None]
    pooled = np.sqrt(np.maximum(sum_power / weights - np.float32(2 * coils * sigma ** 2), 0.0))
    estimate = pooled + np.float32(detail) * (dec - sum_dec / weights)
    region = out[box]
    region[inside] = np.maximum(estimate[inside], 0.0)
    return out
