"""Model directories: ``model.safetensors`` (weights) and ``model.json`` (everything else).

Loading rebuilds the network from the JSON alone and reads the weights with safetensors, so a
downloaded model never runs code (no pickle). :func:`load_model` builds the torch modules;
:func:`load_frozen` reads the arrays with numpy for the compiled forward pass, without torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError

from dwivae._version import __version__
from dwivae.acquisition import Acquisition, from_json
from dwivae.config import ContextConfig, ModelConfig, TrainConfig
from dwivae.errors import InputError
from dwivae.frozen import FrozenModel

if TYPE_CHECKING:
    from dwivae.training import TrainedModel

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "model.json"
CONTEXT_PREFIX = "context"
"""Weights of a context network are stored beside the autoencoder's, under this prefix."""


def model_state(model: TrainedModel) -> dict:
    """The autoencoder's state dict and, under ``CONTEXT_PREFIX``, the context network's."""
    state = dict(model.network.state_dict())
    if model.context is not None:
        state.update({f"{CONTEXT_PREFIX}.{k}": v for k, v in model.context.state_dict().items()})
    return state


def save_model(model: TrainedModel, out: str | PathLike[str], *, force: bool = False) -> Path:
    """Write a model directory atomically (a temporary sibling directory, then a rename).

    Parameters
    ----------
    model : TrainedModel
    out : path
        The directory to create.
    force : bool
        Replace an existing directory; refused otherwise.

    Returns
    -------
    Path
        The model directory.
    """
    from safetensors.torch import save_file

    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "format_version": FORMAT_VERSION,
        "dwivae_version": __version__,
        "model_config": model.model_config.to_json(),
        "train_config": model.train_config.to_json(),
        "seed": model.train_config.seed,
        "acquisition": model.acquisition.to_json(),
        "summary": model.summary,
        "history": model.history,
    }
    if model.context is not None:
        metadata["context_config"] = model.context.config.to_json()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous() for k, v in model_state(model).items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format_version": str(FORMAT_VERSION)})
        (tmp / METADATA).write_text(json.dumps(metadata, indent=2))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_metadata(path: Path) -> dict:
    """``model.json`` of a model directory, checked: the directory and both files exist, the JSON
    parses and its format version is this dwivae's.

    Raises
    ------
    InputError
        If the directory or a file is missing, unreadable, or of another format version.
    """
    if not path.is_dir():
        raise InputError(f"model directory {path} does not exist: train one with `dwivae train --out {path}`")
    for name in (WEIGHTS, METADATA):
        if not (path / name).is_file():
            raise InputError(f"{path} is not a dwivae model directory: {name} is missing")
    try:
        meta = json.loads((path / METADATA).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path / METADATA} is corrupt ({err}): retrain or re-download the model") from None
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION:
        raise InputError(f"{path} has model format version {version!r} but this dwivae reads version "
                         f"{FORMAT_VERSION}: retrain it with this version")
    return meta


def _corrupt(path: Path, err: Exception) -> InputError:
    return InputError(f"{path} is corrupt ({type(err).__name__}: {err}): retrain or re-download the model")


def load_model(path: str | PathLike[str]) -> TrainedModel:
    """Load a model directory written by :func:`save_model`.

    Raises
    ------
    InputError
        If the directory or a file is missing, unreadable, or of another format version.
    """
    from safetensors.torch import load_file

    from dwivae.models import ContextNet, build_model
    from dwivae.training import TrainedModel

    path = Path(path)
    meta = read_metadata(path)
    try:
        model_config = ModelConfig(**meta["model_config"])
        train_config = TrainConfig(**meta["train_config"])
        acquisition = from_json(meta["acquisition"])
        network = build_model(model_config)
        context = ContextNet(ContextConfig(**meta["context_config"])) if "context_config" in meta else None
        weights = load_file(str(path / WEIGHTS))
        prefix = f"{CONTEXT_PREFIX}."
        network.load_state_dict({k: v for k, v in weights.items() if not k.startswith(prefix)}, strict=True)
        if context is not None:
            context.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                    strict=True)
            context.eval()
    except (KeyError, TypeError, RuntimeError, SafetensorError, OSError) as err:
        raise _corrupt(path, err) from None
    network.eval()
    return TrainedModel(network, model_config, train_config, acquisition,
                        meta.get("history", []), meta.get("summary", {}), context)


def load_frozen(path: str | PathLike[str]) -> FrozenModel | None:
    """Load a model directory for the compiled forward pass only, without importing torch.

    Returns None where the compiled kernel cannot run the model (no C compiler,
    ``DWIVAE_KERNEL=torch``, a layer wider than the kernel takes): use :func:`load_model` then.
    Raises InputError as :func:`load_model` does, for a missing, corrupt or incomplete model.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_metadata(path)
    try:
        model = FrozenModel(ModelConfig(**meta["model_config"]), TrainConfig(**meta["train_config"]),
                            from_json(meta["acquisition"]), load_file(str(path / WEIGHTS)),
                            ContextConfig(**meta["context_config"]) if "context_config" in meta else None)
        compiled = model.compiled()
    except (KeyError, TypeError, ValueError, SafetensorError, OSError) as err:
        raise _corrupt(path, err) from None
    return model if compiled is not None else None


def cache_dir() -> Path:
    """Where models trained on the fly are kept: ``$DWIVAE_CACHE``, else the user cache folder."""
    if os.environ.get("DWIVAE_CACHE"):
        return Path(os.environ["DWIVAE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dwivae" / "models"


def cached_model_path(acq: Acquisition, *, arch: str, latent: int, seed: int) -> Path:
    """The cache directory of the model for this protocol, architecture, latent size and seed."""
    return cache_dir() / f"{acq.fingerprint()}-{arch}-latent{latent}-seed{seed}"


def load_or_train(
    acq: Acquisition,
    *,
    arch: str = "vae",
    latent: int = 7,
    seed: int = 0,
    config: TrainConfig | None = None,
    callback: Callable[[dict], None] | None = None,
) -> tuple[TrainedModel, Path]:
    """A model for ``acq`` from the cache, trained and cached first if there is none.

    Models are keyed by the protocol's fingerprint, the architecture, the latent size and the seed,
    so a second run on data of the same protocol reuses the first run's model.

    Returns
    -------
    model : TrainedModel
    path : Path
        Its directory in the cache.
    """
    path = cached_model_path(acq, arch=arch, latent=latent, seed=seed)
    if (path / METADATA).is_file():
        return load_model(path), path
    from dwivae.training import train

    model = train(acq, arch=arch, latent=latent, seed=seed, config=config, callback=callback)
    save_model(model, path, force=True)
    return model, path


def model_fingerprint(model: TrainedModel | FrozenModel) -> str:
    """A 16-hex-digit hash of the configuration and the weights (in name order), for provenance
    records; a model gives the same one whether loaded with :func:`load_model` or :func:`load_frozen`."""
    if isinstance(model, FrozenModel):
        context_config, arrays = model.context_config, model.weights
    else:
        context_config = model.context.config if model.context is not None else None
        arrays = {name: tensor.detach().numpy() for name, tensor in model_state(model).items()}
    digest = hashlib.sha256(json.dumps([model.model_config.to_json(), model.train_config.to_json()]).encode())
    if context_config is not None:
        digest.update(json.dumps(context_config.to_json()).encode())
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(arrays[name], dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]
