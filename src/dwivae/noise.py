"""The noise level of measured data, to match the training noise to it.

With two or more b0 volumes, their spread around each voxel's mean b0 measures sigma without a
model: the b0 signal is the same in every b0 volume, so what varies is noise.
"""
from __future__ import annotations

import numpy as np

from dwivae.acquisition import Acquisition
from dwivae.errors import InputError

SNR_LIMITS = (2.0, 1000.0)
"""The SNR range handed to training is clipped to these bounds."""


def estimate_sigma(data: np.ndarray, acq: Acquisition, mask: np.ndarray) -> float:
    """Noise standard deviation from the repeated b0 volumes, in the data's units.

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
    acq : Acquisition
        Needs at least two b0 volumes.
    mask : (X, Y, Z) bool ndarray
        Voxels to pool (e.g. the brain).

    Returns
    -------
    float
        ``sqrt`` of the mean over the mask of each voxel's unbiased b0 variance. At the SNR of
        b0 images (> 5) Rician noise is close to Gaussian, so this is the per-channel sigma.
    """
    b0 = np.asarray(data[mask][:, acq.b0_mask], dtype=np.float64)
    if b0.shape[1] < 2:
        raise InputError(f"{acq.name} has {b0.shape[1]} b0 volume(s): estimating the noise needs at least two; "
                         "give the SNR range instead (--snr-range)")
    if len(b0) == 0:
        raise InputError("the mask is empty: no voxel to estimate the noise from")
    return float(np.sqrt(b0.var(axis=1, ddof=1).mean()))


def snr_range(data: np.ndarray, acq: Acquisition, mask: np.ndarray, *,
              widen: float = 2.0) -> tuple[float, tuple[float, float]]:
    """The SNR range (S0 / sigma) of the data's voxels, widened for training.

    Returns
    -------
    sigma : float
        See :func:`estimate_sigma`.
    (low, high) : (float, float)
        The 5th and 95th percentiles of the voxels' mean b0 over sigma, divided and multiplied
        by ``widen``, within ``SNR_LIMITS``.
    """
    sigma = estimate_sigma(data, acq, mask)
    s0 = np.asarray(data[mask][:, acq.b0_mask], dtype=np.float64).mean(axis=1)
    low, high = np.percentile(s0 / sigma, [5, 95])
    clip = lambda v: float(np.clip(v, *SNR_LIMITS))  # noqa: E731
    return sigma, (clip(low / widen), clip(high * widen))
