"""Edge-aware averaging of latent codes: less noise inside a region, the boundary kept."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dwivae.apply.spatial import neighbourhood_average, smooth_codes
from dwivae.errors import InputError


def two_regions(noise: float, seed: int = 0):
    """Codes of two half-volumes (x < 8 and x >= 8), 4 units apart on every axis, plus noise."""
    truth = np.zeros((16, 12, 10, 3), np.float32)
    truth[8:] = 4.0
    rng = np.random.default_rng(seed)
    return truth, truth + noise * rng.standard_normal(truth.shape).astype(np.float32)


def test_edge_aware_average_lowers_noise_and_keeps_the_boundary():
    truth, codes = two_regions(0.5)
    valid = np.ones(codes.shape[:3], bool)
    noise_scale = np.sqrt(2) * 0.5 * stats.chi(df=3).median()  # between two noisy codes of one signal
    smoothed, h = smooth_codes(codes, valid, scale=noise_scale, strength=2.0)
    assert h == pytest.approx(2 * noise_scale)
    interior = np.zeros(valid.shape, bool)
    interior[1:6, 1:-1, 1:-1] = True
    interior[10:-1, 1:-1, 1:-1] = True
    assert np.std(smoothed[interior] - truth[interior]) < 0.45 * np.std(codes[interior] - truth[interior])
    # voxels next to the boundary keep their side's value; a plain 3x3x3 mean mixes in a third of the other
    edge = np.zeros(valid.shape, bool)
    edge[[7, 8], 1:-1, 1:-1] = True
    plain = neighbourhood_average(codes, valid, h=1e6)
    assert np.abs(plain[edge] - truth[edge]).mean() > 1.0
    assert np.abs(smoothed[edge] - truth[edge]).mean() < 0.3


def test_invalid_voxels_are_neither_read_nor_changed():
    _, codes = two_regions(0.3)
    valid = np.ones(codes.shape[:3], bool)
    valid[::3, ::2] = False
    poisoned = codes.copy()
    poisoned[~valid] = 1e6
    a = neighbourhood_average(codes, valid, h=1.0)
    b = neighbourhood_average(poisoned, valid, h=1.0)
    np.testing.assert_array_equal(a[valid], b[valid])
    np.testing.assert_array_equal(b[~valid], poisoned[~valid])


def test_noise_free_codes_are_left_alone_and_bad_scales_refused():
    codes = np.random.default_rng(0).random((5, 5, 5, 2)).astype(np.float32)
    valid = np.ones((5, 5, 5), bool)
    out, h = smooth_codes(codes, valid, scale=0.0)
    assert h == 0.0 and np.array_equal(out, codes)
    with pytest.raises(InputError, match="must be positive"):
        neighbourhood_average(codes, valid, h=0.0)
    with pytest.raises(InputError, match="must be positive"):
        smooth_codes(codes, valid, scale=1.0, strength=-1.0)
