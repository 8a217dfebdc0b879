"""Training steps in C (``train_loop.c`` and ``train_step.c``): forward, backward and Adam.

:class:`CompiledStep` makes the network's parameters views into one flat buffer, gathers them into
``[W | b]`` blocks for the kernel and runs whole steps in C: 128 samples at a time through every
layer and back with the activations in cache, each weight's gradient summed in vector lanes, then
Adam, on threads of its own that share each batch. :meth:`CompiledStep.steps` runs many steps in one call, reading each batch's rows in place
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

from dwivae.kernels.bindings import (
    ACTIVATION_CODES,
    MAX_WIDTH,
    TrainAdam,
    TrainData,
    TrainNet,
    default_threads,
    library,
)
from dwivae.learn.losses import reconstruction_loss
from dwivae.learn.models import Autoencoder

ACTIVATIONS = {name: ACTIVATION_CODES[module.__name__] for name, module in
               (("elu", nn.ELU), ("relu", nn.ReLU), ("leaky_relu", nn.LeakyReLU))}
"""Activation names to the kernel's codes (simd.h)."""
LOSSES = {"huber": 0, "mse": 1, "l1": 2}
EPS_NONE, EPS_GIVEN, EPS_DRAWN = 0, 1, 2


def _pointer(t: torch.Tensor | np.ndarray | None, ctype=ctypes.c_float):
    if t is None:
        return None
    address = t.data_ptr() if isinstance(t, torch.Tensor) else t.ctypes.data
    return ctypes.cast(address, ctypes.POINTER(ctype))


class UnsupportedNetwork(ValueError):
    """The network has a layer or setting that :class:`CompiledStep` does not implement (training
    then takes :class:`dwivae.learn.training.AutogradStep`)."""


def _activation(module: nn.Module) -> tuple[str, float]:
    if type(module) is nn.ReLU:
        return "relu", 0.0
    if type(module) is nn.LeakyReLU and module.negative_slope >= 0:
        return "leaky_relu", float(module.negative_slope)
    if type(module) is nn.ELU:
        return "elu", float(module.alpha)
    raise UnsupportedNetwork(f"the compiled training step does not support {module!r} layers")


def _structure(network: nn.Module) -> tuple[list, str, float]:
    """The linear layers (weights, biases) in the order encoder, heads, decoder, and the activation."""
    try:
        enc_mods, dec_mods = list(network.encoder), list(network.decoder)
        heads = [network.mu] + ([network.logvar] if network.logvar is not None else [])
    except (AttributeError, TypeError) as err:
        raise UnsupportedNetwork(f"not an Autoencoder: {err}") from None
    enc, dec = enc_mods[0::2], dec_mods[0::2]
    if (not enc_mods or len(enc_mods) % 2 or len(dec_mods) % 2 or len(dec_mods) < 2
            or type(dec_mods[-1]) is not nn.Sigmoid
            or not all(type(m) is nn.Linear and m.bias is not None for m in enc + dec + heads)):
        raise UnsupportedNetwork("the compiled training step needs Linear/activation stacks ending in a sigmoid, "
                                 "with biases")
    acts = {_activation(m) for m in enc_mods[1::2] + dec_mods[1:-1:2]}
    if len(acts) != 1:
        raise UnsupportedNetwork("the compiled training step needs a single activation type")
    act, param = acts.pop()
    linears = [([m.weight], [m.bias]) for m in enc]
    linears.append(([h.weight for h in heads], [h.bias for h in heads]))
    linears += [([m.weight], [m.bias]) for m in dec]
    return linears, act, param


def _kernel_or_refuse() -> ctypes.CDLL:
    """The compiled kernels, or :class:`UnsupportedNetwork` (training then takes autograd)."""
    lib = library()
    if lib is None:
        raise UnsupportedNetwork("no compiled kernel: no C compiler, or DWIVAE_KERNEL=torch")
    return lib


def standard_normals(seed: int, step: int, n: int, latent: int) -> np.ndarray:
    """The eps (n, latent) that :meth:`CompiledStep.steps` draws for samples 0..n of step ``step``
    with ``seed`` (counter-based Box-Muller in ``counter_random.h``)."""
    out = np.empty((n, latent), dtype=np.float32)
    _kernel_or_refuse().dwivae_normals(seed, step, n, latent, _pointer(out))
    return out


def shuffled_rows(key: int, n: int, first: int = 0, count: int | None = None) -> np.ndarray:
    """Samples ``first..first + count`` (default: all n) of the order of n rows under ``key`` that
    :meth:`CompiledStep.steps` reads with ``shuffle=key``: a keyed pseudo-random permutation
    (a Feistel network with cycle walking, ``counter_random.h``)."""
    count = n - first if count is None else count
    out = np.empty(count, dtype=np.uint32)
    _kernel_or_refuse().dwivae_shuffled_rows(key, n, first, count, _pointer(out, ctypes.c_uint32))
    return out


class CompiledStep:
    """Optimisation steps in C: ``step(x, y, eps, beta) -> (rec, kl)``, and :meth:`steps` for many
    at once.

    Same interface and update as :class:`dwivae.learn.training.AutogradStep` (up to float32 rounding):
    loss = reconstruction (mean over all elements) + ``beta`` x KL (mean over the batch), Adam with
    torch's defaults; ``rec`` and ``kl`` are 0-d tensors; ``network``'s parameters become views
    into this step's flat weight buffer and are updated in place.

    Parameters
    ----------
    network : Autoencoder
        Linear layers with one activation type (ELU with alpha 1, ReLU, LeakyReLU), a sigmoid
        output, float32 on the CPU, layers of at most :data:`~dwivae.kernels.bindings.MAX_WIDTH` units;
        anything else raises :class:`UnsupportedNetwork`, as does a machine where the kernel cannot
        be built.
    lr : float
    loss : {"huber", "mse", "l1"}
    lanes : int, optional
        Threads that share each batch (default: the CPUs this process may use). The result does
        not depend on it.
    """

    def __init__(self, network: Autoencoder, *, lr: float, loss: str, lanes: int | None = None) -> None:
        lib = _kernel_or_refuse()
        reconstruction_loss(loss)
        self.network, self.loss, self.lr = network, loss, float(lr)
        self.beta1, self.beta2, self.eps = 0.9, 0.999, 1e-8
        self.vae = getattr(network, "logvar", None) is not None
        linears, self.act, self.act_param = _structure(network)
        if self.act not in ACTIVATIONS or (self.act == "elu" and self.act_param != 1.0):
            raise UnsupportedNetwork(f"the compiled step does not implement {self.act}({self.act_param})")
        self.latent = network.mu.out_features
        self.n_enc = len(network.encoder) // 2
        params = list(network.parameters())
        if sorted(id(p) for ws, bs in linears for p in ws + bs) != sorted(id(p) for p in params):
            raise UnsupportedNetwork("the network has parameters that the compiled step does not know")
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
            raise UnsupportedNetwork("the compiled training step needs float32 parameters on the CPU")
        widths = [(ws[0].shape[1], sum(w.shape[0] for w in ws)) for ws, _ in linears]  # (in, out) per layer
        if any(max(width) > MAX_WIDTH for width in widths):
            raise UnsupportedNetwork(f"the compiled step takes layers of at most {MAX_WIDTH} units")
        self.lanes_wanted = lanes or default_threads()
        total = sum(p.numel() for p in params)
        # master weights: one flat buffer in the network's own layout; the parameters become views
        self.flat = torch.empty(total)
        where = {}
        offset = 0
        with torch.no_grad():
            for p in params:
                view = self.flat[offset:offset + p.numel()].view_as(p)
                view.copy_(p)
                where[id(p)] = offset
                p.data = view
                offset += p.numel()
        # the kernel keeps the weights and Adam's moments as [W | b] blocks, layer after layer
        self.to_aug = torch.empty(total, dtype=torch.long)  # [W | b] position -> flat position
        offset = 0
        for (ws, bs), (n_in, n_out) in zip(linears, widths):
            aug = torch.arange(offset, offset + n_out * (n_in + 1)).view(n_out, n_in + 1)
            row = 0
            for w, b in zip(ws, bs):
                m = w.shape[0]
                self.to_aug[aug[row:row + m, :n_in].reshape(-1)] = where[id(w)] + torch.arange(m * n_in)
                self.to_aug[aug[row:row + m, n_in]] = where[id(b)] + torch.arange(m)
                row += m
            offset += aug.numel()
        self.to_flat = torch.argsort(self.to_aug)
        self.flat_aug = torch.empty(total)
        self.moment1 = torch.zeros_like(self.flat_aug)
        self.moment2 = torch.zeros_like(self.flat_aug)
        self.adam_steps = 0
        self._fn = lib.dwivae_train_steps
        self._n_in = np.array([n_in for n_in, _ in widths], dtype=np.int32)
        self._n_out = np.array([n_out for _, n_out in widths], dtype=np.int32)
        self.n_layers, self.n_inputs = len(widths), widths[0][0]

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
            after level, as :func:`dwivae.learn.dataset.noisy_copies` makes them; M = R: row r).
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
            if t.dtype != torch.float32 or t.dim() != 2 or t.shape[1] != self.n_inputs:
                raise ValueError(f"{name} must be float32 rows of {self.n_inputs} volumes")
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
            data = TrainData(_pointer(x), _pointer(y), _pointer(eps), len(x), len(y), first_sample, first_step,
                             n_steps, batch, (shuffle or 0) & (2**64 - 1), (seed or 0) & (2**64 - 1),
                             shuffle is not None, mode)
            net = TrainNet(_pointer(self._n_in, ctypes.c_int), _pointer(self._n_out, ctypes.c_int), self.n_layers,
                           self.n_enc, int(self.vae), ACTIVATIONS[self.act], LOSSES[self.loss], float(self.act_param),
                           float(kscale), float(divisor))
            adam = TrainAdam(_pointer(self.flat_aug), _pointer(self.moment1), _pointer(self.moment2), self.adam_steps,
                             float(self.lr), self.beta1, self.beta2, self.eps)
            status = self._fn(ctypes.byref(data), ctypes.byref(net), ctypes.byref(adam), int(self.lanes_wanted),
                              _pointer(sums, ctypes.c_double))
            self.adam_steps = adam.step
            if status != 0:
                raise RuntimeError(f"the compiled training step failed (status {status})")
            torch.index_select(self.flat_aug, 0, self.to_flat, out=self.flat)
        steps = max(n_steps, 1)
        return sums[0] / (steps * n), (sums[1] * 0.5 / (steps * batch) if self.vae else 0.0)
