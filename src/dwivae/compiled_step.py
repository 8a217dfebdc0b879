"""The training step with its forward and backward in C (``train_step.c``), Adam in torch.

:class:`CompiledStep` is :class:`~dwivae.fused.FusedStep` with the per-chunk forward and backward
(85 torch ops from Python) replaced by one call into the compiled kernel of :mod:`dwivae.kernel`,
which takes 128 samples at a time through every layer and back with the activations in cache, and
sums each weight's gradient in vector lanes. The weights, the ``[W | b]`` gather, the lanes (Python
threads: ctypes releases the GIL) and torch's fused Adam are FusedStep's, so the update is the same
up to float32 rounding. Deterministic: same network, batches and lanes give bit-identical weights.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np
import torch
from torch import nn

from dwivae.fused import FusedStep, UnsupportedNetwork
from dwivae.kernel import ACTIVATION_CODES, MAX_WIDTH, library
from dwivae.models import Autoencoder

ACTIVATIONS = {name: ACTIVATION_CODES[module.__name__] for name, module in
               (("elu", nn.ELU), ("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU))}
"""FusedStep's activation names to the kernel's codes (simd.h)."""
LOSSES = {"huber": 0, "mse": 1, "l1": 2}


def _pointer(t: torch.Tensor | np.ndarray | None, ctype=ctypes.c_float):
    if t is None:
        return None
    address = t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data
    return ctypes.cast(address, ctypes.POINTER(ctype))


class CompiledStep(FusedStep):
    """One optimisation step, ``step(x, y, eps, beta) -> (rec, kl)``, forward and backward in C.

    Parameters
    ----------
    network : Autoencoder
        As for :class:`~dwivae.fused.FusedStep`, with ELU (alpha 1), ReLU or LeakyReLU and layers
        of at most :data:`~dwivae.kernel.MAX_WIDTH` units; anything else raises
        :class:`~dwivae.fused.UnsupportedNetwork`, as does a machine where the kernel cannot be built.
    lr : float
    loss : {"huber", "mse", "l1"}
    lanes : int, optional
        Threads that each take part of a batch (default: 2 where there are 2 or more cores).
    """

    def __init__(self, network: Autoencoder, *, lr: float, loss: str, lanes: int | None = None) -> None:
        lib = library()
        if lib is None:
            raise UnsupportedNetwork("no compiled kernel: no C compiler, or DWIVAE_KERNEL=torch")
        super().__init__(network, lr=lr, loss=loss, lanes=lanes or min(2, os.cpu_count() or 1))
        if self.act not in ACTIVATIONS or (self.act == "elu" and self.act_param != 1.0):
            raise UnsupportedNetwork(f"the compiled step does not implement {self.act}({self.act_param})")
        if any(max(layer.n_in, layer.n_out) > MAX_WIDTH for layer in self.layers):
            raise UnsupportedNetwork(f"the compiled step takes layers of at most {MAX_WIDTH} units")
        # the kernel returns every layer's gradient in the [W | b] layout of the weights it reads
        self.to_flat = torch.argsort(self.to_aug)
        self._fn = lib.dwivae_train_step
        self._n_in = np.array([layer.n_in for layer in self.layers], dtype=np.int32)
        self._n_out = np.array([layer.n_out for layer in self.layers], dtype=np.int32)

    def _run(self, lane, x, y, eps, lo: int, hi: int, kscale: float):
        """Samples lo:hi into the lane's gradient (written, not added). Returns (rec sum, KL sum)."""
        sums = np.zeros(2)
        x, y = x[lo:hi].contiguous(), y[lo:hi].contiguous()
        eps = eps[lo:hi].contiguous() if eps is not None else None
        status = self._fn(
            _pointer(x), _pointer(y), _pointer(eps), hi - lo, len(self.layers), self.n_enc,
            _pointer(self._n_in, ctypes.c_int), _pointer(self._n_out, ctypes.c_int), int(self.vae),
            ACTIVATIONS[self.act], float(self.act_param), LOSSES[self.loss], float(kscale),
            _pointer(self.flat_aug), _pointer(lane.grad), _pointer(sums, ctypes.c_double))
        if status != 0:
            raise RuntimeError(f"the compiled training step failed (status {status})")
        rec = torch.tensor(sums[0], dtype=torch.float32)
        return rec, (torch.tensor(sums[1], dtype=torch.float32) if self.vae else None)
