"""The model cache: models trained on the fly, keyed by protocol and settings, reused by later runs."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dwivae.learn.checkpoint import METADATA, load_frozen, load_model, save_model
from dwivae.learn.config import TrainConfig
from dwivae.learn.frozen import FrozenModel
from dwivae.physics.acquisition import Acquisition

if TYPE_CHECKING:
    from dwivae.learn.training import TrainedModel


def cache_dir() -> Path:
    """Where models trained on the fly are kept: ``$DWIVAE_CACHE``, else the user cache folder."""
    if os.environ.get("DWIVAE_CACHE"):
        return Path(os.environ["DWIVAE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dwivae" / "models"


def cached_model_path(acq: Acquisition, *, arch: str, latent: int, seed: int, tag: str = "",
                      root: Path | None = None) -> Path:
    """The cache directory of the model for this protocol, architecture, latent size, seed and
    ``tag`` (what else sets its training, e.g. the noise it was matched to), in ``root`` (default
    :func:`cache_dir`)."""
    name = f"{acq.fingerprint()}-{arch}-latent{latent}-seed{seed}{'-' + tag if tag else ''}"
    return (cache_dir() if root is None else Path(root)) / name


def load_or_train(
    acq: Acquisition,
    *,
    arch: str = "vae",
    latent: int = 7,
    seed: int = 0,
    config: TrainConfig | None = None,
    callback: Callable[[dict], None] | None = None,
    tag: str = "",
    root: Path | None = None,
    frozen: bool = False,
) -> tuple[TrainedModel | FrozenModel, Path]:
    """A model for ``acq`` from the cache, trained and cached first if there is none.

    Models are keyed by the protocol's fingerprint, the architecture, the latent size, the seed and
    ``tag`` (which must name whatever ``config`` sets), so a second run on data of the same
    protocol reuses the first run's model. ``root``: the cache folder (default :func:`cache_dir`).
    With ``frozen``, a cached model is read for the compiled forward pass alone, without importing
    torch (:func:`dwivae.learn.checkpoint.load_frozen`), where the kernel can run it.

    Returns
    -------
    model : TrainedModel or FrozenModel
    path : Path
        Its directory in the cache.
    """
    path = cached_model_path(acq, arch=arch, latent=latent, seed=seed, tag=tag, root=root)
    if (path / METADATA).is_file():
        model = load_frozen(path) if frozen else None
        return model or load_model(path), path
    from dwivae.learn.training import train

    model = train(acq, arch=arch, latent=latent, seed=seed, config=config, callback=callback)
    save_model(model, path, force=True)
    return model, path
