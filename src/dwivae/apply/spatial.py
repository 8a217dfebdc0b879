"""Spatial context for a voxel-wise model: edge-aware averaging of latent codes over a neighbourhood.

A voxel-wise network sees one voxel's signal, so it cannot pool noise across voxels as MP-PCA
does; a plain average over neighbours does, but blurs tissue boundaries. Here each voxel's latent
mean is replaced by a weighted mean over its (2r + 1)³ neighbourhood, with weights
``exp(-|mu_k - mu_c|² / h²)``: neighbours whose codes are close (the same tissue, the same
fibre direction) count, those across a boundary do not. ``h`` is ``strength`` times ``scale``,
the distance that noise alone puts between two codes of the same signal
(:func:`dwivae.apply.estimate.code_noise_scale` measures it by a parametric bootstrap; the distance
between face neighbours' codes, an earlier choice, also counts anatomy and was twice as large
on real data). It is a bilateral (non-local-means-like) filter in the latent space (Tomasi and
Manduchi 1998; Buades et al. 2005), not a learned one.
"""
from __future__ import annotations

import itertools

import numpy as np

from dwivae.errors import InputError


def neighbourhood_average(latent: np.ndarray, valid: np.ndarray, *, h: float, radius: int = 1) -> np.ndarray:
    """Edge-aware average of latent codes over each voxel's neighbourhood.

    Parameters
    ----------
    latent : (X, Y, Z, L) ndarray
        Latent means; only ``valid`` voxels are read.
    valid : (X, Y, Z) bool ndarray
    h : float
        Distance scale of the weights ``exp(-d² / h²)``.
    radius : int
        Neighbourhood radius r: (2r + 1)³ voxels.

    Returns
    -------
    (X, Y, Z, L) ndarray, float32
        Averaged codes in ``valid`` voxels, the input's elsewhere.
    """
    if not h > 0:
        raise InputError(f"the latent distance scale must be positive, got {h}")
    shape = valid.shape
    centre = np.where(valid[..., None], latent, 0.0).astype(np.float32)
    pad = [(radius, radius)] * 3
    codes = np.pad(centre, pad + [(0, 0)])
    inside = np.pad(valid.astype(np.float32), pad)
    total_w = np.zeros(shape, np.float32)
    total = np.zeros(centre.shape, np.float32)
    for dx, dy, dz in itertools.product(range(2 * radius + 1), repeat=3):
        window = (slice(dx, dx + shape[0]), slice(dy, dy + shape[1]), slice(dz, dz + shape[2]))
        neighbour = codes[window]
        w = np.exp(-np.sum((neighbour - centre) ** 2, axis=-1) / (h * h)) * inside[window]
        total_w += w
        total += w[..., None] * neighbour
    out = np.array(latent, dtype=np.float32, copy=True)
    out[valid] = total[valid] / total_w[valid, None]  # the centre's own weight is 1: total_w >= 1
    return out


def smooth_codes(latent: np.ndarray, valid: np.ndarray, *, scale: float, strength: float = 2.0,
                 radius: int = 1) -> tuple[np.ndarray, float]:
    """:func:`neighbourhood_average` with ``h = strength * scale``.

    Parameters
    ----------
    latent : (X, Y, Z, L) ndarray
    valid : (X, Y, Z) bool ndarray
    scale : float
        The distance that noise alone puts between two codes of one signal.
    strength : float
    radius : int

    Returns
    -------
    latent : (X, Y, Z, L) ndarray, float32
    h : float
        The distance scale used.
    """
    if not strength > 0:
        raise InputError(f"the spatial strength must be positive, got {strength}")
    h = strength * scale
    if h == 0:  # noise-free codes: nothing to average
        return np.array(latent, dtype=np.float32, copy=True), 0.0
    return neighbourhood_average(latent, valid, h=h, radius=radius), h
