from __future__ import annotations

import numpy as np
import pytest

from dwivae.errors import InputError
from dwivae.noise import estimate_sigma, snr_range
from dwivae.phantom import make_phantom


@pytest.mark.parametrize("noise, snr", [("gaussian", 20), ("rician", 30)])
def test_sigma_from_the_b0_volumes(acq, noise, snr):
    phantom = make_phantom(acq, shape=(32, 32, 16), snr=snr, noise=noise, seed=1)
    mask = phantom.labels > 0
    assert estimate_sigma(phantom.noisy, acq, mask) == pytest.approx(phantom.sigma, rel=0.05)
    sigma, (low, high) = snr_range(phantom.noisy, acq, mask, widen=1.0)
    # S0 is 1000 (WM), 1300 (GM) or 2500 (CSF), times exp(-50 MD) at b=50
    assert 0.85 * 1000 / phantom.sigma < low < high < 2500 / phantom.sigma * 1.1


def test_one_b0_is_not_enough():
    from dwivae.acquisition import Acquisition
    bvecs = np.r_[[[0, 0, 0]], np.eye(3), np.eye(3)[::-1]]
    acq = Acquisition(np.r_[0, np.full(6, 1000.0)], bvecs)
    with pytest.raises(InputError, match="needs at least two"):
        estimate_sigma(np.ones((4, 4, 4, 7)), acq, np.ones((4, 4, 4), bool))
