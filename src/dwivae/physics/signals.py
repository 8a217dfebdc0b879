"""Signals against their S0: the mean of each voxel's b0 volumes, and the signals divided by it,
as the networks see them."""
from __future__ import annotations

import numpy as np

from dwivae.physics.acquisition import Acquisition


def b0_means(signals: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the b0 volumes of each row of ``signals`` (M, N) and whether the row can be
    normalised by it (finite values and ``S0 > 0``): ``(s0 (M,), valid (M,) bool)``."""
    s0 = signals[:, acq.b0_mask].mean(axis=1)
    return s0, np.isfinite(signals).all(axis=1) & (s0 > 0)


def normalise_by_b0(signals: np.ndarray, acq: Acquisition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Measured signals divided by their mean b0, as the models see them.

    Parameters
    ----------
    signals : (M, N) ndarray
        Signals in the scanner's units.
    acq : Acquisition

    Returns
    -------
    normalised : (M, N) ndarray, float32
        ``signals / S0``; rows that are not ``valid`` are left as they were.
    s0 : (M,) ndarray, float32
        Mean of the b0 volumes of each row.
    valid : (M,) bool ndarray
        Rows with finite values and ``S0 > 0``.
    """
    x = np.asarray(signals, dtype=np.float32)
    s0, valid = b0_means(x, acq)
    normalised = x / np.where(valid, s0, np.float32(1))[:, None]
    return normalised, s0, valid
