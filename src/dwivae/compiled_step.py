"""Training steps in C (``train_loop.c`` and ``train_step.c``): forward, backward and Adam.

:class:`CompiledStep` takes :class:`~dwivae.fused.FusedStep`'s weights (the network's parameters
are views into one flat buffer, gathered into ``[W | b]`` blocks for the kernel) and runs whole
steps in C: 128 samples at a time through every layer and back with the activations in cache,
each weight's gradient summed in vector lanes, then Adam, on threads of its own that share each
batch. :meth:`CompiledStep.steps` runs many steps in one call, reading each batch's rows in place
in an order made on the fly and drawing the VAE's eps in C, so that nothing runs in Python
between steps and no epoch's data is copied.
Deterministic: the same network, batches and eps give bit-identical weights on any number of
threads.
"""
from __future__ import annotations

import ctypes

import numpy as np
import torch
from torch import nn

from dwivae.fused import FusedStep, UnsupportedNetwork
from dwivae.kernel import ACTIVATION_CODES, MAX_WIDTH, default_threads, library
from dwivae.models import Autoencoder

ACTIVATIONS = {name: ACTIVATION_CODES[module.__name__] for name, module in
               (("elu", nn.ELU), ("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU))}
"""FusedStep's activation names to the kernel's codes (simd.h)."""
LOSSES = {"huber": 0, "mse": 1, "l1": 2}
EPS_NONE, EPS_GIVEN, EPS_DRAWN = 0, 1, 2


def _pointer(t: torch.Tensor | np.ndarray | None, ctype=ctypes.c_float):
    if t is None:
        return None
    address = t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data
    return ctypes.cast(address, ctypes.POINTER(ctype))


def _library() -> ctypes.CDLL:
    lib = library()
    if lib is None:
        raise UnsupportedNetwork("no compiled kernel: no C compiler, or DWIVAE_KERNEL=torch")
    return lib


def standard_normals(seed: int, step: int, n: int, latent: int) -> np.ndarray:
    """The eps (n, latent) that :meth:`CompiledStep.steps` draws for samples 0..n of step ``step``
    with ``seed`` (counter-based Box-Muller in ``counter_random.h``)."""
    out = np.empty((n, latent), dtype=np.float32)
    _library().dwivae_normals(seed, step, n, latent, _pointer(out))
    return out


def shuffled_rows(key: int, n: int, first: int = 0, count: int | None = None) -> np.ndarray:
    """Samples ``first..first + count`` (default: all n) of the order of n rows under ``key`` that
    :meth:`CompiledStep.steps` reads with ``shuffle=key``: a keyed pseudo-random permutation
    (a Feistel network with cycle walking, ``counter_random.h``)."""
    count = n - first if count is None else count
    out = np.empty(count, dtype=np.uint32)
    _library().dwivae_shuffled_rows(key, n, first, count, _pointer(out, ctypes.c_uint32))
    return out


class CompiledStep(FusedStep):
    """Optimisation steps in C: ``step(x, y, eps, beta) -> (rec, kl)`` as
    :class:`~dwivae.fused.FusedStep`, and :meth:`steps` for many at once.

    Parameters
    ----------
    network : Autoencoder
        As for :class:`~dwivae.fused.FusedStep`, with ELU (alpha 1), ReLU or LeakyReLU and layers
        of at most :data:`~dwivae.kernel.MAX_WIDTH` units; anything else raises
        :class:`~dwivae.fused.UnsupportedNetwork`, as does a machine where the kernel cannot be built.
    lr : float
    loss : {"huber", "mse", "l1"}
    lanes : int, optional
        Threads that share each batch (default: the CPUs this process may use). The result does
        not depend on it.
    """

    def __init__(self, network: Autoencoder, *, lr: float, loss: str, lanes: int | None = None) -> None:
        lib = _library()
        super().__init__(network, lr=lr, loss=loss)
        if self.act not in ACTIVATIONS or (self.act == "elu" and self.act_param != 1.0):
            raise UnsupportedNetwork(f"the compiled step does not implement {self.act}({self.act_param})")
        if any(max(layer.n_in, layer.n_out) > MAX_WIDTH for layer in self.layers):
            raise UnsupportedNetwork(f"the compiled step takes layers of at most {MAX_WIDTH} units")
        self.lanes_wanted = lanes or default_threads()
        # the kernel keeps the weights and Adam's moments in the [W | b] layout of flat_aug
        self.to_flat = torch.argsort(self.to_aug)
        self.moment1 = torch.zeros_like(self.flat_aug)
        self.moment2 = torch.zeros_like(self.flat_aug)
        self.adam_steps = ctypes.c_int64(0)
        self._fn = lib.dwivae_train_steps
        self._n_in = np.array([layer.n_in for layer in self.layers], dtype=np.int32)
        self._n_out = np.array([layer.n_out for layer in self.layers], dtype=np.int32)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None,
                 beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        rec, kl = self.steps(x, y, batch=len(x), n_steps=1, beta=beta, eps=eps)
        return torch.tensor(rec, dtype=torch.float32), torch.tensor(kl, dtype=torch.float32)

    def steps(self, x: torch.Tensor, y: torch.Tensor, *, batch: int, n_steps: int, beta: float,
              shuffle: int | None = None, first_sample: int = 0, eps: torch.Tensor | None = None,
              seed: int | None = None, first_step: int = 0) -> tuple[float, float]:
        """``n_steps`` steps of ``batch`` samples; returns the mean reconstruction loss and KL per step.

        Parameters
        ----------
        x : (R, N) float32 tensor
            Noisy inputs. Sample s of step k is sample ``i = first_sample + k * batch + s`` of an
            epoch: row i of x, or with ``shuffle``, row ``shuffled_rows(shuffle, R)[i]``.
        y : (M, N) float32 tensor
            Clean targets: x's row r has target row ``r % M`` (x holds noisy copies of y level
            after level, as :func:`dwivae.dataset.noisy_copies` makes them; M = R: row r).
        batch, n_steps : int
        beta : float
            KL weight (ignored for a DAE).
        shuffle : int, optional
            Key of the order of x's rows (a new one for each epoch).
        first_sample : int
        eps : (n_steps * batch, latent) float32 tensor, optional
            The VAE's eps. Without it, ``seed`` draws it in C (:func:`standard_normals`, step
            ``first_step + k``); without either, ``z = mu``.
        seed : int, optional
        first_step : int
        """
        n = batch * x.shape[1]
        divisor = n / 2 if self.loss == "mse" else n  # d loss / d out = (2) (out - y) / n
        kscale = beta / (batch / divisor) if (self.vae and beta > 0) else 0.0  # KL grad, same scale
        for name, t in (("x", x), ("y", y)):
            if t.dtype != torch.float32 or t.dim() != 2 or t.shape[1] != self.layers[0].n_in:
                raise ValueError(f"{name} must be float32 rows of {self.layers[0].n_in} volumes")
        if not 0 < len(y) <= len(x) < 2**31 or len(x) % len(y):
            raise ValueError(f"x's {len(x)} rows must be copies of y's {len(y)} rows")
        if first_sample < 0 or first_sample + n_steps * batch > len(x):
            raise ValueError(f"samples {first_sample}..{first_sample + n_steps * batch} run past x's {len(x)} rows")
        if eps is not None:
            eps = eps.to(torch.float32).contiguous()
            if eps.shape != (n_steps * batch, self.latent):
                raise ValueError(f"eps must be ({n_steps * batch}, {self.latent}), not {tuple(eps.shape)}")
        mode = EPS_GIVEN if eps is not None else (EPS_DRAWN if seed is not None else EPS_NONE)
        x, y = x.contiguous(), y.contiguous()
        sums = np.zeros(2)
        with torch.no_grad():
            torch.index_select(self.flat, 0, self.to_aug, out=self.flat_aug)
            status = self._fn(
                _pointer(x), len(x), _pointer(y), len(y), shuffle is not None, (shuffle or 0) & (2**64 - 1),
                first_sample, _pointer(eps), mode, (seed or 0) & (2**64 - 1), first_step, n_steps, batch,
                len(self.layers), self.n_enc, _pointer(self._n_in, ctypes.c_int), _pointer(self._n_out, ctypes.c_int),
                int(self.vae), ACTIVATIONS[self.act], float(self.act_param), LOSSES[self.loss], float(kscale),
                float(divisor), _pointer(self.flat_aug), _pointer(self.moment1), _pointer(self.moment2),
                ctypes.byref(self.adam_steps), float(self.lr), self.beta1, self.beta2, self.eps,
                int(self.lanes_wanted), _pointer(sums, ctypes.c_double))
            if status != 0:
                raise RuntimeError(f"the compiled training step failed (status {status})")
            torch.index_select(self.flat_aug, 0, self.to_flat, out=self.flat)
        steps = max(n_steps, 1)
        return sums[0] / (steps * n), (sums[1] * 0.5 / (steps * batch) if self.vae else 0.0)
