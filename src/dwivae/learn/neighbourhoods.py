"""Simulated neighbourhoods, the training data of the learned spatial context
(:mod:`dwivae.learn.context`).

A neighbourhood of (2r + 1)³ voxels is drawn as two tissues, two random atoms A and B with their
own S0 whose orientation turns smoothly from voxel to voxel (a bending fibre), separated by a
plane of random orientation and position whose profile runs from a sharp boundary to a smooth
gradient over several voxels:
``S_k = S0_A (1 - f_k) a + S0_B f_k b`` with ``f_k = clip(1/2 + (n·o_k - t) / w, 0, 1)``, so that
voxels near the plane hold both (partial volume) and a wide ``w`` makes the tissue change smoothly.
A third of the neighbourhoods are one tissue, and some lose a random half-space of neighbours
(as at a mask edge). Every voxel gets the autoencoder's training noise independently, is
normalised by its own measured b0 mean m and encoded; the network learns the centre voxel's clean
signal over m through the frozen decoder.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dwivae.learn.models import neighbour_offsets
from dwivae.learn.training import MIN_B0_MEAN, TrainedModel, batch_sigmas, noisy_batch
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.simulate import (
    STUDY_NOISE_LEVELS,
    ball_and_sticks_signals,
    random_ball_and_sticks,
    random_tensors,
    tensor_signals,
)

LOG_FLOOR = 0.01
"""Added to normalised signals before the log of :func:`log_signal_loss`."""
MONITOR = 8192
"""Held-out neighbourhoods on which the centre-signal MSE is measured."""


S0_RATIO_RANGE = (1 / 3, 3.0)
"""S0 of tissue B over that of tissue A, log-uniform (CSF is ~2.5x brighter than WM at b=0)."""


ONE_TISSUE = 1 / 3
"""Fraction of neighbourhoods that hold one tissue only."""


CUT = 0.2
"""Fraction of neighbourhoods that lose a random half-space of neighbours (a mask edge)."""


MAX_BEND = math.radians(20.0)
"""Largest turn of a tissue's orientation from one voxel to the next (a tight bend at 2 mm)."""



@dataclass
class Neighbourhoods:
    """Simulated neighbourhoods: noisy voxels, which exist, and the centre's clean signal.

    Attributes
    ----------
    noisy : (B, K, N) ndarray, float32
        Measured signals (S0 of tissue A = 1), K = (2r + 1)³ voxels, centre at K // 2.
    valid : (B, K) bool ndarray
    target : (B, N) ndarray, float32
        The centre voxel's clean signal divided by the mean of its noisy b0 volumes (at most 1),
        what the decoder must output so that the denoised voxel, scaled by that mean, is clean.
    """

    noisy: np.ndarray
    valid: np.ndarray
    target: np.ndarray



def rotations(omega: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of rotation vectors (..., 3) (axis times angle, radians; Rodrigues)."""
    angle = np.linalg.norm(omega, axis=-1)[..., None, None]
    k = omega / np.maximum(angle[..., 0], 1e-12)
    cross = np.zeros((*omega.shape[:-1], 3, 3), omega.dtype)
    cross[..., 0, 1], cross[..., 0, 2], cross[..., 1, 2] = -k[..., 2], k[..., 1], -k[..., 0]
    cross -= np.swapaxes(cross, -1, -2)
    return np.eye(3, dtype=omega.dtype) + np.sin(angle) * cross + (1 - np.cos(angle)) * (cross @ cross)



def bent_atoms(acq: Acquisition, atoms: str, n: int, offsets: np.ndarray, *, rng: np.random.Generator,
               free_water: float = 0.0, max_bend: float = MAX_BEND) -> np.ndarray:
    """Clean signals of ``n`` random atoms whose orientation turns smoothly across a neighbourhood.

    Each atom (a random tensor or ball-and-sticks, as :func:`dwivae.learn.dataset.clean_atoms` draws
    them) is rotated at offset o by ``exp([G o]x)``, a bending field whose gradient G turns it by
    up to ``max_bend`` radians per voxel.

    Parameters
    ----------
    acq : Acquisition
    atoms : {"random", "sticks", "mixed"}
    n : int
    offsets : (K, 3) ndarray
        Voxel offsets of the neighbourhood.
    rng : numpy.random.Generator
    free_water, max_bend : float

    Returns
    -------
    (n, K, N) ndarray, float32
    """
    k = len(offsets)
    gradient = rng.standard_normal((n, 3, 3))
    gradient *= (rng.uniform(0.0, max_bend, n) / np.linalg.norm(gradient, axis=(1, 2)) * math.sqrt(3))[:, None, None]
    turn = rotations((gradient.astype(np.float32) @ offsets.T.astype(np.float32)).transpose(0, 2, 1))  # (n, K, 3, 3)
    n_sticks = {"random": 0, "sticks": n, "mixed": n // 2}[atoms]
    out = np.empty((n, k, acq.n_volumes), np.float32)
    if n_sticks < n:
        D = random_tensors(n - n_sticks, rng=rng, isotropic_fraction=free_water)
        matrix = D[:, [0, 3, 4, 3, 1, 5, 4, 5, 2]].reshape(-1, 1, 3, 3)  # float32, as the rotations
        R = turn[n_sticks:]
        M = R @ matrix @ np.swapaxes(R, -1, -2)
        rotated = np.stack([M[..., 0, 0], M[..., 1, 1], M[..., 2, 2], M[..., 0, 1], M[..., 0, 2], M[..., 1, 2]], -1)
        out[n_sticks:] = tensor_signals(rotated.reshape(-1, 6), acq).reshape(-1, k, acq.n_volumes)
    if n_sticks:
        p = random_ball_and_sticks(n_sticks, rng=rng)
        directions = p["directions"][:, None].astype(np.float32) @ np.swapaxes(turn[:n_sticks], -1, -2)  # (n, K, S, 3)
        out[:n_sticks] = ball_and_sticks_signals(
            acq, d=np.repeat(p["d"], k), fractions=np.repeat(p["fractions"], k, axis=0),
            directions=directions.reshape(n_sticks * k, -1, 3)).reshape(n_sticks, k, acq.n_volumes)
    return out[rng.permutation(n)]  # mixed sources come sticks first



def simulate_neighbourhoods(model: TrainedModel, n: int, *, radius: int, rng: np.random.Generator,
                            generator: torch.Generator) -> Neighbourhoods:
    """``n`` neighbourhoods of two tissues with the model's atom source and training noise.

    Parameters
    ----------
    model : TrainedModel
        Its protocol, atom source (grid atoms are drawn as random tensors), free-water fraction and
        noise model are used.
    n : int
    radius : int
    rng : numpy.random.Generator
        Atoms and geometry.
    generator : torch.Generator
        Noise levels and noise.
    """
    acq, config = model.acquisition, model.train_config
    atoms = "random" if config.atoms == "grid" else config.atoms
    offsets = neighbour_offsets(radius).numpy().astype(np.float64)
    a, b = (bent_atoms(acq, atoms, n, offsets, rng=rng, free_water=config.free_water) for _ in range(2))
    normal = rng.standard_normal((n, 3))
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    width = np.exp(rng.uniform(math.log(0.05), math.log(6.0), n))
    shift = rng.uniform(-1.5 * radius, 1.5 * radius, n)
    fraction = np.clip(0.5 + (offsets @ normal.T - shift).T / width[:, None], 0.0, 1.0)
    fraction[rng.uniform(size=n) < ONE_TISSUE] = 0.0
    ratio = np.exp(rng.uniform(*np.log(S0_RATIO_RANGE), n))[:, None]
    weight_a, weight_b = (1.0 - fraction), ratio * fraction
    clean = (weight_a[..., None] * a + weight_b[..., None] * b).astype(np.float32)
    valid = np.ones(fraction.shape, bool)
    cut = rng.uniform(size=n) < CUT
    side = rng.standard_normal((int(cut.sum()), 3))
    valid[cut] = (offsets @ side.T).T <= 0.0  # keeps the centre (offset 0)
    sigma = batch_sigmas(config, torch.from_numpy(STUDY_NOISE_LEVELS.astype(np.float32)), n, generator)
    flat = torch.from_numpy(clean.reshape(-1, clean.shape[-1]))
    noisy = noisy_batch(flat, sigma.repeat_interleave(clean.shape[1], dim=0), config, generator).numpy()
    noisy = noisy.reshape(clean.shape)
    centre = clean.shape[1] // 2
    # the decoded code times the measured b0 mean m estimates the clean signal: the target is clean / m
    m = np.maximum(noisy[:, centre][:, acq.b0_mask].mean(axis=1, keepdims=True), MIN_B0_MEAN)
    target = np.minimum(clean[:, centre] / m, 1.0)
    return Neighbourhoods(noisy, valid, target.astype(np.float32))
