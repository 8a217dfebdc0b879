"""A saved model's deterministic forward pass, run through the compiled kernel without torch.

Denoising voxel by voxel needs neither autograd nor sampling, and importing torch takes ~2 s,
longer than denoising a whole brain: :func:`dwivae.learn.checkpoint.load_frozen` reads a model
directory with numpy into a :class:`FrozenModel`, which :mod:`dwivae.apply.denoise` runs like a
:class:`~dwivae.learn.training.TrainedModel`. The layers are rebuilt from the configuration in the
order of :func:`dwivae.learn.models.build_model` (a test checks the two against each other).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dwivae.kernels.bindings import ACTIVATION_CODES, MAX_WIDTH, CompiledForward, Layer, library
from dwivae.learn.config import ContextConfig, ModelConfig, TrainConfig
from dwivae.physics.acquisition import Acquisition

MODULE_NAMES = {"elu": "ELU", "relu": "ReLU", "leaky_relu": "LeakyReLU"}
"""The torch module of each activation of :class:`~dwivae.learn.config.ModelConfig`."""


@dataclass
class FrozenModel:
    """A model's configuration and weights as numpy arrays, for the compiled forward pass only.

    Parameters
    ----------
    model_config, train_config, acquisition
        As saved with the model.
    weights : dict of str to ndarray
        Every array of ``model.safetensors`` (a context network's too, under ``context.``).
    context_config : ContextConfig, optional
        The saved context network's configuration; the network itself is not run (use
        :func:`dwivae.learn.checkpoint.load_model` for it).
    """

    model_config: ModelConfig
    train_config: TrainConfig
    acquisition: Acquisition
    weights: dict[str, np.ndarray]
    context_config: ContextConfig | None = None
    context = None
    """No context network runs here: :mod:`dwivae.apply.denoise` then works voxel by voxel."""

    def layers(self, part: str = "all") -> list[Layer]:
        """The deterministic path (``all``: ``x -> decode(mu)``, ``encoder``: ``x -> mu``, or
        ``decoder``) as kernel layers, named as in :class:`~dwivae.learn.models.Autoencoder`'s state dict."""
        hidden = len(self.model_config.hidden)
        act = ACTIVATION_CODES[MODULE_NAMES[self.model_config.activation]]
        encoder = [(f"encoder.{2 * k}", act) for k in range(hidden)] + [("mu", 0)]
        decoder = [(f"decoder.{2 * k}", act) for k in range(hidden)] + [(f"decoder.{2 * hidden}",
                                                                        ACTIVATION_CODES["Sigmoid"])]
        names = {"all": encoder + decoder, "encoder": encoder, "decoder": decoder}[part]
        return [(self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], code) for name, code in names]

    def compiled(self, part: str = "all") -> CompiledForward | None:
        """The compiled forward pass, or None where the kernel cannot be built or a layer is too wide."""
        layers = self.layers(part)
        lib = library()
        if lib is None or max(max(w.shape) for w, _, _ in layers) > MAX_WIDTH:
            return None
        return CompiledForward(lib, layers)
