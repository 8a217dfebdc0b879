"""Tiny protocols, volumes and models shared by the tests."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dwivae.acquisition import seed32
from dwivae.training import PRESETS, TrainConfig

TINY_TRAINING = replace(PRESETS["default"], atoms="random", n_atoms=4000, samples_per_epoch=40_000,
                        batch_size=1024, epochs=3, test_every=2, lr=2e-3)
"""A training run of about a second, on random tensors."""


@pytest.fixture
def acq():
    """The study's protocol: 2 x b=50 and 30 directions at b=1000."""
    return seed32()


@pytest.fixture
def tiny_config() -> TrainConfig:
    return TINY_TRAINING


def write_gradients(tmp_path, bvals: np.ndarray, bvecs: np.ndarray, *, transpose: bool = True):
    """Write FSL-style gradient files (bvecs 3 x N unless transpose=False) and return their paths."""
    bval, bvec = tmp_path / "dwi.bval", tmp_path / "dwi.bvec"
    np.savetxt(bval, np.atleast_2d(bvals), fmt="%g")
    np.savetxt(bvec, bvecs.T if transpose else bvecs, fmt="%.6f")
    return bval, bvec
