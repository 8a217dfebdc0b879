from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import real_sample

from dwivae.errors import InputError
from dwivae.physics.acquisition import load_acquisition
from dwivae.physics.noise import (
    estimate_sigma,
    floor_in_data,
    marchenko_pastur_variance,
    noncentral_chi_mean,
    remove_noise_floor,
    sigma_method,
    snr_range,
)
from dwivae.physics.phantom import make_phantom


@pytest.mark.parametrize("noise, snr", [("gaussian", 20), ("rician", 30)])
def test_sigma_from_the_b0_volumes(acq, noise, snr):
    phantom = make_phantom(acq, shape=(32, 32, 16), snr=snr, noise=noise, seed=1)
    mask = phantom.labels > 0
    assert estimate_sigma(phantom.noisy, acq, mask, method="b0") == pytest.approx(phantom.sigma, rel=0.05)
    sigma, (low, high) = snr_range(phantom.noisy, acq, mask, widen=1.0)
    # S0 is 1000 (WM), 1300 (GM) or 2500 (CSF), times exp(-50 MD) at b=50
    assert 0.85 * 1000 / phantom.sigma < low < high < 2500 / phantom.sigma * 1.1


def test_one_b0_is_not_enough_for_the_b0_estimate():
    from dwivae.physics.acquisition import Acquisition
    bvecs = np.r_[[[0, 0, 0]], np.eye(3), np.eye(3)[::-1]]
    acq = Acquisition(np.r_[0, np.full(6, 1000.0)], bvecs)
    with pytest.raises(InputError, match="needs at least two"):
        estimate_sigma(np.ones((4, 4, 4, 7)), acq, np.ones((4, 4, 4), bool), method="b0")
    with pytest.raises(InputError, match="unknown noise estimate"):
        estimate_sigma(np.ones((4, 4, 4, 7)), acq, np.ones((4, 4, 4), bool), method="piesno")


@pytest.mark.parametrize("snr", [10, 30])
def test_mppca_sigma_with_one_b0(snr):
    from dwivae.physics.acquisition import Acquisition, seed32
    full = seed32()
    keep = np.r_[0, np.flatnonzero(~full.b0_mask)]  # one b0 and the 30 directions
    acq = Acquisition(full.bvals[keep], full.bvecs[keep])
    phantom = make_phantom(acq, shape=(40, 40, 20), snr=snr, noise="rician", seed=2)
    mask = phantom.labels > 0
    assert sigma_method() == "mppca"
    assert estimate_sigma(phantom.noisy, acq, mask) == pytest.approx(phantom.sigma, rel=0.15)
    sigma, (low, high) = snr_range(phantom.noisy, acq, mask, widen=1.0)
    assert sigma == estimate_sigma(phantom.noisy, acq, mask) and low < high


def test_marchenko_pastur_variance_finds_the_noise_below_a_low_rank_signal():
    rng = np.random.default_rng(4)
    samples, volumes, sigma = 125, 40, 3.0
    signal = rng.normal(size=(samples, 3)) @ rng.normal(size=(3, volumes)) * 20  # rank 3, far above the noise
    patches = np.stack([signal + rng.normal(0, sigma, signal.shape) for _ in range(20)])
    patches -= patches.mean(axis=1, keepdims=True)
    values = np.linalg.eigvalsh(np.einsum("psi,psj->pij", patches, patches) / samples)
    variance = marchenko_pastur_variance(values, samples)
    assert np.median(variance) == pytest.approx(sigma ** 2, rel=0.1)
    assert np.all(variance < 2 * sigma ** 2)  # the three signal components are never taken for noise


def test_mppca_sigma_matches_dipy_on_a_real_crop():
    """On real data (where the spread of the b0 volumes also counts motion) it is DIPY's estimate."""
    from dipy.denoise.localpca import mppca

    image, bval, bvec = real_sample("mrtrix_msmt_dwi")
    data = np.asarray(nib.load(image).dataobj, np.float32)
    acq = load_acquisition(bval, bvec)
    mask = data[..., acq.b0_mask].mean(axis=-1) > np.percentile(data[..., acq.b0_mask], 40)
    ours = estimate_sigma(data, acq, mask)
    with np.errstate(invalid="ignore", divide="ignore"):
        _, dipy_sigma = mppca(data, mask=mask, patch_radius=2, return_sigma=True, suppress_warning=True)
    assert ours == pytest.approx(np.median(dipy_sigma[mask & (dipy_sigma > 0)]), rel=0.1)
    assert ours < 0.5 * estimate_sigma(data, acq, mask, method="b0")


@pytest.mark.parametrize("coils", [1, 4])
def test_noise_floor_removal_inverts_the_expected_magnitude(coils):
    sigma = 20.0
    nu = np.array([0.3, 1.0, 2.5, 10.0, 59.0, 80.0, 500.0]) * sigma
    expected = noncentral_chi_mean(nu / sigma, coils) * sigma
    assert np.all(expected > nu)  # the floor lifts every expected magnitude
    np.testing.assert_allclose(remove_noise_floor(expected, sigma, coils=coils), nu, rtol=1e-4)


def test_rician_mean_matches_scipy_and_a_simulation():
    from scipy.stats import rice
    theta = np.array([0.0, 0.5, 2.0, 7.0])
    np.testing.assert_allclose(noncentral_chi_mean(theta), rice(b=theta).mean(), rtol=1e-6)
    rng = np.random.default_rng(0)
    nu, sigma = 30.0, 20.0  # SNR 1.5: a floor of about 60 % of nu
    magnitude = np.hypot(nu + sigma * rng.standard_normal(400_000), sigma * rng.standard_normal(400_000))
    assert magnitude.mean() > 1.2 * nu
    assert remove_noise_floor(magnitude.mean(), sigma) == pytest.approx(nu, rel=0.01)


@pytest.mark.parametrize("coils", [1, 4])
def test_the_floor_removal_is_the_same_compiled_and_in_numpy(coils, monkeypatch):
    from dwivae.kernels.bindings import library

    if library() is None:
        pytest.skip("no compiled kernel here")
    sigma = 3.0
    values = np.r_[np.linspace(-5.0, 80.0, 40002), np.nan, np.inf, -np.inf] * sigma
    compiled = remove_noise_floor(values.reshape(-1, 3), sigma, coils=coils)
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")  # no compiled kernel: the numpy path
    in_numpy = remove_noise_floor(values.reshape(-1, 3), sigma, coils=coils)
    np.testing.assert_allclose(compiled, in_numpy, rtol=1e-6, atol=1e-6 * sigma)
    assert compiled.shape == (len(values) // 3, 3) and compiled.dtype == np.float32


def test_noise_floor_removal_edges():
    floor = noncentral_chi_mean(0.0) * 10.0
    out = remove_noise_floor(np.array([0.0, 0.5 * floor, floor, np.nan]), 10.0)
    np.testing.assert_array_equal(out[:2], 0.0)
    assert out[2] < 1e-6 * 10.0  # the floor, read back through a rounding: 0 but for the last bits
    assert np.isnan(out[3]) and out.dtype == np.float32
    with pytest.raises(InputError, match="must be positive"):
        remove_noise_floor(np.ones(3), 0.0)
    with pytest.raises(InputError, match="at least 1"):
        remove_noise_floor(np.ones(3), 1.0, coils=0)


@pytest.mark.parametrize("volumes", [6, 30, 64])
def test_the_floor_is_seen_in_magnitudes_and_not_in_real_valued_data_or_at_a_wrong_sigma(volumes):
    rng = np.random.default_rng(8)
    nu = rng.uniform(0, 3, (4000, 1))  # many voxels at the floor, as CSF at high b
    magnitude = np.hypot(nu + rng.normal(size=(4000, volumes)), rng.normal(size=(4000, volumes)))
    assert floor_in_data(magnitude, 1.0)
    assert not floor_in_data(nu + rng.normal(size=(4000, volumes)), 1.0)  # real-valued: negative values
    assert not floor_in_data(magnitude, 2.5)  # a sigma read far too high: the data lie below its floor
