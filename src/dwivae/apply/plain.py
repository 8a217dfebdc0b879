"""The plain ``dwivae denoise``: a model matched to the data's protocol and noise, then grouping.

With no model given, the command trains a VAE for the data's own protocol on signals drawn afresh
(random tensors and ball-and-sticks), with the data's kind of noise (Rician, or noncentral chi
for ``coils`` > 1) over its measured SNR range widened to powers of 2, or takes the one cached for
the same; then it estimates every voxel by :func:`dwivae.apply.grouping.grouped_signals`, b0 volumes
included. The benchmark scores the same path as the method ``dwivae``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dwivae.apply.grouping import DEFAULT_GROUP
from dwivae.learn.cache import cached_model_path, load_or_train
from dwivae.learn.config import PRESETS, TrainConfig
from dwivae.learn.frozen import FrozenModel
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.noise import SIGMA_METHODS, sigma_method, snr_range

if TYPE_CHECKING:
    from dwivae.learn.training import TrainedModel


PLAIN_SETTINGS = {"pooling": DEFAULT_GROUP, "denoise_b0": True, "context": False}
"""The options of :func:`dwivae.apply.denoise.denoise` and :func:`dwivae.apply.denoise_file.denoise_file`
that make the plain command's method: the grouped estimate, b0 volumes included."""


def matched_model(acq: Acquisition, data: np.ndarray, mask: np.ndarray, *, coils: int = 1, arch: str = "vae",
                  seed: int = 0, sigma: float | None = None, sigma_from: str | None = None,
                  log: Callable[[str], None] = lambda line: None) -> tuple[TrainedModel | FrozenModel, Path]:
    """The model of the plain command for ``data`` (X, Y, Z, N; an array, or an image's data object
    of which only the b0 volumes and the slices of the noise estimate are read): trained, or read
    from the cache for the compiled kernels alone (no torch import) where they run. ``sigma``: the
    data's noise level where already known (``sigma_from``: how it was measured, for the log),
    else estimated in ``mask``.

    Returns
    -------
    model : TrainedModel or FrozenModel
    path : Path
        Its directory in the cache.
    """
    sigma_from = sigma_from or ("given" if sigma is not None else f"the {SIGMA_METHODS[sigma_method()]}")
    sigma, (low, high) = snr_range(data, acq, mask, sigma=sigma)
    log(f"sigma {sigma:.4g} from {sigma_from}; SNR range {low:.3g}-{high:.3g}")
    config, tag = matched_training((low, high), coils=coils)
    cached = cached_model_path(acq, arch=arch, latent=7, seed=seed, tag=tag)
    noise, (low, high) = config.noise, config.snr_range
    log(f"using the cached {arch} for {acq.describe()} in {cached}" if cached.exists() else
        f"training a {arch} for {acq.describe()}, {noise} noise, SNR {low:g}-{high:g} (cached in {cached})")
    return load_or_train(acq, arch=arch, seed=seed, config=config, tag=tag, frozen=True)


def matched_training(snr: tuple[float, float], *, coils: int = 1, preset: str = "default") -> tuple[TrainConfig, str]:
    """The training of the plain command's model for data of SNR range ``snr`` (S0 / sigma, widened
    out to powers of 2) and ``coils``, from the training preset ``preset``.

    Returns
    -------
    config : TrainConfig
    tag : str
        What the config sets beyond the protocol, for the model's cache key.
    """
    low, high = 2.0 ** math.floor(math.log2(snr[0])), 2.0 ** math.ceil(math.log2(snr[1]))
    noise = "rician" if coils == 1 else "nc-chi"
    config = replace(PRESETS[preset], atoms="mixed", fresh_atoms=True, noise=noise, coils=coils, snr_range=(low, high))
    return config, f"{noise}{coils}-snr{low:g}-{high:g}" + ("" if preset == "default" else f"-{preset}")


def plain_denoise(data: np.ndarray, acq: Acquisition, mask: np.ndarray, *, coils: int = 1, seed: int = 0,
                  log: Callable[[str], None] = lambda line: None) -> np.ndarray:
    """What ``dwivae denoise IN --out OUT`` writes for ``data`` in ``mask``, held in memory.

    Returns
    -------
    (X, Y, Z, N) ndarray, float32
    """
    from dwivae.apply.denoise import denoise

    data = np.asarray(data, dtype=np.float32)
    model, _ = matched_model(acq, data, mask, coils=coils, seed=seed, log=log)
    return denoise(data, acq, model, mask=mask, coils=coils, **PLAIN_SETTINGS)
