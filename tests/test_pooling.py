"""Non-local pooling: the noise floor goes, the neighbours that differ stay out, water stays isotropic."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import TINY_TRAINING
from dwivae.acquisition import seed32
from dwivae.benchmark import dti_fit
from dwivae.denoise import denoise
from dwivae.pooling import nonlocal_estimate
from dwivae.simulate import add_noncentral_chi_noise, tensor_signals
from dwivae.training import train

SHAPE = (12, 12, 8)


@pytest.mark.parametrize("coils", [1, 4])
def test_pooling_removes_the_noise_floor(coils):
    rng = np.random.default_rng(0)
    truth = np.full((*SHAPE, 20), 60.0, np.float32)  # SNR 1.2 at sigma 50: the floor dominates
    noisy = add_noncentral_chi_noise(truth, 50.0, coils=coils, rng=rng)
    same = np.zeros((*SHAPE, 3), np.float32)  # every code alike: plain pooling
    out = nonlocal_estimate(noisy, truth, same, np.ones(SHAPE, bool), sigma=50.0, h=1.0, coils=coils, radius=2)
    assert noisy.mean() > 1.3 * 60  # what averaging magnitudes would keep
    assert abs(out.mean() - 60) < 6


def test_pooling_keeps_voxels_whose_codes_differ_apart():
    rng = np.random.default_rng(1)
    truth = np.where(np.arange(SHAPE[0])[:, None, None, None] < 6, 200.0, 800.0) * np.ones((*SHAPE, 10), np.float32)
    noisy = add_noncentral_chi_noise(truth, 20.0, rng=rng)
    codes = np.where(truth[..., :1] < 500, 0.0, 5.0).astype(np.float32)
    out = nonlocal_estimate(noisy, truth, codes, np.ones(SHAPE, bool), sigma=20.0, h=1.0, radius=2)
    edge = out[5:7]  # the two columns at the boundary
    np.testing.assert_allclose(edge.mean(axis=(1, 2, 3)), [200, 800], rtol=0.03)
    assert np.sqrt(np.mean((out - truth) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - truth) ** 2))


def test_pooling_leaves_voxels_outside_the_mask_alone():
    noisy = np.random.default_rng(2).uniform(1, 2, (*SHAPE, 4)).astype(np.float32)
    valid = np.zeros(SHAPE, bool)
    valid[3:6, 3:6, 3:6] = True
    out = nonlocal_estimate(noisy, noisy, np.zeros((*SHAPE, 2), np.float32), valid, sigma=0.1, h=1.0)
    np.testing.assert_array_equal(out[~valid], noisy[~valid])
    assert not np.array_equal(out[valid], noisy[valid])


@pytest.fixture(scope="module")
def matched_vae():
    config = replace(TINY_TRAINING, atoms="mixed", fresh_atoms=True, noise="rician", snr_range=(5.0, 60.0),
                     epochs=4)
    return train(seed32(), arch="vae", seed=0, config=config)


def test_pure_water_gains_no_anisotropy(matched_vae):
    acq = seed32()
    water = tensor_signals(np.tile([[2e-3, 2e-3, 2e-3, 0, 0, 0]], (np.prod(SHAPE), 1)), acq, S0=1000.0)
    clean = water.reshape(*SHAPE, -1)
    noisy = add_noncentral_chi_noise(clean, 40.0, rng=np.random.default_rng(3))
    mask = np.ones(SHAPE, bool)
    out = denoise(noisy, acq, matched_vae, mask=mask, pooling=2.5, sigma=40.0)
    fa_noisy, fa_out = (dti_fit(x, acq, mask)["fa"].mean() for x in (noisy, out))
    md_clean, md_out = (dti_fit(x, acq, mask)["md"].mean() for x in (clean, out))
    assert fa_out < 0.5 * fa_noisy
    assert abs(md_out / md_clean - 1) < 0.05
