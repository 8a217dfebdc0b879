from __future__ import annotations

import numpy as np
import pytest

from dwivae.physics.simulate import (
    STUDY_NOISE_LEVELS,
    add_gaussian_noise,
    b_matrix,
    random_rotations,
    random_tensors,
    study_grid,
    tensor_signals,
)


def test_study_noise_levels():
    assert len(STUDY_NOISE_LEVELS) == 31
    assert STUDY_NOISE_LEVELS[0] == 0 and np.isclose(STUDY_NOISE_LEVELS[-1], 0.91)
    np.testing.assert_allclose(np.diff(STUDY_NOISE_LEVELS[1:]), 0.03)


def test_tensor_signals_match_the_equation(acq):
    rng = np.random.default_rng(1)
    D = random_tensors(50, rng=rng)
    S = tensor_signals(D, acq, S0=2.0)
    M = np.zeros((50, 3, 3))
    idx = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
    for k, (i, j) in enumerate(idx):
        M[:, i, j] = M[:, j, i] = D[:, k]
    expected = 2.0 * np.exp(-acq.bvals * np.einsum("ki,nij,kj->nk", acq.bvecs, M, acq.bvecs))
    np.testing.assert_allclose(S, expected, rtol=1e-5)
    np.testing.assert_allclose(S[:, [0, -1]], 2.0)  # b0 volumes carry no direction


def test_study_grid_filter(acq):
    D = study_grid(acq)
    assert 400_000 < len(D) < 440_000  # the study kept 428,522 with its own 30 directions
    assert np.all(D[:, :3].min(axis=1) >= D[:, 3:].max(axis=1))
    assert np.all(D @ b_matrix(acq).T >= -1e-9)  # signals never exceed S0
    assert tensor_signals(D[:1000], acq).max() <= 1.0 + 1e-6


def test_random_tensors_are_physiological_and_seeded():
    rng = np.random.default_rng(3)
    D = random_tensors(2000, rng=rng)
    M = np.zeros((2000, 3, 3))
    for k, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
        M[:, i, j] = M[:, j, i] = D[:, k]
    ev = np.linalg.eigvalsh(M)
    assert ev.min() > 0.09e-3 and ev.max() < 3.01e-3
    np.testing.assert_array_equal(D, random_tensors(2000, rng=np.random.default_rng(3)))
    assert not np.any(ev[:, 2] - ev[:, 0] < 1e-6)  # no isotropic tensor unless asked for


def test_random_tensors_with_free_water():
    D = random_tensors(4000, rng=np.random.default_rng(4), isotropic_fraction=0.25)
    M = np.zeros((4000, 3, 3))
    for k, (i, j) in enumerate([(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]):
        M[:, i, j] = M[:, j, i] = D[:, k]
    ev = np.linalg.eigvalsh(M)
    isotropic = ev[:, 2] - ev[:, 0] < 1e-8
    assert 0.22 < isotropic.mean() < 0.28
    assert ev[isotropic].min() >= 0.5e-3 - 1e-9 and np.any(ev[isotropic, 0] > 3.0e-3)
    assert ev[~isotropic].max() < 3.01e-3


def test_rotations_are_orthonormal():
    R = random_rotations(100, rng=np.random.default_rng(0))
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)


def test_sigma_zero_returns_clean(acq):
    clean = tensor_signals(random_tensors(100, rng=np.random.default_rng(0)), acq)
    np.testing.assert_array_equal(add_gaussian_noise(clean, 0.0, rng=np.random.default_rng(0)), clean)


def test_noise_has_requested_sigma_and_no_negatives():
    clean = np.full((200_000, 2), 0.5, dtype=np.float32)
    noisy = add_gaussian_noise(clean, 0.05, rng=np.random.default_rng(0))
    assert abs(np.std(noisy - clean) - 0.05) < 1e-3
    strong = add_gaussian_noise(clean, 0.9, rng=np.random.default_rng(0))
    assert strong.min() == 0.0 and (strong == 0).mean() > 0.2  # clipped at 0, as the study did


def test_rician_noise_has_the_right_mean_and_second_moment():
    from scipy.stats import rice

    from dwivae.physics.simulate import add_noncentral_chi_noise
    nu, sigma = 0.3, 0.1
    noisy = add_noncentral_chi_noise(np.full((200_000, 1), nu), sigma, rng=np.random.default_rng(0))
    assert noisy.mean() == pytest.approx(rice(nu / sigma, scale=sigma).mean(), rel=3e-3)
    assert np.mean(noisy.astype(np.float64) ** 2) == pytest.approx(nu ** 2 + 2 * sigma ** 2, rel=5e-3)


def test_noncentral_chi_second_moment_grows_with_coils():
    from dwivae.physics.simulate import add_noncentral_chi_noise
    nu, sigma, coils = 0.5, 0.05, 8
    noisy = add_noncentral_chi_noise(np.full((100_000, 1), nu), sigma, coils=coils, rng=np.random.default_rng(1))
    # sum of squares over n channels of S/sqrt(n) + complex noise: E[M²] = S² + 2 n sigma²
    assert np.mean(noisy.astype(np.float64) ** 2) == pytest.approx(nu ** 2 + 2 * coils * sigma ** 2, rel=5e-3)


def test_ball_and_sticks_matches_dipy():
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import sticks_and_ball

    from dwivae.physics.acquisition import Acquisition
    from dwivae.physics.simulate import ball_and_sticks_signals
    rng = np.random.default_rng(3)
    bvecs = rng.standard_normal((40, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    bvals = np.r_[0, np.full(20, 1000.0), np.full(19, 2500.0)]
    acq = Acquisition(bvals, bvecs)
    angles = [(30.0, 40.0), (80.0, 200.0)]  # (theta, phi) in degrees, as DIPY takes them
    expected, sticks = sticks_and_ball(gradient_table(bvals, bvecs=bvecs), d=0.0017, S0=1.0, angles=angles,
                                       fractions=[40, 25], snr=None)
    ours = ball_and_sticks_signals(acq, d=np.array([0.0017]), fractions=np.array([[0.40, 0.25]]),
                                   directions=sticks[None])
    np.testing.assert_allclose(ours[0, 1:], expected[1:], rtol=1e-5)
    assert ours[0, 0] == pytest.approx(1.0)


def test_random_ball_and_sticks_parameters():
    from dwivae.physics.simulate import random_ball_and_sticks
    p = random_ball_and_sticks(5000, rng=np.random.default_rng(0))
    total = p["fractions"].sum(axis=1)
    assert total.min() >= 0.2 - 1e-9 and total.max() <= 0.8 + 1e-9
    counts = (p["fractions"] > 0).sum(axis=1)
    assert set(np.unique(counts)) == {1, 2, 3}
    np.testing.assert_allclose(np.linalg.norm(p["directions"], axis=-1), 1)
