from __future__ import annotations

import numpy as np
import pytest
from test_kernel import needs_compiler

from dwivae.errors import InputError
from dwivae.kernels import bindings as kernel
from dwivae.learn import dataset
from dwivae.learn.dataset import held_out_pairs, noisy_copies, simulate_split


def test_split_is_over_atoms_and_seeded(acq):
    a = simulate_split(acq, seed=0, atoms="random", n_atoms=1000)
    b = simulate_split(acq, seed=0, atoms="random", n_atoms=1000)
    c = simulate_split(acq, seed=1, atoms="random", n_atoms=1000)
    assert len(a.train_clean) == 800 and len(a.test_clean) == 200
    np.testing.assert_array_equal(a.test_D, b.test_D)
    assert not np.array_equal(a.test_D, c.test_D)
    train_rows = {r.tobytes() for r in a.train_D}
    assert not any(r.tobytes() in train_rows for r in a.test_D)


def test_noisy_copies_layout():
    clean = np.random.default_rng(0).uniform(0.2, 1, (5, 4)).astype(np.float32)
    noisy, atom, level = noisy_copies(clean, np.array([0.0, 0.1]), rng=np.random.default_rng(0))
    assert noisy.shape == (10, 4)
    np.testing.assert_array_equal(noisy[:5], clean)  # level 0 is the clean signal
    np.testing.assert_array_equal(atom, np.tile(np.arange(5), 2))
    np.testing.assert_array_equal(level, np.repeat([0, 1], 5))


def test_noisy_copies_do_not_depend_on_the_threads(monkeypatch):
    clean = np.random.default_rng(0).uniform(0.5, 1, (4000, 8)).astype(np.float32)
    levels = np.array([0.0, 0.05, 0.1])
    two, _, _ = noisy_copies(clean, levels, rng=np.random.default_rng(3))
    monkeypatch.setattr(dataset, "default_threads", lambda: 1)
    one, _, _ = noisy_copies(clean, levels, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(one, two)
    for k, sigma in enumerate(levels[1:], start=1):  # each level has its own noise level
        assert np.std(two[k * 4000:(k + 1) * 4000] - clean) == pytest.approx(sigma, rel=0.02)


@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_aligned_empty_starts_on_a_cache_line(rows):
    a = kernel.aligned_empty((rows, 32))
    assert a.ctypes.data % 64 == 0 and a.shape == (rows, 32) and a.dtype == np.float32 and a.flags.c_contiguous
    noisy, _, _ = noisy_copies(np.ones((rows, 32), np.float32), np.array([0.0, 0.1]), rng=np.random.default_rng(0))
    assert noisy.ctypes.data % 64 == 0


@needs_compiler
def test_counter_noisy_copies(monkeypatch):
    clean = np.random.default_rng(0).uniform(0.5, 1, (3001, 32)).astype(np.float32)
    levels = np.array([0.0, 0.05, 0.3])
    noisy = dataset.counter_noisy_copies(clean, levels, seed=5)
    assert noisy.shape == (3 * 3001, 32) and noisy.ctypes.data % 64 == 0
    np.testing.assert_array_equal(noisy[:3001], clean)  # level 0 is the clean signal
    assert np.std(noisy[3001:6002] - clean) == pytest.approx(0.05, rel=0.02)
    assert noisy.min() == 0.0 and (noisy >= 0).all()  # sigma 0.3 reaches below 0: clipped
    noise = (noisy[3001:6002] - clean).ravel()
    assert abs(np.corrcoef(noise[:-1], noise[1:])[0, 1]) < 0.02
    monkeypatch.setattr(dataset, "default_threads", lambda: 1)
    np.testing.assert_array_equal(dataset.counter_noisy_copies(clean, levels, seed=5), noisy)
    assert not np.array_equal(dataset.counter_noisy_copies(clean, levels, seed=6), noisy)


def test_test_pairs_reproducible(acq):
    split = simulate_split(acq, seed=2, atoms="random", n_atoms=500)
    x1, _, _ = held_out_pairs(split, seed=2)
    x2, _, _ = held_out_pairs(split, seed=2)
    np.testing.assert_array_equal(x1, x2)
    assert len(x1) == 100 * 31


def test_bad_settings(acq):
    with pytest.raises(InputError, match="unknown atom source"):
        simulate_split(acq, seed=0, atoms="cloud")
    with pytest.raises(InputError, match="test fraction"):
        simulate_split(acq, seed=0, atoms="random", n_atoms=10, test_fraction=1.5)


@pytest.mark.parametrize("atoms", ["sticks", "mixed"])
def test_stick_atoms_carry_their_apparent_tensors(acq, atoms):
    from dwivae.physics.tensorfit import fit_tensor
    split = simulate_split(acq, seed=0, atoms=atoms, n_atoms=1000)
    assert len(split.train_clean) + len(split.test_clean) == 1000
    D, _ = fit_tensor(split.test_clean, acq.bvals, acq.bvecs)
    np.testing.assert_allclose(D, split.test_D, atol=1e-6)  # exact for tensors, the OLS fit for sticks
    assert split.train_clean.min() > 0 and split.train_clean.max() <= 1.0 + 1e-6
