"""Denoise a 4D series held in memory (:func:`denoise`, the public ``dwivae.denoise``).

b0 volumes are kept as measured unless asked otherwise; voxels outside the mask are left as they
were. Files go through :func:`dwivae.apply.denoise_file.denoise_file`, slab by slab.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dwivae.apply.estimate import (
    Model,
    check_options,
    denoise_signals,
    learned_context_codes,
    nonlocal_signals,
    spatial_codes,
)
from dwivae.errors import InputError
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.noise import estimate_sigma, floor_in_data

if TYPE_CHECKING:

    pass



def denoise(
    data: np.ndarray,
    acq: Acquisition,
    model: Model,
    *,
    mask: np.ndarray | None = None,
    denoise_b0: bool = False,
    batch_size: int = 1 << 16,
    bias_correct: bool = False,
    sigma: float | None = None,
    coils: int = 1,
    spatial: float | None = None,
    context: bool = True,
    threads: int | None = None,
    pooling: int | None = None,
    seed: int = 0,
    keep_floor: bool = False,
) -> np.ndarray:
    """Denoise a 4D diffusion series held in memory.

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
        The diffusion series, volumes on the last axis in the protocol's order.
    acq : Acquisition
        The data's protocol; it must match the model's.
    model : TrainedModel
    mask : (X, Y, Z) bool ndarray, optional
        Voxels to denoise (default: every voxel with S0 > 0).
    denoise_b0 : bool
        Also replace the b0 volumes by the model's output.
    batch_size : int
    bias_correct : bool
        Remove the noise floor of the output (see :func:`denoise_signals`).
    sigma : float, optional
        The data's noise level, for ``bias_correct`` and ``spatial`` (default: measured in the
        mask, :func:`dwivae.physics.noise.estimate_sigma`).
    coils : int
        Receive coils of the magnitude noise (1: Rician).
    spatial : float, optional
        Decode each voxel's latent mean averaged over its neighbourhood with this strength
        (:func:`spatial_codes`) instead of its own.
    context : bool
        Use the model's learned context network (:func:`learned_context_codes`), if it has one;
        False denoises voxel by voxel.
    threads : int, optional
        Threads of the compiled forward pass (default: the CPUs this process may use).
    pooling : int, optional
        Estimate each voxel as the low-rank part of a group of about this many voxels of like
        latent codes (:func:`nonlocal_signals`), noise floor removed, instead of decoding it alone.
    seed : int
        Seed of the grouping.
    keep_floor : bool
        With ``pooling``: keep the noise floor in the output, as MP-PCA does. It is kept in any case
        where the data show no floor at ``sigma`` (:func:`dwivae.physics.noise.floor_in_data`).

    Returns
    -------
    denoised : (X, Y, Z, N) ndarray, float32
    """
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[-1] != acq.n_volumes:
        raise InputError(f"data of shape {data.shape} does not hold {acq.n_volumes} volumes on a 4th axis")
    context = check_options(model, acq, spatial=spatial, pooling=pooling, context=context, bias_correct=bias_correct,
                            sigma=sigma, coils=coils)
    if mask is not None and mask.shape != data.shape[:3]:
        raise InputError(f"mask has shape {mask.shape} but the data has {data.shape[:3]}")
    out = data.astype(np.float32, copy=True)
    inside = np.ones(data.shape[:3], bool) if mask is None else mask.astype(bool)
    if sigma is None and (bias_correct or spatial is not None or pooling is not None):
        sigma = estimate_sigma(data, acq, inside)
    if pooling is not None:
        signals = out[inside]
        keep_floor = keep_floor or not floor_in_data(signals, sigma, coils=coils, volumes=~acq.b0_mask)
        out[inside] = nonlocal_signals(signals, np.argwhere(inside), acq, model, sigma=sigma, group=pooling,
                                       coils=coils, denoise_b0=denoise_b0, seed=seed, keep_floor=keep_floor)
        return out
    codes = None
    if spatial is not None:
        codes = spatial_codes([(0, data.shape[2], data)], inside, acq, model, sigma=sigma, strength=spatial,
                              coils=coils)[0][inside]
    elif context:
        codes = learned_context_codes([(0, data.shape[2], data)], inside, acq, model)[inside]
    out[inside], _, _ = denoise_signals(data[inside], acq, model, denoise_b0=denoise_b0, batch_size=batch_size,
                                        bias_sigma=sigma if bias_correct else None, coils=coils, codes=codes,
                                        threads=threads)
    return out
