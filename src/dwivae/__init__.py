"""dwivae: denoise diffusion-weighted MRI with a voxel-wise variational autoencoder.

The public API::

    acq = dwivae.load_acquisition("dwi.bval", "dwi.bvec")
    model = dwivae.train(acq, arch="vae", latent=7, seed=0)
    dwivae.save_model(model, "models/vae")
"""
from __future__ import annotations

from dwivae._version import __version__
from dwivae.acquisition import Acquisition, builtin_protocol, load_acquisition
from dwivae.checkpoint import load_model, save_model
from dwivae.training import TrainConfig, TrainedModel, train

__all__ = ["Acquisition", "TrainConfig", "TrainedModel", "__version__", "builtin_protocol",
           "load_acquisition", "load_model", "save_model", "train"]
