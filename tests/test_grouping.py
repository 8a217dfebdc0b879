"""Grouped low-rank estimate: the floor goes, tissues stay apart, water stays isotropic, the phantom gains."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import TINY_TRAINING

from dwivae.apply.denoise import denoise
from dwivae.apply.grouping import LOWEST_SIGNAL, grouped_estimate, kmeans_labels, project_group, remove_floor_by_shell
from dwivae.compare.benchmark import dti_fit
from dwivae.learn.training import train
from dwivae.physics.acquisition import seed32
from dwivae.physics.noise import noncentral_chi_mean, remove_noise_floor
from dwivae.physics.phantom import make_realistic_phantom
from dwivae.physics.simulate import add_noncentral_chi_noise, tensor_signals

SHAPE = (12, 12, 8)


def _decay(count: int, volumes: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` series of one to three exponential decays: low rank, as diffusion signals are."""
    rates = np.array([0.5, 2.0, 6.0])
    weights = rng.uniform(0.2, 1.0, (count, 3))
    return 500 * weights @ np.exp(-rates[:, None] * np.linspace(0, 1, volumes)[None])


def test_projection_keeps_the_signal_and_drops_most_of_the_noise():
    rng = np.random.default_rng(0)
    clean = _decay(150, 40, rng)
    noisy = clean + rng.normal(0, 10.0, clean.shape)
    out = project_group(noisy, 10.0)
    assert np.sqrt(np.mean((out - clean) ** 2)) < 0.4 * np.sqrt(np.mean((noisy - clean) ** 2))
    np.testing.assert_array_equal(project_group(noisy[:5], 10.0), noisy[:5])  # too few voxels to tell


@pytest.mark.parametrize("coils", [1, 4])
def test_the_noise_floor_is_removed(coils):
    rng = np.random.default_rng(1)
    truth = np.full((*SHAPE, 20), 60.0, np.float32)  # SNR 1.2 at sigma 50: the floor dominates
    noisy = add_noncentral_chi_noise(truth, 50.0, coils=coils, rng=rng)
    codes = rng.normal(size=(*SHAPE, 3)).astype(np.float32)  # one tissue: codes differ by noise alone
    out = grouped_estimate(noisy, codes, np.ones(SHAPE, bool), sigma=50.0, coils=coils)
    assert noisy.mean() > 1.3 * 60  # what averaging magnitudes would keep
    assert abs(out.mean() - 60) < 6
    kept = grouped_estimate(noisy, codes, np.ones(SHAPE, bool), sigma=50.0, coils=coils, remove_floor=False)
    assert abs(kept.mean() / noisy.mean() - 1) < 0.05  # the expected magnitude, as MP-PCA keeps it


def test_a_shell_near_the_floor_keeps_its_directions_in_proportion():
    """Below the floor the differences between directions are noise: one factor, no anisotropy made."""
    jitter = np.random.default_rng(7).uniform(0.95, 1.05, 30)
    shells = np.r_[0, 0, np.ones(30, int)]
    for nu, common in ((0.8, True), (10.0, False)):  # shell signal in units of sigma
        expected = np.r_[20.0, 20.0, noncentral_chi_mean(np.float64(nu)) * jitter][None] * 5.0  # sigma 5
        out = remove_floor_by_shell(expected, 5.0, shells)
        ratio = out[0, 2:] / expected[0, 2:]
        if common:
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-6)  # the input's direction contrast, no more
            assert ratio[0] < 0.9  # the floor still comes off
        else:
            np.testing.assert_allclose(out, remove_noise_floor(expected, 5.0), rtol=1e-6)


def test_the_floor_removal_never_returns_zero():
    """A log-linear fit takes 0 as log 0: what lies at or below the floor comes out small, not 0."""
    sigma = 5.0
    floor = float(noncentral_chi_mean(np.float64(0.0))) * sigma
    expected = np.array([[20.0, 0.5 * floor, floor, 1.05 * floor, 3 * floor, 40.0],
                         [20.0, 30.0, 35.0, 40.0, 45.0, 50.0]])
    out = remove_floor_by_shell(expected, sigma, np.r_[0, 1, 1, 1, 1, 1])
    assert out.min() == pytest.approx(LOWEST_SIGNAL * sigma) == out[0, 1]  # below the floor: not 0
    np.testing.assert_allclose(out[1], remove_noise_floor(expected[1:], sigma)[0], rtol=1e-6)  # clear of the floor


def test_voxels_whose_codes_differ_are_not_mixed():
    rng = np.random.default_rng(2)
    left = np.broadcast_to(np.arange(SHAPE[0])[:, None, None] < 6, SHAPE)
    truth = np.where(left[..., None], 200.0, 800.0) * np.linspace(1, 0.5, 10) ** np.where(left, 1, 3)[..., None]
    noisy = add_noncentral_chi_noise(truth.astype(np.float32), 20.0, rng=rng)
    codes = (np.where(left, 0.0, 30.0)[..., None] + rng.normal(size=(*SHAPE, 2))).astype(np.float32)
    out = grouped_estimate(noisy, codes, np.ones(SHAPE, bool), sigma=20.0, group=50)
    edge = out[5:7]  # the two columns at the boundary
    np.testing.assert_allclose(edge.mean(axis=(1, 2)), truth[5:7].mean(axis=(1, 2)), rtol=0.03)
    assert np.sqrt(np.mean((out - truth) ** 2)) < 0.5 * np.sqrt(np.mean((noisy - truth) ** 2))


def test_voxels_outside_the_mask_are_left_alone():
    noisy = np.random.default_rng(3).uniform(1, 2, (*SHAPE, 4)).astype(np.float32)
    valid = np.zeros(SHAPE, bool)
    valid[2:8, 2:8, 2:8] = True
    codes = np.random.default_rng(4).normal(size=(*SHAPE, 2)).astype(np.float32)
    out = grouped_estimate(noisy, codes, valid, sigma=0.1)
    np.testing.assert_array_equal(out[~valid], noisy[~valid])
    assert not np.array_equal(out[valid], noisy[valid])


def test_the_seed_fixes_the_result():
    rng = np.random.default_rng(5)
    noisy = (_decay(int(np.prod(SHAPE)), 12, rng) + rng.normal(0, 10, (int(np.prod(SHAPE)), 12))).reshape(*SHAPE, 12)
    codes = rng.normal(size=(*SHAPE, 3))
    first, second = (grouped_estimate(noisy, codes, np.ones(SHAPE, bool), sigma=10.0, group=40, seed=7)
                     for _ in range(2))
    np.testing.assert_array_equal(first, second)


def test_kmeans_finds_clusters_that_stand_apart():
    rng = np.random.default_rng(8)
    truth = rng.integers(0, 3, 300)
    codes = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]])[truth] + rng.normal(size=(300, 2))
    labels = kmeans_labels(codes, 3, np.uint64(11))
    assert len(np.unique(labels)) == 3
    assert all(len(np.unique(labels[truth == c])) == 1 for c in range(3))  # one label per cluster
    np.testing.assert_array_equal(kmeans_labels(codes, 3, np.uint64(11)), labels)


def test_the_compiled_passes_give_what_numpy_gives(monkeypatch):
    """The kernel (k-means, covariance, eigenvectors, projection in C) and the numpy path agree."""
    from dwivae.kernels.bindings import library

    if library() is None:
        pytest.skip("no compiled kernel here")
    rng = np.random.default_rng(10)
    shape = (20, 20, 12)
    left = np.broadcast_to(np.arange(shape[0])[:, None, None] < 9, shape)
    clean = _decay(int(np.prod(shape)), 24, rng).reshape(*shape, 24) * np.where(left, 1.0, 0.6)[..., None]
    noisy = np.abs(clean + rng.normal(0, 15, clean.shape)).astype(np.float32)
    codes = np.where(left, 0.0, 20.0)[..., None] + rng.normal(size=(*shape, 4))
    valid = np.ones(shape, bool)
    valid[:3] = False
    compiled = grouped_estimate(noisy, codes, valid, sigma=15.0, group=60, seed=4)
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")  # no compiled kernel: the numpy path
    in_numpy = grouped_estimate(noisy, codes, valid, sigma=15.0, group=60, seed=4)
    np.testing.assert_allclose(compiled, in_numpy, rtol=1e-5, atol=1e-3)
    assert np.sqrt(np.mean((compiled[valid] - clean[valid]) ** 2)) < 0.6 * np.sqrt(np.mean(
        (noisy[valid] - clean[valid]) ** 2))


@pytest.fixture(scope="module")
def matched_vae():
    config = replace(TINY_TRAINING, atoms="mixed", fresh_atoms=True, noise="rician", snr_range=(5.0, 60.0),
                     epochs=4)
    return train(seed32(), arch="vae", seed=0, config=config)


def test_pure_water_gains_no_anisotropy(matched_vae):
    acq = seed32()
    water = tensor_signals(np.tile([[2e-3, 2e-3, 2e-3, 0, 0, 0]], (np.prod(SHAPE), 1)), acq, S0=1000.0)
    clean = water.reshape(*SHAPE, -1)
    noisy = add_noncentral_chi_noise(clean, 40.0, rng=np.random.default_rng(6))
    mask = np.ones(SHAPE, bool)
    out = denoise(noisy, acq, matched_vae, mask=mask, pooling=150, sigma=40.0, denoise_b0=True)
    fa_noisy, fa_out = (dti_fit(x, acq, mask)["fa"].mean() for x in (noisy, out))
    md_clean, md_out = (dti_fit(x, acq, mask)["md"].mean() for x in (clean, out))
    assert fa_out < 0.5 * fa_noisy
    assert abs(md_out / md_clean - 1) < 0.03


def test_data_without_a_floor_keep_it(matched_vae):
    """Real-valued data (phase-corrected, Gaussian noise) hold no floor: nothing is taken off."""
    acq = seed32()
    clean = tensor_signals(np.tile([[1.5e-3, 0.5e-3, 0.5e-3, 0, 0, 0]], (np.prod(SHAPE), 1)), acq,
                           S0=300.0).reshape(*SHAPE, -1)
    real = (clean + np.random.default_rng(9).normal(0, 40.0, clean.shape)).astype(np.float32)
    mask = np.ones(SHAPE, bool)
    auto, kept = (denoise(real, acq, matched_vae, mask=mask, pooling=150, sigma=40.0, keep_floor=keep)
                  for keep in (False, True))
    np.testing.assert_array_equal(auto, kept)


def test_a_realistic_phantom_gains_on_fa_md_and_rmse(matched_vae):
    """Multi-compartment tissue with partial volume, Rician SNR 20: better than the noisy series."""
    acq = seed32()
    phantom = make_realistic_phantom(acq, shape=(32, 32, 12), snr=20, seed=4)
    mask = phantom.labels > 0
    out = denoise(phantom.noisy, acq, matched_vae, mask=mask, pooling=150, denoise_b0=True)  # sigma estimated
    truth = dti_fit(phantom.clean, acq, mask)
    errors = {name: {key: np.abs(dti_fit(x, acq, mask)[key] - truth[key]).mean() for key in ("fa", "md")}
              for name, x in (("noisy", phantom.noisy), ("out", out))}
    rmse = {name: np.sqrt(np.mean((x[mask] - phantom.clean[mask]) ** 2)) for name, x in (("noisy", phantom.noisy),
                                                                                         ("out", out))}
    assert errors["out"]["fa"] < 0.7 * errors["noisy"]["fa"]
    assert errors["out"]["md"] < errors["noisy"]["md"]  # MD's noise lies along the signal: little to take
    assert rmse["out"] < 0.5 * rmse["noisy"]
