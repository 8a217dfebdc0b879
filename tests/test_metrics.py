"""Signal and tensor error metrics, overall and per group."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dwivae.compare.metrics import per_group, signal_errors, summary, tensor_errors
from dwivae.physics.tensorfit import fa, md

KEYS = {"signal_mse", "signal_mae", "D_mse", "D_mae", "fa_mae", "md_mae"}


def _data(rng: np.random.Generator, m: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Clean signals (m, 32) and positive definite tensors (m, 6)."""
    D = np.concatenate([rng.uniform(0.5e-3, 2e-3, size=(m, 3)), rng.uniform(-0.1e-3, 0.1e-3, size=(m, 3))], axis=1)
    return rng.uniform(0.1, 1.0, size=(m, 32)), D


def test_perfect_estimates_score_zero():
    clean, D = _data(np.random.default_rng(0))
    result = summary(clean, clean, D, D)
    assert set(result) == KEYS
    assert all(value == 0.0 for value in result.values())


def test_a_known_offset_gives_the_known_errors():
    clean, D = _data(np.random.default_rng(1))
    assert signal_errors(clean + 0.1, clean) == pytest.approx({"mse": 0.01, "mae": 0.1}, rel=1e-9)
    shift = np.array([3e-4, 3e-4, 3e-4, 0.0, 0.0, 0.0])  # isotropic: MD up by 3e-4, FA changes
    errors = tensor_errors(D + shift, D)
    assert errors["D_mse"] == pytest.approx(0.5 * 9e-8, rel=1e-9)
    assert errors["D_mae"] == pytest.approx(0.5 * 3e-4, rel=1e-9)
    assert errors["md_mae"] == pytest.approx(3e-4, rel=1e-9)
    assert errors["fa_mae"] == pytest.approx(np.mean(np.abs(fa(D + shift) - fa(D))), rel=1e-12)
    assert errors["fa_mae"] > 0
    assert set(tensor_errors(D + shift, D, fa_md=False)) == {"D_mse", "D_mae"}


def test_per_group_splits_by_label():
    rng = np.random.default_rng(2)
    clean, D = _data(rng)
    groups = np.repeat([7, 3], 20)
    offsets = np.where(groups == 7, 0.2, -0.05)[:, None]
    estimate, D_est = clean + offsets, D + 1e-4 * offsets
    result = per_group(estimate, clean, D_est, D, groups)
    assert list(result) == [3, 7] and all(type(k) is int for k in result)
    assert result[7]["signal_mae"] == pytest.approx(0.2, rel=1e-9)
    assert result[3]["signal_mse"] == pytest.approx(0.0025, rel=1e-9)
    assert result[3]["D_mae"] == pytest.approx(5e-6, rel=1e-9)
    mask = groups == 7
    assert result[7] == summary(estimate[mask], clean[mask], D_est[mask], D[mask])
    md_true = md(D[mask])
    assert result[7]["md_mae"] == pytest.approx(np.mean(np.abs(md(D_est[mask]) - md_true)), rel=1e-12)
    json.dumps({str(k): v for k, v in result.items()})  # plain Python floats


def test_mismatched_shapes_raise_clear_errors():
    clean, D = _data(np.random.default_rng(3))
    with pytest.raises(ValueError, match="same shape"):
        signal_errors(clean[:, :31], clean)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 6\)"):
        tensor_errors(D[:, :5], D[:, :5])
    with pytest.raises(ValueError, match="same samples"):
        summary(clean[:39], clean[:39], D, D)
    with pytest.raises(ValueError, match="one label per sample"):
        per_group(clean, clean, D, D, np.zeros(39, dtype=int))
