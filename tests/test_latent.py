from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING

from dwivae.errors import InputError
from dwivae.learn.dataset import noisy_copies
from dwivae.learn.latent import decode, encode, latent_influence, latent_statistics, latent_traversal
from dwivae.learn.training import train
from dwivae.physics.simulate import random_tensors, tensor_signals


@pytest.fixture(scope="module")
def signals():
    from dwivae.physics.acquisition import seed32
    rng = np.random.default_rng(1)
    clean = tensor_signals(random_tensors(300, rng=rng), seed32())
    return noisy_copies(clean, np.array([0.0, 0.05, 0.1], np.float32), rng=rng)[0]


@pytest.fixture(scope="module")
def vae():
    from dwivae.physics.acquisition import seed32
    return train(seed32(), arch="vae", seed=0, config=TINY_TRAINING)


def test_statistics_match_the_encoder(vae, signals):
    stats = latent_statistics(vae, signals)
    mu, logvar = encode(vae, signals)
    np.testing.assert_allclose(stats.mean_mu, mu.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(stats.mean_sigma, np.exp(0.5 * logvar).mean(axis=0), rtol=1e-5)
    assert np.all(stats.kl >= 0)
    np.testing.assert_array_equal(stats.active, stats.std_mu ** 2 > 0.01)
    assert stats.to_json()["n_active"] == int(stats.active.sum())


def test_a_dead_latent_is_inactive_and_has_no_influence(vae, signals):
    from copy import deepcopy
    dead = deepcopy(vae)
    with torch.no_grad():  # latent 3's posterior mean no longer depends on the input
        dead.network.mu.weight[2] = 0.0
        dead.network.mu.bias[2] = 0.0
    stats = latent_statistics(dead, signals)
    influence = latent_influence(dead, signals)
    assert not stats.active[2] and stats.std_mu[2] == 0
    assert influence[2] == 0 and np.all(np.delete(influence, 2) > 0)


def test_traversal_moves_one_latent_from_the_mean_code(vae, signals):
    steps = np.array([-1.0, 0.0, 1.0])
    out = latent_traversal(vae, signals, steps=steps)
    L = vae.model_config.latent
    assert out.shape == (L, 3, signals.shape[1])
    centre = decode(vae, encode(vae, signals)[0].mean(axis=0, keepdims=True))[0]
    for j in range(L):
        np.testing.assert_allclose(out[j, 1], centre, atol=1e-6)  # step 0 is the mean code
    assert np.abs(out[:, 0] - out[:, 2]).max() > 1e-4


def test_dae_has_no_posterior_variance(signals):
    from dwivae.physics.acquisition import seed32
    dae = train(seed32(), arch="dae", seed=0, config=TINY_TRAINING)
    stats = latent_statistics(dae, signals)
    assert np.all(np.isnan(stats.mean_sigma)) and np.all(np.isnan(stats.kl))
    with pytest.raises(InputError, match=r"must be \(M, 32\)"):
        encode(dae, signals[:, :10])
