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
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError

from dwivae._version import __version__
from dwivae.errors import InputError
from dwivae.learn.config import ContextConfig, ModelConfig, TrainConfig
from dwivae.learn.frozen import FrozenModel
from dwivae.physics.acquisition import Acquisition, from_json

if TYPE_CHECKING:
    from dwivae.learn.training import TrainedModel

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


def expected_shapes(model_config: ModelConfig, context_config: ContextConfig | None = None) -> dict[str, tuple]:
    """The shape of every tensor that a model of these configurations stores, by name.

    The layers follow :class:`dwivae.learn.models.Autoencoder` and :class:`dwivae.learn.models.ContextNet`
    (a test checks the two against each other): each ``Linear`` at its index in its
    ``Sequential``, activations between them.
    """
    widths, latent = model_config.widths(), model_config.latent
    shapes: dict[str, tuple] = {}

    def linear(name: str, n_in: int, n_out: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    for k, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear(f"encoder.{2 * k}", n_in, n_out)
    linear("mu", widths[-1], latent)
    if model_config.arch == "vae":
        linear("logvar", widths[-1], latent)
    decoder = (latent, *widths[:0:-1], widths[0])
    for k, (n_in, n_out) in enumerate(zip(decoder[:-1], decoder[1:])):
        linear(f"decoder.{2 * k}", n_in, n_out)
    if context_config is not None:
        c, width = context_config.latent, context_config.width
        for name, n_in, n_out in (("score.0", 2 * c + 3, width), ("score.2", width, width), ("score.4", width, 1),
                                  ("refine.0", 2 * c + 1, width), ("refine.2", width, c)):
            linear(f"{CONTEXT_PREFIX}.{name}", n_in, n_out)
    return shapes


@dataclass
class ModelFiles:
    """What a model directory holds, read with numpy and checked (see :func:`read_model_files`)."""

    model_config: ModelConfig
    train_config: TrainConfig
    acquisition: Acquisition
    context_config: ContextConfig | None
    weights: dict[str, np.ndarray]
    meta: dict


def read_model_files(path: str | PathLike[str]) -> ModelFiles:
    """Read a model directory and check it in full, before anything is built or run from it.

    Both loaders (:func:`load_model`, :func:`load_frozen`) read through here, so they accept and
    refuse the same files. Checked: the configurations parse and agree with each other and with
    the protocol (one input per volume, the context network's latent size), and the weights hold
    exactly the tensors those configurations imply, each float32 of its shape and finite.

    Raises
    ------
    InputError
        Naming the directory and what is wrong ("corrupt"), or missing files or another format.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    meta = read_metadata(path)
    try:
        model_config = ModelConfig(**meta["model_config"])
        train_config = TrainConfig(**meta["train_config"])
        acquisition = from_json(meta["acquisition"])
        context_config = ContextConfig(**meta["context_config"]) if "context_config" in meta else None
        weights = load_file(str(path / WEIGHTS))
    except (KeyError, TypeError, ValueError, SafetensorError, OSError) as err:
        raise _corrupt(path, err) from None
    if model_config.n_inputs != acquisition.n_volumes:
        raise _corrupt(path, ValueError(f"the network takes {model_config.n_inputs} inputs but its protocol has "
                                        f"{acquisition.n_volumes} volumes"))
    if context_config is not None and context_config.latent != model_config.latent:
        raise _corrupt(path, ValueError(f"the context network's latent size {context_config.latent} is not the "
                                        f"autoencoder's {model_config.latent}"))
    expected = expected_shapes(model_config, context_config)
    extra, missing = sorted(set(weights) - set(expected)), sorted(set(expected) - set(weights))
    if extra or missing:
        raise _corrupt(path, ValueError(f"{WEIGHTS} does not hold the tensors that {METADATA} describes "
                                        f"(missing: {missing or 'none'}; unexpected: {extra or 'none'})"))
    for name, shape in expected.items():
        array = weights[name]
        if array.dtype != np.float32 or array.shape != shape:
            raise _corrupt(path, ValueError(f"tensor {name} is {array.dtype} {array.shape}; {METADATA} implies "
                                            f"float32 {shape}"))
        if not np.isfinite(array).all():
            raise _corrupt(path, ValueError(f"tensor {name} holds NaN or infinite values"))
    return ModelFiles(model_config, train_config, acquisition, context_config, weights, meta)


def load_model(path: str | PathLike[str]) -> TrainedModel:
    """Load a model directory written by :func:`save_model`, checked by :func:`read_model_files`.

    Raises
    ------
    InputError
        If the directory or a file is missing, unreadable, corrupt, or of another format version.
    """
    import torch

    from dwivae.learn.models import ContextNet, build_model
    from dwivae.learn.training import TrainedModel

    files = read_model_files(path)
    weights = {name: torch.from_numpy(array) for name, array in files.weights.items()}
    prefix = f"{CONTEXT_PREFIX}."
    network = build_model(files.model_config)
    network.load_state_dict({k: v for k, v in weights.items() if not k.startswith(prefix)}, strict=True)
    network.eval()
    context = None
    if files.context_config is not None:
        context = ContextNet(files.context_config)
        context.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)},
                                strict=True)
        context.eval()
    return TrainedModel(network, files.model_config, files.train_config, files.acquisition,
                        files.meta.get("history", []), files.meta.get("summary", {}), context)


def load_frozen(path: str | PathLike[str]) -> FrozenModel | None:
    """Load a model directory for the compiled forward pass only, without importing torch.

    Returns None where the compiled kernel cannot run the model (no C compiler,
    ``DWIVAE_KERNEL=torch``, a layer wider than the kernel takes): use :func:`load_model` then.
    Raises InputError as :func:`load_model` does, for a missing, corrupt or incomplete model.
    """
    files = read_model_files(path)
    model = FrozenModel(files.model_config, files.train_config, files.acquisition, files.weights,
                        files.context_config)
    return model if model.compiled() is not None else None


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
