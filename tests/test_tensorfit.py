"""Tensor fitting against the forward model, against DIPY and on bad input."""
from __future__ import annotations

import numpy as np
import pytest
from dipy.core.gradients import gradient_table
from dipy.reconst.dti import TensorModel

from dwivae.physics.tensorfit import (
    design_matrix,
    eigen,
    fa,
    fit_tensor,
    from_dipy_lower,
    md,
    tensor_signal,
    to_dipy_lower,
    to_matrix,
)


def _protocol(rng: np.random.Generator, *, b0: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """2 volumes at ``b0`` with zero vectors, then 30 random unit directions at b=1000."""
    dirs = rng.normal(size=(30, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    return np.r_[b0, b0, np.full(30, 1000.0)], np.r_[np.zeros((2, 3)), dirs]


def _tensors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random rotations of eigenvalues in [0.1e-3, 3e-3] mm²/s, as (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz)."""
    R, _ = np.linalg.qr(rng.normal(size=(n, 3, 3)))
    evals = rng.uniform(0.1e-3, 3e-3, size=(n, 3))
    M = np.einsum("nij,nj,nkj->nik", R, evals, R)
    return np.stack([M[:, 0, 0], M[:, 1, 1], M[:, 2, 2], M[:, 0, 1], M[:, 0, 2], M[:, 1, 2]], axis=1)


def _dipy_fit(signals: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray, method: str):
    gtab = gradient_table(bvals, bvecs=bvecs, b0_threshold=50)
    return TensorModel(gtab, fit_method=method, min_signal=1e-6, return_S0_hat=True).fit(signals)


def test_design_matrix_gives_the_log_signal():
    rng = np.random.default_rng(0)
    bvals, bvecs = _protocol(rng)
    D = _tensors(rng, 1)[0]
    X = design_matrix(bvals, bvecs)
    g = bvecs
    expected = np.log(2.0) - bvals * np.einsum("ni,ij,nj->n", g, to_matrix(D), g)
    np.testing.assert_allclose(X @ np.r_[D, np.log(2.0)], expected, rtol=1e-12)
    np.testing.assert_allclose(tensor_signal(D, bvals, bvecs, S0=2.0), np.exp(expected), rtol=1e-12)


@pytest.mark.parametrize("b0", [0.0, 50.0])
def test_noiseless_signals_fit_back_to_the_tensors_and_s0(b0):
    rng = np.random.default_rng(1)
    bvals, bvecs = _protocol(rng, b0=b0)
    D = _tensors(rng, 200).reshape(10, 20, 6)
    S0 = rng.uniform(100.0, 2000.0, size=(10, 20))
    signals = tensor_signal(D, bvals, bvecs, S0=S0)
    np.testing.assert_allclose(signals[..., :2], np.stack([S0, S0], axis=-1), rtol=1e-12)
    for method in ("ols", "wls"):
        D_fit, S0_fit = fit_tensor(signals, bvals, bvecs, method=method)
        assert D_fit.shape == (10, 20, 6) and S0_fit.shape == (10, 20)
        np.testing.assert_allclose(D_fit, D, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(S0_fit, S0, rtol=1e-6)


def test_float32_signals_of_one_voxel_fit():
    rng = np.random.default_rng(2)
    bvals, bvecs = _protocol(rng)
    D = _tensors(rng, 1)[0]
    D_fit, S0_fit = fit_tensor(tensor_signal(D, bvals, bvecs).astype(np.float32), bvals, bvecs)
    assert D_fit.shape == (6,) and S0_fit.shape == ()
    np.testing.assert_allclose(D_fit, D, atol=1e-7)


@pytest.mark.parametrize(("ours", "theirs"), [("ols", "LS"), ("wls", "WLS")])
def test_fit_agrees_with_dipy_on_noisy_signals(ours, theirs):
    rng = np.random.default_rng(3)
    bvals, bvecs = _protocol(rng)
    D = _tensors(rng, 300)
    signals = tensor_signal(D, bvals, bvecs) + rng.normal(scale=0.02, size=(300, 32))
    D_fit, S0_fit = fit_tensor(signals, bvals, bvecs, method=ours, min_signal=1e-6)
    dipy_fit = _dipy_fit(signals, bvals, bvecs, theirs)
    assert np.abs(D_fit - D).max() > 1e-5  # the noise matters, so agreement is not trivial
    np.testing.assert_allclose(D_fit, from_dipy_lower(dipy_fit.lower_triangular()), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(S0_fit, dipy_fit.S0_hat, rtol=1e-6)


def test_wls_differs_from_ols_on_noisy_signals():
    rng = np.random.default_rng(4)
    bvals, bvecs = _protocol(rng)
    signals = tensor_signal(_tensors(rng, 50), bvals, bvecs) + rng.normal(scale=0.05, size=(50, 32))
    D_ols, _ = fit_tensor(signals, bvals, bvecs, method="ols")
    D_wls, _ = fit_tensor(signals, bvals, bvecs, method="wls")
    assert np.abs(D_ols - D_wls).max() > 1e-6


def test_signals_are_clipped_at_min_signal():
    rng = np.random.default_rng(5)
    bvals, bvecs = _protocol(rng)
    signals = tensor_signal(_tensors(rng, 20), bvals, bvecs)
    signals[:, 5] = -0.3
    clipped = signals.copy()
    clipped[:, 5] = 1e-3
    D_neg, S0_neg = fit_tensor(signals, bvals, bvecs, min_signal=1e-3)
    D_clip, S0_clip = fit_tensor(clipped, bvals, bvecs, min_signal=1e-3)
    assert np.all(np.isfinite(D_neg))
    np.testing.assert_array_equal(D_neg, D_clip)
    np.testing.assert_array_equal(S0_neg, S0_clip)


def test_fa_and_md_match_dipy():
    rng = np.random.default_rng(6)
    bvals, bvecs = _protocol(rng)
    signals = tensor_signal(_tensors(rng, 200), bvals, bvecs) + rng.normal(scale=0.01, size=(200, 32))
    D_fit, _ = fit_tensor(signals, bvals, bvecs)
    dipy_fit = _dipy_fit(signals, bvals, bvecs, "LS")
    np.testing.assert_allclose(fa(D_fit), dipy_fit.fa, rtol=1e-6)
    np.testing.assert_allclose(md(D_fit), dipy_fit.md, rtol=1e-6)


def test_fa_of_isotropic_zero_and_stick_tensors():
    iso = np.array([1e-3, 1e-3, 1e-3, 0.0, 0.0, 0.0])
    assert fa(iso) == pytest.approx(0.0, abs=1e-7)
    assert fa(np.zeros(6)) == 0.0
    l1, l2, l3 = 1.7e-3, 0.1e-3, 0.1e-3
    expected = np.sqrt(0.5 * ((l1 - l2) ** 2 + (l2 - l3) ** 2 + (l3 - l1) ** 2) / (l1**2 + l2**2 + l3**2))
    R, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))
    M = R @ np.diag([l1, l2, l3]) @ R.T
    stick = np.array([M[0, 0], M[1, 1], M[2, 2], M[0, 1], M[0, 2], M[1, 2]])
    assert fa(stick) == pytest.approx(expected, rel=1e-9)
    assert md(stick) == pytest.approx((l1 + l2 + l3) / 3, rel=1e-9)


def test_eigen_is_descending_and_reconstructs_the_tensor():
    D = _tensors(np.random.default_rng(8), 50).reshape(5, 10, 6)
    evals, evecs = eigen(D)
    assert evals.shape == (5, 10, 3) and evecs.shape == (5, 10, 3, 3)
    assert np.all(np.diff(evals, axis=-1) <= 0)
    M = np.einsum("...ij,...j,...kj->...ik", evecs, evals, evecs)
    np.testing.assert_allclose(M, to_matrix(D), atol=1e-15)


def test_dipy_order_round_trips():
    D = np.arange(6.0)  # Dxx=0, Dyy=1, Dzz=2, Dxy=3, Dxz=4, Dyz=5
    np.testing.assert_array_equal(to_dipy_lower(D), [0, 3, 1, 4, 5, 2])
    np.testing.assert_array_equal(from_dipy_lower(to_dipy_lower(D)), D)
    np.testing.assert_array_equal(to_matrix(D), [[0, 3, 4], [3, 1, 5], [4, 5, 2]])


def test_bad_inputs_raise_clear_errors():
    rng = np.random.default_rng(9)
    bvals, bvecs = _protocol(rng)
    signals = np.ones((4, 32))
    with pytest.raises(ValueError, match="one value per volume"):
        fit_tensor(np.ones((4, 31)), bvals, bvecs)
    with pytest.raises(ValueError, match="transpose"):
        fit_tensor(signals, bvals, bvecs.T)
    with pytest.raises(ValueError, match="min_signal must be strictly positive"):
        fit_tensor(signals, bvals, bvecs, min_signal=0.0)
    with pytest.raises(ValueError, match="method must be"):
        fit_tensor(signals, bvals, bvecs, method="nlls")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 6\)"):
        fa(np.ones((4, 7)))


@pytest.mark.parametrize("n_dirs", [5, 30])
def test_underdetermined_protocols_are_refused(n_dirs):
    rng = np.random.default_rng(10)
    bvals, bvecs = _protocol(rng)
    if n_dirs == 5:  # two b0 and five directions: too few
        bvals, bvecs = bvals[:7], bvecs[:7]
    else:  # a single shell and no b0: b gᵀg = b ties the diagonal to S0
        bvals, bvecs = bvals[2:], bvecs[2:]
    with pytest.raises(ValueError, match="cannot determine a tensor"):
        fit_tensor(np.ones(len(bvals)), bvals, bvecs)


def test_large_inputs_are_fitted_in_chunks(monkeypatch):
    import dwivae.physics.tensorfit as tensorfit

    rng = np.random.default_rng(11)
    bvals, bvecs = _protocol(rng)
    signals = tensor_signal(_tensors(rng, 100), bvals, bvecs) + rng.normal(scale=0.02, size=(100, 32))
    whole = [fit_tensor(signals, bvals, bvecs, method=m) for m in ("ols", "wls")]
    monkeypatch.setattr(tensorfit, "_CHUNK_ELEMENTS", 7 * 32 * 9)  # 9 voxels per WLS chunk, 63 per OLS
    for method, (D, S0) in zip(("ols", "wls"), whole):
        D_chunked, S0_chunked = fit_tensor(signals, bvals, bvecs, method=method)
        np.testing.assert_allclose(D_chunked, D, rtol=1e-12, atol=1e-18)
        np.testing.assert_allclose(S0_chunked, S0, rtol=1e-12)


def test_fa_of_a_non_positive_definite_tensor_stays_in_unit_range():
    D = np.array([[1.5e-3, -0.5e-3, 0.2e-3, 0.0, 0.0, 0.0]])  # one negative eigenvalue
    assert 0.0 <= fa(D)[0] <= 1.0
    np.testing.assert_allclose(fa(D), fa(np.array([[1.5e-3, 0.0, 0.2e-3, 0, 0, 0]])))
