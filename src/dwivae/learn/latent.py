"""What a trained VAE's latent space holds: per-latent statistics and each latent's influence.

The study's Figures 7 and 8: which latents carry information about the signal, and which the KL
term has pushed back to the prior (their posterior is N(0, 1) whatever the input).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dwivae.errors import InputError
from dwivae.learn.training import TrainedModel

ACTIVE_THRESHOLD = 0.01
"""A latent is active when the variance of its posterior mean over the data exceeds this (the
"active units" measure of Burda et al. 2016, Importance Weighted Autoencoders, ICLR)."""


@dataclass(frozen=True)
class LatentStatistics:
    """Posterior statistics of each latent over a set of signals.

    Attributes
    ----------
    mean_mu, std_mu : (L,) ndarray
        Mean and standard deviation over the data of the posterior mean ``mu``.
    mean_sigma : (L,) ndarray
        Mean posterior standard deviation ``exp(logvar / 2)`` (NaN for a DAE).
    kl : (L,) ndarray, nats
        Mean KL divergence of each latent's posterior from N(0, 1) (NaN for a DAE).
    active : (L,) bool ndarray
        ``std_mu**2 > ACTIVE_THRESHOLD``.
    """

    mean_mu: np.ndarray
    std_mu: np.ndarray
    mean_sigma: np.ndarray
    kl: np.ndarray
    active: np.ndarray

    def to_json(self) -> dict:
        """Lists of floats, one per latent, and the number of active latents."""
        out = {name: [float(v) for v in getattr(self, name)]
               for name in ("mean_mu", "std_mu", "mean_sigma", "kl")}
        return {**out, "active": [bool(a) for a in self.active], "n_active": int(self.active.sum())}


@torch.inference_mode()
def encode(model: TrainedModel, signals: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Posterior mean and log-variance (None for a DAE) of normalised signals (M, N)."""
    x = torch.as_tensor(np.asarray(signals, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != model.model_config.n_inputs:
        raise InputError(f"signals must be (M, {model.model_config.n_inputs}); got {tuple(x.shape)}")
    mu, logvar = model.network.eval().encode(x)
    return mu.numpy(), (logvar.numpy() if logvar is not None else None)


@torch.inference_mode()
def decode(model: TrainedModel, z: np.ndarray) -> np.ndarray:
    """Signals (M, N) decoded from latent codes (M, L)."""
    return model.network.eval().decode(torch.as_tensor(np.asarray(z, dtype=np.float32))).numpy()


def latent_statistics(model: TrainedModel, signals: np.ndarray) -> LatentStatistics:
    """Posterior statistics of each latent over ``signals`` (M, N), normalised by S0."""
    mu, logvar = encode(model, signals)
    std_mu = mu.std(axis=0)
    if logvar is None:
        nan = np.full(mu.shape[1], np.nan)
        return LatentStatistics(mu.mean(axis=0), std_mu, nan, nan, std_mu ** 2 > ACTIVE_THRESHOLD)
    kl = 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar)
    return LatentStatistics(mu.mean(axis=0), std_mu, np.exp(0.5 * logvar).mean(axis=0),
                            kl.mean(axis=0), std_mu ** 2 > ACTIVE_THRESHOLD)


def latent_traversal(model: TrainedModel, signals: np.ndarray, *,
                     steps: np.ndarray = np.linspace(-2.0, 2.0, 5)) -> np.ndarray:
    """Decoded signals as each latent moves away from the mean code, the others held fixed.

    Parameters
    ----------
    model : TrainedModel
    signals : (M, N) ndarray
        Normalised signals that define the mean code and each latent's spread.
    steps : (K,) ndarray
        Offsets in units of the latent's standard deviation over the data (at least 0.1, so a
        collapsed latent still moves).

    Returns
    -------
    (L, K, N) ndarray
        ``out[j, k]`` decodes the mean code with latent ``j`` moved by ``steps[k]`` deviations.
    """
    mu, _ = encode(model, signals)
    centre = mu.mean(axis=0)
    spread = np.maximum(mu.std(axis=0), 0.1)
    L = mu.shape[1]
    codes = np.repeat(centre[None, None, :], L * len(steps), axis=0).reshape(L, len(steps), L)
    for j in range(L):
        codes[j, :, j] += steps * spread[j]
    return decode(model, codes.reshape(-1, L)).reshape(L, len(steps), -1)


def latent_influence(model: TrainedModel, signals: np.ndarray) -> np.ndarray:
    """RMS change of the reconstruction when each latent alone is set to its data mean.

    Parameters
    ----------
    model : TrainedModel
    signals : (M, N) ndarray
        Normalised signals (e.g. the voxels of an in-vivo scan).

    Returns
    -------
    (L,) ndarray
        For latent ``j``: RMS over signals and volumes of ``decode(mu) - decode(mu with mu_j
        replaced by its mean)``, in units of S0. A latent the decoder ignores scores 0.
    """
    mu, _ = encode(model, signals)
    full = decode(model, mu)
    influence = np.empty(mu.shape[1])
    for j in range(mu.shape[1]):
        held = mu.copy()
        held[:, j] = mu[:, j].mean()
        influence[j] = float(np.sqrt(np.mean((decode(model, held) - full) ** 2)))
    return influence
