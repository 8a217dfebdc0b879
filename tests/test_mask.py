"""The automatic brain mask is DIPY's median_otsu, voxel for voxel."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import real_sample
from scipy.ndimage import median_filter as scipy_median_filter

from dwivae.apply import mask


@pytest.mark.parametrize("radius", [0, 1, 2, 4])
def test_median_filter_equals_scipy_with_reflected_edges(radius):
    rng = np.random.default_rng(radius)
    volume = rng.normal(size=(13, 11, 9)).astype(np.float32)
    volume[2, 3, 4], volume[5, 5, 5] = np.inf, -np.inf
    for v in (volume, np.round(volume * 2)):  # with many ties too
        np.testing.assert_array_equal(mask.median_filter(v, radius, threads=2),
                                      scipy_median_filter(v, size=2 * radius + 1, mode="reflect"))


def test_median_filter_falls_back_to_scipy_without_the_kernel(monkeypatch):
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    volume = np.random.default_rng(0).normal(size=(6, 7, 8)).astype(np.float32)
    np.testing.assert_array_equal(mask.median_filter(volume, 1), scipy_median_filter(volume, size=3, mode="reflect"))


@pytest.mark.parametrize("name", ["small_64D", "mrtrix_msmt_dwi"])
def test_mask_equals_dipy_median_otsu_on_real_data(name):
    from dipy.segment.mask import median_otsu

    from dwivae.physics.acquisition import load_acquisition

    image, bval, bvec = real_sample(name)
    b0 = np.asarray(nib.load(image).dataobj, dtype=np.float32)[..., load_acquisition(bval, bvec).b0_mask].mean(axis=-1)
    _, expected = median_otsu(b0, median_radius=2, numpass=1)
    got = mask.median_otsu_mask(b0)
    assert 0 < got.sum() < got.size
    np.testing.assert_array_equal(got, expected)
    _, expected = median_otsu(b0, median_radius=1, numpass=2)
    np.testing.assert_array_equal(mask.median_otsu_mask(b0, median_radius=1, numpass=2), expected)
