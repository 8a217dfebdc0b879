from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import TINY_TRAINING

from dwivae.compare import baselines
from dwivae.compare.baselines import METHODS, mean_shift, run_method, svd_basis, why_broken
from dwivae.learn.training import train
from dwivae.physics.phantom import make_phantom
from dwivae.physics.simulate import random_tensors, tensor_signals


@pytest.fixture(scope="module")
def phantom():
    from dwivae.physics.acquisition import seed32
    acq = seed32()
    return acq, make_phantom(acq, shape=(20, 20, 10), snr=20, noise="rician", seed=0)


def _require(method):
    if method == "dwidenoise" and shutil.which("dwidenoise") is None and not os.environ.get("CI"):
        pytest.skip("MRtrix3 not installed")
    if method == "patch2self":
        pytest.importorskip("sklearn")


@pytest.mark.parametrize("method", METHODS)
def test_every_method_returns_the_input_shape(phantom, method):
    _require(method)
    acq, ph = phantom
    mask = ph.labels > 0
    model = train(acq, arch=method, seed=0, config=TINY_TRAINING) if method in ("vae", "dae") else None
    result = run_method(method, ph.noisy, acq, mask=mask, model=model)
    assert result.status == "ok", result.note
    assert result.denoised.shape == ph.noisy.shape and result.denoised.dtype == np.float32
    np.testing.assert_array_equal(result.denoised[~mask], ph.noisy[~mask])  # outside the mask: untouched
    if method != "noisy":
        assert not np.array_equal(result.denoised[mask], ph.noisy[mask])
        assert why_broken(result.denoised, ph.noisy, acq, mask) is None


def test_patch2self_workaround_keeps_volume_means(phantom):
    _require("patch2self")
    acq, ph = phantom
    mask = ph.labels > 0
    result = run_method("patch2self", ph.noisy, acq, mask=mask)
    assert mean_shift(result.denoised, ph.noisy, mask) < 0.05
    rmse = lambda x: np.sqrt(np.mean((x[mask] - ph.clean[mask]) ** 2))  # noqa: E731
    assert rmse(result.denoised) < rmse(ph.noisy)


def test_broken_outputs_are_caught(phantom):
    acq, ph = phantom
    mask = ph.labels > 0
    copied = ph.noisy.copy()
    copied[..., 30] = copied[..., 5]  # DIPY 1.12.1 patch2self version 3 (issue #3968)
    assert why_broken(copied, ph.noisy, acq, mask) == "volume 30 is a copy of volume 5"
    nan = ph.noisy.copy()
    nan[mask] = np.nan
    assert "non-finite" in why_broken(nan, ph.noisy, acq, mask)
    assert mean_shift(ph.noisy + 100, ph.noisy, mask) > 0.1


def test_missing_dwidenoise_is_skipped_with_the_reason(phantom, monkeypatch):
    acq, ph = phantom
    monkeypatch.setattr(baselines.shutil, "which", lambda name: None)
    result = run_method("dwidenoise", ph.noisy, acq, mask=ph.labels > 0)
    assert result.status == "skipped" and "apt-get install mrtrix3" in result.note and result.denoised is None


def test_svd_subspace_holds_tensor_signals(acq):
    clean = tensor_signals(random_tensors(2000, rng=np.random.default_rng(5)), acq)
    errors = {}
    for tolerance in (0.02, 0.005):
        mean, basis = svd_basis(acq, n=20_000, tolerance=tolerance)
        np.testing.assert_allclose(basis @ basis.T, np.eye(len(basis)), atol=1e-8)
        projected = (clean - mean) @ basis.T @ basis + mean
        errors[tolerance] = (len(basis), np.sqrt(np.mean((projected - clean) ** 2)))
    (low_rank, low_error), (rank, error) = errors[0.02], errors[0.005]
    assert low_rank < rank and error < 0.006 and 0.005 < low_error < 0.021  # held-out signals
