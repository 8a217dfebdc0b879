"""Spatial context for a voxel-wise model: latent codes combined over a voxel's neighbourhood, by an
edge-aware average or by a learned context network (:func:`context_codes`).

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

from typing import TYPE_CHECKING

import numpy as np

from dwivae.errors import InputError

if TYPE_CHECKING:
    from dwivae.learn.models import ContextNet


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


def context_codes(latent: np.ndarray, valid: np.ndarray, net: ContextNet, *, chunk: int = 1 << 15) -> np.ndarray:
    """Apply a context network to a volume of latent codes.

    Parameters
    ----------
    latent : (X, Y, Z, L) ndarray
        Latent means; only ``valid`` voxels are read.
    valid : (X, Y, Z) bool ndarray
    net : ContextNet
    chunk : int
        Voxels per pass (memory: chunk x (2r + 1)³ x L floats).

    Returns
    -------
    (X, Y, Z, L) ndarray, float32
        New codes in ``valid`` voxels, the input's elsewhere.
    """
    import torch

    from dwivae.learn.models import neighbour_offsets

    r = net.config.radius
    pad = [(r, r)] * 3
    with torch.inference_mode():
        codes = torch.from_numpy(np.pad(np.where(valid[..., None], latent, 0.0).astype(np.float32), pad + [(0, 0)]))
        exists = torch.from_numpy(np.pad(valid, pad))
        flat_codes, flat_exists = codes.reshape(-1, codes.shape[-1]), exists.reshape(-1)
        strides = torch.tensor([exists.shape[1] * exists.shape[2], exists.shape[2], 1])
        shifts = (neighbour_offsets(r).long() * strides).sum(dim=1)  # (K,) flat offsets, C order as in training
        centres = (torch.from_numpy(np.argwhere(valid)) + r) @ strides
        out = np.array(latent, dtype=np.float32, copy=True)
        result = np.empty((len(centres), latent.shape[-1]), np.float32)
        for start in range(0, len(centres), chunk):
            index = centres[start:start + chunk, None] + shifts[None, :]
            result[start:start + chunk] = net(flat_codes[index], flat_exists[index]).numpy()
    out[valid] = result
    return out
