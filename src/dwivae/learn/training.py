"""Training of the VAE and the DAE on simulated noisy/clean pairs (the study's Table 1)."""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from dwivae.kernels.bindings import CompiledForward, aligned_empty, compiled_forward
from dwivae.learn.compiled_step import CompiledStep, UnsupportedNetwork
from dwivae.learn.config import PRESETS, TrainConfig
from dwivae.learn.dataset import (
    SimulatedSplit,
    clean_atoms,
    counter_noisy_copies,
    held_out_pairs,
    noisy_copies,
    seed_streams,
    simulate_split,
    torch_generator,
)
from dwivae.learn.losses import beta_schedule, kl_divergence, reconstruction_loss
from dwivae.learn.models import Autoencoder, ContextNet, ModelConfig, build_model
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.simulate import add_gaussian_noise, add_noncentral_chi_noise

MIN_B0_MEAN = 1e-3
"""Floor of a noisy sample's b0 mean (S0 = 1) when training samples are normalised by it."""

MONITOR_ATOMS = 8192
"""Test MSE during training is measured on this many held-out atoms at every noise level;
``dwivae evaluate`` uses them all."""


@dataclass
class TrainedModel:
    """A trained network with everything needed to save, evaluate and apply it."""

    network: Autoencoder
    model_config: ModelConfig
    train_config: TrainConfig
    acquisition: Acquisition
    history: list[dict]
    summary: dict
    context: ContextNet | None = None
    """A learned neighbourhood network on the latent codes (:mod:`dwivae.learn.context`), if trained."""

    def compiled(self, part: str = "all") -> CompiledForward | None:
        """The deterministic forward pass (or its ``encoder`` or ``decoder``) through the compiled
        kernel, or None where it cannot run (see :func:`dwivae.kernels.bindings.compiled_forward`)."""
        return compiled_forward(self.network, part)


class AutogradStep:
    """One optimisation step with autograd and Adam: ``step(x, y, eps, beta) -> (rec, kl)``."""

    def __init__(self, network: Autoencoder, *, lr: float, loss: str) -> None:
        self.network = network
        self.loss = reconstruction_loss(loss)
        self.optimizer = torch.optim.Adam(network.parameters(), lr=lr)

    @property
    def lr(self) -> float:
        """The learning rate of the next steps."""
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.optimizer.param_groups[0]["lr"] = value

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None,
                 beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        out, mu, logvar = self.network(x, eps)
        rec = self.loss(out, y)
        kl = kl_divergence(mu, logvar) if logvar is not None else torch.zeros(())
        total = rec + beta * kl if beta > 0 else rec
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return rec.detach(), kl.detach()


@torch.inference_mode()
def reconstruct(network: Autoencoder, signals: np.ndarray | torch.Tensor, *,
                batch_size: int = 1 << 16) -> np.ndarray:
    """Deterministic reconstruction (``z = mu``) of signals (M, N), in batches; float32.

    Runs the compiled kernel of :mod:`dwivae.kernels.bindings` where it can be built, torch otherwise.
    """
    network.eval()
    compiled = compiled_forward(network)
    if compiled is not None:
        return compiled(np.asarray(signals, dtype=np.float32), threads=torch.get_num_threads())
    x = torch.as_tensor(signals, dtype=torch.float32)
    out = torch.empty_like(x)
    for start in range(0, len(x), batch_size):
        out[start:start + batch_size] = network(x[start:start + batch_size])[0]
    return out.numpy()


def normalise_by_noisy_b0(noisy: torch.Tensor, clean: torch.Tensor,
                          b0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Training pairs divided by each noisy sample's b0 mean m (floored at ``MIN_B0_MEAN``), the
    clean target capped at 1."""
    m = noisy[:, b0].mean(dim=1, keepdim=True).clamp_(min=MIN_B0_MEAN)
    return noisy / m, (clean / m).clamp_(max=1.0)


def model_output(model: TrainedModel, noisy: np.ndarray) -> np.ndarray:
    """A model's estimate of the clean signals (S0 = 1) of noisy simulated signals (M, N), with
    its inputs normalised as in its training (:attr:`TrainConfig.normalise`)."""
    return _estimate(model.network, noisy, model.train_config, model.acquisition.b0_mask)


def _estimate(network: Autoencoder, noisy: np.ndarray, config: TrainConfig, b0: np.ndarray) -> np.ndarray:
    if config.normalise == "s0":
        return reconstruct(network, noisy)
    m = np.maximum(np.asarray(noisy, np.float32)[:, b0].mean(axis=1, keepdims=True), MIN_B0_MEAN)
    return reconstruct(network, noisy / m) * m


def _monitor_pairs(split: SimulatedSplit, config: TrainConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out noisy/clean pairs for the test MSE during training, with the training noise:
    the study's levels (Gaussian) or 8 SNRs spread over ``snr_range``, on ``MONITOR_ATOMS`` atoms."""
    if config.noise == "gaussian" and config.snr_range is None:
        noisy, atom, _ = held_out_pairs(split, seed=seed, max_atoms=MONITOR_ATOMS)
        return noisy, split.test_clean[atom]
    clean = split.test_clean[:MONITOR_ATOMS]
    levels = (1.0 / np.geomspace(*config.snr_range, 8) if config.snr_range is not None else split.noise_levels)
    rng = np.random.default_rng(seed_streams(seed)["test_noise"])
    repeated = np.tile(clean, (len(levels), 1))
    sigma = np.repeat(levels, len(clean))[:, None].astype(np.float32)
    noisy = (add_gaussian_noise(repeated, sigma[:, 0], rng=rng) if config.noise == "gaussian" else
             add_noncentral_chi_noise(repeated, sigma, coils=config.coils, rng=rng))
    return noisy, repeated


def batch_sigmas(config: TrainConfig, levels: torch.Tensor, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Noise standard deviation (S0 = 1) of each sample of a batch, shape (batch, 1)."""
    if config.snr_range is None:
        return levels[torch.randint(len(levels), (batch,), generator=generator)][:, None]
    low, high = (math.log(v) for v in config.snr_range)
    return torch.exp(-(low + (high - low) * torch.rand((batch, 1), generator=generator)))


def noisy_batch(clean: torch.Tensor, sigma: torch.Tensor, config: TrainConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """Noisy copies of a batch of clean signals with the configured noise model."""
    if config.noise == "gaussian":
        return (clean + sigma * torch.randn(clean.shape, generator=generator)).clamp_(min=0.0)
    per_coil = clean / math.sqrt(config.coils)
    power = torch.zeros_like(clean)
    for _ in range(config.coils):
        power += (per_coil + sigma * torch.randn(clean.shape, generator=generator)) ** 2
        power += (sigma * torch.randn(clean.shape, generator=generator)) ** 2
    return power.sqrt_()


def train(
    acq: Acquisition,
    *,
    arch: str = "vae",
    latent: int = 7,
    seed: int = 0,
    config: TrainConfig | None = None,
    split: SimulatedSplit | None = None,
    callback: Callable[[dict], None] | None = None,
    hidden: tuple[int, ...] | None = None,
) -> TrainedModel:
    """Train a VAE or DAE for the protocol ``acq`` on simulated signals.

    Parameters
    ----------
    acq : Acquisition
        The protocol the model is for (input size = its number of volumes).
    arch : {"vae", "dae"}
    latent : int
        Latent size.
    seed : int
        Fixes everything random; overrides ``config.seed``.
    config : TrainConfig, optional
        Defaults to ``PRESETS["default"]``.
    split : SimulatedSplit, optional
        Pre-simulated data for this protocol and seed, to share between models.
    callback : callable, optional
        Called after every epoch with that epoch's history record.
    hidden : tuple of int, optional
        Encoder hidden widths (default: the study's, narrowing evenly to the latent size).

    Returns
    -------
    TrainedModel
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the loop's torch ops are small (one batch); the compiled step has threads of its own
    try:
        return _train(acq, arch=arch, latent=latent, seed=seed, config=config, split=split, callback=callback,
                      hidden=hidden)
    finally:
        torch.set_num_threads(threads)


def make_step(network: Autoencoder, *, lr: float, loss: str) -> CompiledStep | AutogradStep:
    """The training step for ``network``: :class:`~dwivae.learn.compiled_step.CompiledStep` (the C kernel)
    where it handles the network and a C compiler is there, else :class:`AutogradStep` (torch
    autograd; ``DWIVAE_KERNEL=torch`` in the environment forces it). Both give the same update up
    to float32 rounding: a new network or loss trains through autograd with no C change."""
    try:
        return CompiledStep(network, lr=lr, loss=loss)
    except UnsupportedNetwork:
        return AutogradStep(network, lr=lr, loss=loss)


def _train(acq: Acquisition, *, arch: str, latent: int, seed: int, config: TrainConfig | None,
           split: SimulatedSplit | None, callback: Callable[[dict], None] | None,
           hidden: tuple[int, ...] | None) -> TrainedModel:
    config = replace(config or PRESETS["default"], seed=seed)
    model_config = ModelConfig(arch=arch, n_inputs=acq.n_volumes, latent=latent, hidden=hidden)
    streams = seed_streams(seed)
    started = time.perf_counter()
    if split is None:
        # Fresh atoms leave the split's training atoms unused: simulate only what the test MSE needs.
        n_atoms = (min(config.n_atoms, math.ceil(MONITOR_ATOMS / config.test_fraction)) if config.fresh_atoms
                   else config.n_atoms)
        split = simulate_split(acq, seed=seed, atoms=config.atoms, n_atoms=n_atoms, free_water=config.free_water,
                               test_fraction=config.test_fraction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(streams["init"].generate_state(1)[0]))
        network = build_model(model_config)
    generator = torch_generator(streams["train"])
    clean = torch.from_numpy(split.train_clean)
    sigmas = torch.from_numpy(split.noise_levels)
    test_noisy, test_clean = _monitor_pairs(split, config, seed)
    step = make_step(network, lr=config.lr, loss=config.loss)
    # The study's fixed set of pairs, in a new order each epoch. The compiled step reads each
    # batch's rows in place, in an order it makes on the fly from the epoch's key, and draws eps
    # in C: one call per epoch, nothing in Python between steps; its pairs' noise is drawn in C
    # too. Other steps get numpy's noise and the epoch's pairs gathered into two buffers first
    # (~1 s for the study's 2 x 1.4 GB), each batch a slice.
    in_place = config.samples_per_epoch is None and isinstance(step, CompiledStep)
    if in_place:
        noisy = torch.from_numpy(counter_noisy_copies(split.train_clean, split.noise_levels,
                                                      seed=int(streams["noise"].generate_state(1, np.uint64)[0])))
        clean_rows = torch.from_numpy(aligned_empty(split.train_clean.shape))  # two cache lines a row
        clean_rows.copy_(clean)
    elif config.samples_per_epoch is None:
        noisy, atom, _ = noisy_copies(split.train_clean, split.noise_levels,
                                      rng=np.random.default_rng(streams["train"]))
        noisy, atom = torch.from_numpy(noisy), torch.from_numpy(atom)
    epoch_size = len(noisy) if config.samples_per_epoch is None else config.samples_per_epoch
    fresh = np.random.default_rng(streams["train"].spawn(1)[0]) if config.fresh_atoms else None
    batch = min(config.batch_size, epoch_size)
    steps = epoch_size // batch
    y_buffer = torch.empty(batch, acq.n_volumes)
    eps_seed = int(streams["eps"].generate_state(1, dtype=np.uint64)[0]) if arch == "vae" else None
    order_keys = [int(k) for k in streams["order"].generate_state(config.epochs, dtype=np.uint64)]
    epoch_x = epoch_y = None
    if config.samples_per_epoch is None and not in_place:
        epoch_x, epoch_y = torch.empty_like(noisy), torch.empty_like(noisy)
    b0 = torch.from_numpy(acq.b0_mask) if config.normalise == "b0" else None
    history: list[dict] = []
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        beta = beta_schedule(epoch, beta_max=config.beta_max, start_epoch=config.beta_start_epoch,
                             step=config.beta_step) if arch == "vae" else 0.0
        kl_weight = beta / acq.n_volumes  # beta weighs KL against the reconstruction summed over volumes
        network.train()
        step.lr = config.lr_at(epoch)
        tick = time.perf_counter()
        if in_place:
            recon, kl_mean = step.steps(noisy, clean_rows, batch=batch, n_steps=steps, beta=kl_weight,
                                        shuffle=order_keys[epoch - 1], seed=eps_seed, first_step=(epoch - 1) * steps)
        else:
            rec_sum = torch.zeros(())
            kl_sum = torch.zeros(())
            if epoch_x is not None:
                order = torch.randperm(epoch_size, generator=generator)
                torch.index_select(noisy, 0, order, out=epoch_x)
                torch.index_select(clean, 0, torch.index_select(atom, 0, order), out=epoch_y)
            for k in range(steps):
                if epoch_x is not None:
                    x, y = epoch_x[k * batch:(k + 1) * batch], epoch_y[k * batch:(k + 1) * batch]
                else:
                    if fresh is not None:
                        y = torch.from_numpy(clean_atoms(acq, config.atoms, batch, rng=fresh, tensors=False,
                                                           free_water=config.free_water)[1])
                    else:
                        y = torch.index_select(clean, 0, torch.randint(len(clean), (batch,), generator=generator),
                                               out=y_buffer)
                    x = noisy_batch(y, batch_sigmas(config, sigmas, batch, generator), config, generator)
                    if b0 is not None:
                        x, y = normalise_by_noisy_b0(x, y, b0)
                eps = torch.randn((batch, latent), generator=generator) if arch == "vae" else None
                rec, kl = step(x, y, eps, kl_weight)
                rec_sum += rec
                kl_sum += kl
            recon, kl_mean = float(rec_sum) / steps, float(kl_sum) / steps
        train_seconds += time.perf_counter() - tick
        record = {"epoch": epoch, "lr": step.lr, "beta": beta, "recon": recon, "kl": kl_mean}
        record["total"] = record["recon"] + kl_weight * record["kl"]
        if not math.isfinite(record["total"]):
            raise FloatingPointError(f"the training loss became {record['total']} at epoch {epoch}: "
                                     "lower the learning rate (--lr) or check the protocol")
        if epoch % config.test_every == 0 or epoch == config.epochs:
            estimate = _estimate(network, test_noisy, config, acq.b0_mask)
            record["test_mse"] = float(np.mean((estimate - test_clean) ** 2))
        history.append(record)
        if callback is not None:
            callback(record)
    network.eval()
    summary = {
        "test_mse": history[-1]["test_mse"],
        "n_train_atoms": len(split.train_clean),
        "n_test_atoms": len(split.test_clean),
        "n_noise_levels": len(split.noise_levels),
        "sample_passes": steps * batch * config.epochs,
        "train_seconds": train_seconds,
        "samples_per_second": steps * batch * config.epochs / max(train_seconds, 1e-9),
        "wall_seconds": time.perf_counter() - started,
    }
    return TrainedModel(network, model_config, config, acq, history, summary)
