"""dwivae: denoise diffusion-weighted MRI with a voxel-wise variational autoencoder.

The public API::

    acq = dwivae.load_acquisition("dwi.bval", "dwi.bvec")
    model = dwivae.train(acq, arch="vae", latent=7, seed=0)
    dwivae.save_model(model, "models/vae")
    denoised = dwivae.denoise(data, acq, dwivae.load_model("models/vae"), mask=mask)

``train`` and ``TrainedModel`` are imported on first use (they need torch, which takes seconds
to import and which denoising through the compiled kernel does without).
"""
from __future__ import annotations

import importlib

from dwivae._version import __version__
from dwivae.apply.denoise import denoise
from dwivae.learn.checkpoint import load_frozen, load_model, save_model
from dwivae.learn.config import TrainConfig
from dwivae.physics.acquisition import Acquisition, builtin_protocol, load_acquisition

_NEED_TORCH = {"train": "dwivae.learn.training", "TrainedModel": "dwivae.learn.training"}

__all__ = ["Acquisition", "TrainConfig", "TrainedModel", "__version__", "builtin_protocol", "denoise",
           "load_acquisition", "load_frozen", "load_model", "save_model", "train"]


def __getattr__(name: str):
    if name in _NEED_TORCH:
        return getattr(importlib.import_module(_NEED_TORCH[name]), name)
    raise AttributeError(f"module 'dwivae' has no attribute {name!r}")
