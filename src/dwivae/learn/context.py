"""Learned spatial context: simulated neighbourhoods, training of a :class:`~dwivae.learn.models.ContextNet`
on the latent codes of a trained autoencoder, and its use on a volume of codes.

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
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from dwivae.errors import InputError
from dwivae.learn.dataset import seed_streams, torch_generator
from dwivae.learn.losses import reconstruction_loss
from dwivae.learn.models import ContextConfig, ContextNet, neighbour_offsets
from dwivae.learn.training import MIN_B0_MEAN, TrainedModel, batch_sigmas, noisy_batch
from dwivae.physics.acquisition import Acquisition, normalise_by_b0
from dwivae.physics.simulate import (
    STUDY_NOISE_LEVELS,
    ball_and_sticks_signals,
    random_ball_and_sticks,
    random_tensors,
    tensor_signals,
)

S0_RATIO_RANGE = (1 / 3, 3.0)
"""S0 of tissue B over that of tissue A, log-uniform (CSF is ~2.5x brighter than WM at b=0)."""
ONE_TISSUE = 1 / 3
"""Fraction of neighbourhoods that hold one tissue only."""
CUT = 0.2
"""Fraction of neighbourhoods that lose a random half-space of neighbours (a mask edge)."""
MAX_BEND = math.radians(20.0)
"""Largest turn of a tissue's orientation from one voxel to the next (a tight bend at 2 mm)."""
LOG_FLOOR = 0.01
"""Added to normalised signals before the log of :func:`log_signal_loss`."""
MONITOR = 8192
"""Held-out neighbourhoods on which the centre-signal MSE is measured."""


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


@torch.no_grad()
def encode_neighbourhoods(model: TrainedModel, noisy: np.ndarray, valid: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent means (B, K, L) of each voxel normalised by its own b0 mean, and which voxels count
    (B, K): those given as valid whose S0 is positive; the others get zero codes."""
    signals = noisy.reshape(-1, noisy.shape[-1])
    normalised, _, ok = normalise_by_b0(signals, model.acquisition)
    ok &= valid.reshape(-1)
    codes = np.zeros((len(signals), model.model_config.latent), np.float32)
    compiled = model.compiled("encoder")
    codes[ok] = (compiled(normalised[ok], threads=torch.get_num_threads()) if compiled is not None
                 else model.network.encode(torch.from_numpy(normalised[ok]))[0].numpy())
    shape = noisy.shape[:2]
    return torch.from_numpy(codes.reshape(*shape, -1)), torch.from_numpy(ok.reshape(shape))


def train_context(model: TrainedModel, *, config: ContextConfig | None = None, seed: int | None = None,
                  callback: Callable[[int, float], None] | None = None) -> TrainedModel:
    """Train a :class:`ContextNet` for a trained autoencoder, whose weights stay fixed.

    Parameters
    ----------
    model : TrainedModel
    config : ContextConfig, optional
        Defaults to ``ContextConfig(latent=<the model's>)``.
    seed : int, optional
        Fixes neighbourhoods, noise and initialisation (default: the model's seed).
    callback : callable, optional
        Called with ``(step, loss)`` every 100 steps.

    Returns
    -------
    TrainedModel
        The same model with ``context`` set and ``summary["context"]`` holding the centre
        voxel's signal MSE and log-signal MSE (:func:`log_signal_loss`) on held-out
        neighbourhoods with the context network (``test_mse``, ``test_log_mse``) and without it
        (``..._voxelwise``), and the time.
    """
    config = config or ContextConfig(latent=model.model_config.latent)
    if config.latent != model.model_config.latent:
        raise InputError(f"a context network for latent size {config.latent} cannot use codes of size "
                         f"{model.model_config.latent}")
    seed = model.train_config.seed if seed is None else seed
    stream = seed_streams(seed)["context"]
    init, train_seq, monitor_seq = stream.spawn(3)
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init.generate_state(1)[0]))
        net = ContextNet(config)
    monitor = simulate_neighbourhoods(model, MONITOR, radius=config.radius, rng=np.random.default_rng(monitor_seq),
                                      generator=torch_generator(monitor_seq))
    monitor_codes = encode_neighbourhoods(model, monitor.noisy, monitor.valid)
    rng, generator = np.random.default_rng(train_seq), torch_generator(train_seq)
    decoder = model.network.eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    loss_fn = log_signal_loss if config.loss == "log" else reconstruction_loss(model.train_config.loss)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    try:
        for step in range(1, config.steps + 1):
            for group in optimizer.param_groups:  # cosine decay to lr / 100
                group["lr"] = config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (step - 1) / config.steps)))
            batch = simulate_neighbourhoods(model, config.batch_size, radius=config.radius, rng=rng,
                                            generator=generator)
            codes, valid = encode_neighbourhoods(model, batch.noisy, batch.valid)
            loss = loss_fn(decoder.decode(net(codes, valid)), torch.from_numpy(batch.target))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if callback is not None and step % 100 == 0:
                callback(step, float(loss.detach()))
    finally:
        for p in decoder.parameters():
            p.requires_grad_(True)
    net.eval()
    with torch.inference_mode():
        target = torch.from_numpy(monitor.target)
        centre = monitor_codes[0][:, config.size // 2]
        outputs = {"_voxelwise": decoder.decode(centre), "": decoder.decode(net(*monitor_codes))}
    model.context = net
    scores = {}
    for suffix, output in outputs.items():
        scores[f"test_mse{suffix}"] = float(torch.mean((output - target) ** 2))
        scores[f"test_log_mse{suffix}"] = float(log_signal_loss(output, target))
    model.summary = {**model.summary, "context": {**scores, "seconds": time.perf_counter() - started}}
    return model


def log_signal_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of ``log(S + LOG_FLOOR)``: a relative error, as the log-linear
    tensor fit sees it, floored so that signals near 0 do not dominate."""
    return torch.mean((torch.log(output + LOG_FLOOR) - torch.log(target + LOG_FLOOR)) ** 2)


@torch.inference_mode()
def context_codes(latent: np.ndarray, valid: np.ndarray, net: ContextNet, *, chunk: int = 1 << 15) -> np.ndarray:
    """Apply a context network to a volume of latent codes.

    Parameters
    ----------
    latent : (X, Y, Z, L) ndarray
        Latent means; only ``valid`` voxels are read.
    valid : (X, Y, Z) bool ndarray
    net : ContextNet
    chunk : int
        Voxels per pass (memory: chunk x (2r + 1)³ x L floats).

    Returns
    -------
    (X, Y, Z, L) ndarray, float32
        New codes in ``valid`` voxels, the input's elsewhere.
    """
    r = net.config.radius
    pad = [(r, r)] * 3
    codes = torch.from_numpy(np.pad(np.where(valid[..., None], latent, 0.0).astype(np.float32), pad + [(0, 0)]))
    exists = torch.from_numpy(np.pad(valid, pad))
    flat_codes, flat_exists = codes.reshape(-1, codes.shape[-1]), exists.reshape(-1)
    strides = torch.tensor([exists.shape[1] * exists.shape[2], exists.shape[2], 1])
    shifts = (neighbour_offsets(r).long() * strides).sum(dim=1)  # (K,) flat offsets, C order as in training
    centres = (torch.from_numpy(np.argwhere(valid)) + r) @ strides
    out = np.array(latent, dtype=np.float32, copy=True)
    result = np.empty((len(centres), latent.shape[-1]), np.float32)
    for start in range(0, len(centres), chunk):
        index = centres[start:start + chunk, None] + shifts[None, :]
        result[start:start + chunk] = net(flat_codes[index], flat_exists[index]).numpy()
    out[valid] = result
    return out
