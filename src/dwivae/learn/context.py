"""Learned spatial context: training of a :class:`~dwivae.learn.models.ContextNet` on the latent
codes of a trained autoencoder, on neighbourhoods simulated by :mod:`dwivae.learn.neighbourhoods`:
every voxel is normalised by its own measured b0 mean m and encoded; the network learns the centre
voxel's clean signal over m through the frozen decoder. :func:`dwivae.apply.spatial.context_codes`
applies it to a volume.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from dwivae.errors import InputError
from dwivae.learn.dataset import seed_streams, torch_generator
from dwivae.learn.losses import reconstruction_loss
from dwivae.learn.models import ContextConfig, ContextNet
from dwivae.learn.neighbourhoods import simulate_neighbourhoods
from dwivae.learn.training import TrainedModel
from dwivae.physics.signals import normalise_by_b0

LOG_FLOOR = 0.01
"""Added to normalised signals before the log of :func:`log_signal_loss`."""
MONITOR = 8192
"""Held-out neighbourhoods on which the centre-signal MSE is measured."""


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


