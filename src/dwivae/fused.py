"""A fast training step: hand-written forward and backward of the VAE/DAE with torch's fused Adam.

:class:`FusedStep` is a drop-in replacement for :class:`dwivae.training.AutogradStep`
(``step(x, y, eps, beta) -> (rec, kl)``, same losses, same Adam): the same update up to float32
rounding (weights agree to ~1e-7 after a few steps), but 2-2.5x faster on the CPU.
:class:`~dwivae.compiled_step.CompiledStep` replaces its torch ops by a C kernel;
:func:`dwivae.training.make_step` picks the fastest step that handles a network.

How
---
* No autograd and no allocations: every activation and gradient lives in a buffer made once per
  chunk size; all ops write in place (``torch.mm(out=...)``, ``relu_``, ``sigmoid_backward``...).
* Activations are feature-major, ``(features, batch)``, each hidden layer with a row of ones below
  it; the network's weights are gathered once per step into ``[W | b]`` blocks, so a layer's
  forward is one ``mm`` (no bias broadcast) and its weight *and* bias gradient are one ``mm``
  (no ``sum`` over the batch). The first layer reads the batch ``x`` as given, through ``x.t()``.
  The two VAE heads (mu, logvar) are one ``(2 * latent, hidden)`` matrix.
* The reconstruction gradient is left unscaled; the flat gradient is gathered back into the
  network's parameter layout and handed to torch's fused CPU Adam kernel
  (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)`` runs) with ``grad_scale`` set to
  the loss's element count: the whole update is one op. The network's parameters are views into
  that flat master buffer, so the network is trained in place and nothing is copied back.
* ELU, the study's activation: torch's ``elu_`` (expm1) and ``exp`` cost 2.3 and 1.1 ns per
  element here, ``exp2`` 0.6 ns, so ``t = exp2(min(h, 0) * log2 e)`` (which is also ELU's
  derivative, kept for the backward) and ``h = max(h, t - 1)`` (``e^x - 1 >= x``).
* Torch ops run single-threaded inside the step (``torch.set_num_threads(1)`` for its duration,
  restored after): on this shared 2-core machine, 2 OpenMP threads made the step 10-100x slower
  whenever the other core was busy (the threads wait for each other at every op), and at best
  gave 1.25x. ``lanes=2`` splits the batch into two halves run by two Python threads (ops
  release the GIL), each into its own gradient buffer, summed in a fixed order: 1.3x faster than
  1 lane in the one window where both cores were free, 0.8x while other jobs held a core (most of
  the time here), so the default is 1 lane. Batches above ``chunk`` samples per lane are cut into
  chunks whose gradients are accumulated (``addmm_``): below ~4000 samples smaller chunks cost
  more dispatches than they save in cache misses; a few % gain above (batch 24000).

What bounds it (VAE with ELU, batch 3000, torch 2.13 + MKL on a 2-core AMD EPYC VM whose cores
were shared with other jobs, so absolute timings varied up to 2x from minute to minute; the ratios
come from interleaved runs): about 55-60 % of the step is the 23 skinny GEMMs
(``(26, 33) x (33, 3000)`` and the like, and the ``K = 3000`` weight-gradient products), on which
MKL reaches 30-60 GFLOP/s against 80-90 GFLOP/s on large square ones (OpenBLAS is no better, nor
batch-major layouts); about 25 % is elementwise passes over ``(features, batch)`` (``exp2`` for
ELU, ``sigmoid``: 1 ns per element); the rest is dispatching ~85 ops from Python (0.35 ms a step,
measured at batch 16). The step runs 2-2.5x faster than :class:`~dwivae.training.AutogradStep`
(1.0-1.2 M samples/s against 0.4-0.5 M on one core; 1.8-2.3x against autograd on 2 threads).
With torch ops alone the floor is the GEMMs, about 1.3 ms per 3000 samples per core (2.3 M
samples/s); :class:`~dwivae.compiled_step.CompiledStep` replaces them by a C kernel that keeps a
tile of samples in cache through all layers (1.8 M samples/s per lane, 3.0 M on 2 lanes).

With this step, ``train()``'s loop around it costs as much again: per batch, the study preset's
epoch buffers are sliced (their gather costs ~1 s an epoch); the default preset draws 4096 x 32
normals with ``torch.randn`` (4-7 ns each, 0.6-0.9 ms), gathers 4096 atoms and adds the noise
(1.5-2 ms in all). (:meth:`~dwivae.compiled_step.CompiledStep.steps` runs the study preset's
epochs in C instead, rows read in place.) And the loop's ops follow torch's thread setting: with
the default 2 threads, while another job held a core, they took 31 ms a batch instead of 1.3 ms
(default preset: 0.06 M samples/s against 0.48 M with ``torch.set_num_threads(1)``), so train on
one thread on a shared machine.

It is deterministic: same network, same batches, same ``lanes`` and ``chunk`` give bit-identical
weights (every op is single-threaded, the reduction order is fixed). Results differ from
``AutogradStep``'s, and between different ``lanes``/``chunk``, by float32 rounding.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from dwivae.losses import reconstruction_loss
from dwivae.models import Autoencoder

_aten = torch.ops.aten
_LOG2E = 1.0 / math.log(2.0)
MAX_CHUNK = 4096
"""Default largest chunk (samples) that one lane processes at a time."""
MIN_LANE = 512
"""Batches are only split between lanes if each gets at least this many samples."""


def _weight_grad(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, *, first: bool) -> None:
    """``out = a @ b`` for a batch's first chunk, ``out += a @ b`` for the chunks after it."""
    if first:
        torch.mm(a, b, out=out)
    else:
        out.addmm_(a, b)


class UnsupportedNetwork(ValueError):
    """The network has a layer or setting that :class:`FusedStep` does not implement."""


def _activation(module: nn.Module) -> tuple[str, float]:
    if type(module) is nn.ReLU:
        return "relu", 0.0
    if type(module) is nn.LeakyReLU and module.negative_slope >= 0:
        return "leaky_relu", float(module.negative_slope)
    if type(module) is nn.ELU:
        return "elu", float(module.alpha)
    raise UnsupportedNetwork(f"the fused training step does not support {module!r} layers")


class _Layer:
    """A linear layer's weights with the bias as an extra column, ``Wb = [W | b]`` (n_out, n_in + 1)."""

    def __init__(self, Wb: torch.Tensor) -> None:
        self.Wb = Wb
        self.WbT = Wb.t()
        self.W = Wb[:, :-1]
        self.WT = self.W.t()
        self.bcol = Wb[:, -1:]
        self.n_out, self.n_in = Wb.shape[0], Wb.shape[1] - 1


class _Lane:
    """The gradient and activation buffers of one worker. Gradients are ``[W | b]`` blocks, except
    for the first layer (separate ``W`` and ``b``): its input, the batch, has no row of ones."""

    def __init__(self, layers: list[_Layer], total: int) -> None:
        self.grad = torch.empty(total)
        self.views: list = []
        offset = 0
        for k, l in enumerate(layers):
            size = l.n_out * (l.n_in + 1)
            g = self.grad[offset:offset + size]
            n_w = l.n_out * l.n_in
            self.views.append((g[:n_w].view(l.n_out, l.n_in), g[n_w:]) if k == 0
                              else g.view(l.n_out, l.n_in + 1))
            offset += size
        self.bufs: dict[int, dict] = {}


class FusedStep:
    """One optimisation step with a hand-written backward and Adam: ``step(x, y, eps, beta) -> (rec, kl)``.

    Same interface and result as :class:`dwivae.training.AutogradStep` (up to float32 rounding):
    loss = reconstruction (mean over all elements) + ``beta`` x KL (mean over the batch), Adam with
    torch's defaults; ``rec`` and ``kl`` are 0-d tensors; ``network``'s parameters become views
    into this step's flat weight buffer and are updated in place.

    Parameters
    ----------
    network : Autoencoder
        Linear layers with one activation type (ReLU, LeakyReLU with slope >= 0, ELU), a sigmoid
        output, float32 on the CPU; anything else raises :class:`UnsupportedNetwork`.
    lr : float
    loss : {"huber", "mse", "l1"}
    lanes : int, optional
        Python threads that each process part of a batch (default 1; see the module notes).
    chunk : int, optional
        Largest number of samples a lane processes at once (default :data:`MAX_CHUNK`).
    """

    def __init__(self, network: Autoencoder, *, lr: float, loss: str, lanes: int | None = None,
                 chunk: int | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        reconstruction_loss(loss)
        if not hasattr(torch, "_fused_adam_"):
            raise UnsupportedNetwork("this torch has no fused Adam kernel")
        self.network = network
        self.loss = loss
        self.lr = float(lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.lanes_wanted = lanes if lanes is not None else 1
        self.chunk = chunk or MAX_CHUNK
        if self.lanes_wanted < 1 or self.chunk < 1:
            raise ValueError(f"lanes ({lanes}) and chunk ({chunk}) must be >= 1")
        self.vae = getattr(network, "logvar", None) is not None
        linears, self.act, self.act_param = self._structure(network)
        self.latent = network.mu.out_features
        self.n_enc = len(network.encoder) // 2
        params = list(network.parameters())
        if sorted(id(p) for ws, bs in linears for p in ws + bs) != sorted(id(p) for p in params):
            raise UnsupportedNetwork("the network has parameters that the fused step does not know")
        if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in params):
            raise UnsupportedNetwork("the fused training step needs float32 parameters on the CPU")
        total = sum(p.numel() for p in params)
        # master weights: one flat buffer in the network's own layout; the parameters become views
        self.flat = torch.empty(total)
        self.grad = torch.empty(total)
        self.exp_avg = torch.zeros(total)
        self.exp_avg_sq = torch.zeros(total)
        self.step_count = torch.zeros(())  # Adam's step, a tensor as the fused kernel wants
        self.grad_scale = torch.ones(())  # the gradient is divided by this: the loss's element count
        self.flat_aug = torch.empty(total)  # the same weights as [W | b] blocks, gathered each step
        where = {}
        offset = 0
        with torch.no_grad():
            for p in params:
                view = self.flat[offset:offset + p.numel()].view_as(p)
                view.copy_(p)
                where[id(p)] = offset
                p.data = view
                offset += p.numel()
        w_index = torch.empty(total, dtype=torch.long)  # [W | b] position -> flat position
        g_index = torch.empty(total, dtype=torch.long)  # flat position -> lane gradient position
        self.layers: list[_Layer] = []
        offset = 0
        for k, (ws, bs) in enumerate(linears):
            n_out = sum(w.shape[0] for w in ws)
            n_in = ws[0].shape[1]
            size = n_out * (n_in + 1)
            aug = torch.arange(offset, offset + size).view(n_out, n_in + 1)
            grad_pos = (torch.cat([torch.arange(offset, offset + n_out * n_in).view(n_out, n_in),
                                   torch.arange(offset + n_out * n_in, offset + size)[:, None]], 1)
                        if k == 0 else aug)
            row = 0
            for w, b in zip(ws, bs):
                m = w.shape[0]
                flat_w = where[id(w)] + torch.arange(m * n_in).view(m, n_in)
                flat_b = where[id(b)] + torch.arange(m)
                w_index[aug[row:row + m, :n_in].reshape(-1)] = flat_w.view(-1)
                w_index[aug[row:row + m, n_in]] = flat_b
                g_index[flat_w.view(-1)] = grad_pos[row:row + m, :n_in].reshape(-1)
                g_index[flat_b] = grad_pos[row:row + m, n_in]
                row += m
            self.layers.append(_Layer(self.flat_aug[offset:offset + size].view(n_out, n_in + 1)))
            offset += size
        self.to_aug = w_index
        self.to_flat = g_index
        self.lanes = [_Lane(self.layers, total) for _ in range(self.lanes_wanted)]
        self.pool = ThreadPoolExecutor(len(self.lanes) - 1) if len(self.lanes) > 1 else None
        self.c_log2e = torch.tensor(_LOG2E)
        self.c_half_log2e = torch.tensor(0.5 * _LOG2E)
        self.c_one = torch.tensor(1.0)
        self.c_half = torch.tensor(0.5)

    @staticmethod
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
            raise UnsupportedNetwork("the fused training step needs Linear/activation stacks "
                                     "ending in a sigmoid, with biases")
        acts = {_activation(m) for m in enc_mods[1::2] + dec_mods[1:-1:2]}
        if len(acts) != 1:
            raise UnsupportedNetwork("the fused training step needs a single activation type")
        act, param = acts.pop()
        linears = [([m.weight], [m.bias]) for m in enc]
        linears.append(([h.weight for h in heads], [h.bias for h in heads]))
        linears += [([m.weight], [m.bias]) for m in dec]
        return linears, act, param

    def __del__(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown(wait=False)

    # ----------------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None,
                 beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        B, N = x.shape
        n = B * N
        divisor = n / 2 if self.loss == "mse" else n  # d loss / d out = (2) (out - y) / n
        kscale = beta / (B / divisor) if (self.vae and beta > 0) else 0.0  # KL grad, same scale
        n_lanes = min(len(self.lanes), max(1, B // MIN_LANE))
        per_lane = -(-B // n_lanes)
        bounds = [(lo, min(B, lo + per_lane)) for lo in range(0, B, per_lane)]
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            with torch.no_grad():
                torch.index_select(self.flat, 0, self.to_aug, out=self.flat_aug)
                futures = [self.pool.submit(self._run, lane, x, y, eps, lo, hi, kscale)
                           for lane, (lo, hi) in zip(self.lanes[1:], bounds[1:])]
                rec, kl = self._run(self.lanes[0], x, y, eps, *bounds[0], kscale)
                grad_aug = self.lanes[0].grad
                for lane, f in zip(self.lanes[1:], futures):
                    r, k = f.result()
                    rec.add_(r)
                    if k is not None:
                        kl.add_(k)
                    grad_aug.add_(lane.grad)
                torch.index_select(grad_aug, 0, self.to_flat, out=self.grad)
                if self.grad_scale.item() != divisor:
                    self.grad_scale.fill_(divisor)
                self.step_count.add_(1.0)
                torch._fused_adam_([self.flat], [self.grad], [self.exp_avg], [self.exp_avg_sq], [],
                                   [self.step_count], lr=self.lr, beta1=self.beta1, beta2=self.beta2,
                                   weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False,
                                   grad_scale=self.grad_scale)
                rec.div_(n)
                kl = kl.mul_(0.5 / B) if kl is not None else torch.zeros(())
        finally:
            if threads != 1:
                torch.set_num_threads(threads)
        return rec, kl

    def _run(self, lane: _Lane, x, y, eps, lo: int, hi: int, kscale: float):
        """Samples lo:hi in chunks; the lane's gradient is their sum. Returns (rec sum, KL sum)."""
        if lane is not self.lanes[0]:
            # a new thread's OpenMP and MKL settings are not torch's: without this, its ops ran
            # 100-500x slower for the first seconds
            torch.set_num_threads(1)
        with torch.no_grad():
            n_chunks = -(-(hi - lo) // self.chunk)
            size = -(-(hi - lo) // n_chunks)
            rec = kl = None
            for s in range(lo, hi, size):
                e = min(hi, s + size)
                r, k = self._chunk(lane, x[s:e], y[s:e], eps[s:e] if eps is not None else None,
                                   kscale, s == lo)
                if rec is None:
                    rec, kl = r, k
                else:
                    rec.add_(r)
                    if k is not None:
                        kl.add_(k)
            return rec, kl

    def _buffers(self, lane: _Lane, C: int) -> dict:
        """Activation buffers for chunks of C samples, with every view the step needs made once."""
        bufs = lane.bufs.get(C)
        if bufs is None:
            L = self.latent
            enc, dec = self.layers[:self.n_enc], self.layers[self.n_enc + 1:]
            N = dec[-1].n_out
            e = torch.empty
            tmp = e(max(l.n_out for l in enc + dec) * C)

            def hidden(n: int) -> tuple:
                """(output with a row of ones below, its transpose, the output rows, the
                activation's saved derivative, the gradient, scratch)."""
                ha = e(n + 1, C)
                ha[n].fill_(1.0)
                return ha, ha.t(), ha[:n], e(n, C), e(n, C), tmp[:n * C].view(n, C)
            za = e(L + 1, C)
            za[L].fill_(1.0)
            H = e(2 * L, C) if self.vae else za[:L]
            dH = e(self.layers[self.n_enc].n_out, C)
            d, c = e(C, N), e(C, N)
            bufs = {
                "enc": [hidden(l.n_out) for l in enc],
                "dec": [hidden(l.n_out) for l in dec[:-1]],
                "za": za, "zaT": za.t(), "z": za[:L],
                "H": H, "mu": H[:L], "lv": H[L:],
                "out": e(C, N), "d": d, "c": c, "dv": d.view(-1), "cv": c.view(-1),
                "dT": d.t(), "cT": c.t(),
                "dH": dH, "dmu": dH[:L], "dlv": dH[L:],
                "std": e(L, C), "es": e(L, C), "em1": e(L, C), "klt": e(L, C),
            }
            lane.bufs[C] = bufs
        return bufs

    def _act_fwd(self, h: torch.Tensor, t: torch.Tensor, tmp: torch.Tensor) -> None:
        """The activation, in place on h; t keeps what the backward needs (ELU)."""
        act = self.act
        if act == "relu":
            h.relu_()
        elif act == "leaky_relu":
            torch._C._nn.leaky_relu_(h, self.act_param)
        elif self.act_param == 1.0:
            # t = exp(min(h, 0)) is ELU's derivative, and ELU(h) = max(h, t - 1) as e^x - 1 >= x
            torch.clamp(h, max=0.0, out=t)
            t.mul_(self.c_log2e)
            t.exp2_()
            torch.sub(t, self.c_one, out=tmp)
            torch.maximum(h, tmp, out=h)
        else:
            torch._C._nn.elu_(h, self.act_param)

    def _act_bwd(self, g: torch.Tensor, h: torch.Tensor, t: torch.Tensor) -> None:
        """g *= activation'(.), in place, from the activation's output h (or t for ELU)."""
        act = self.act
        if act == "relu":
            _aten.threshold_backward.grad_input(g, h, 0, grad_input=g)
        elif act == "leaky_relu":
            _aten.leaky_relu_backward.grad_input(g, h, self.act_param, True, grad_input=g)
        elif self.act_param == 1.0:
            g.mul_(t)
        else:
            _aten.elu_backward.grad_input(g, self.act_param, 1, 1, True, h, grad_input=g)

    def _chunk(self, lane: _Lane, x, y, eps, kscale: float, first: bool):
        """Forward and backward of one chunk; writes (first) or adds its gradient to the lane's."""
        b = self._buffers(lane, x.shape[0])
        act_fwd, act_bwd = self._act_fwd, self._act_bwd
        layers, grads, n_enc = self.layers, lane.views, self.n_enc
        enc, head, dec = layers[:n_enc], layers[n_enc], layers[n_enc + 1:]
        benc, bdec = b["enc"], b["dec"]
        # forward, feature-major (features, C)
        l = enc[0]
        _, _, h, t, _, tmp = benc[0]
        torch.addmm(l.bcol, l.W, x.t(), out=h)
        act_fwd(h, t, tmp)
        for i in range(1, n_enc):
            _, _, h, t, _, tmp = benc[i]
            torch.mm(enc[i].Wb, benc[i - 1][0], out=h)
            act_fwd(h, t, tmp)
        z = b["z"]
        k = None
        if self.vae:
            mu, lv, std, es, em1, klt = b["mu"], b["lv"], b["std"], b["es"], b["em1"], b["klt"]
            torch.mm(head.Wb, benc[-1][0], out=b["H"])
            torch.mul(lv, self.c_half_log2e, out=std)
            std.exp2_()  # exp(lv / 2)
            if eps is not None:
                torch.mul(std, eps.t(), out=es)
                torch.add(mu, es, out=z)
            else:
                z.copy_(mu)
            torch.mul(std, std, out=em1)
            em1.sub_(self.c_one)  # exp(lv) - 1
            torch.sub(em1, lv, out=klt)
            klt.addcmul_(mu, mu)
            k = klt.sum()
        else:
            torch.mm(head.Wb, benc[-1][0], out=z)
        a = b["za"]
        for i in range(len(dec) - 1):
            ha, _, h, t, _, tmp = bdec[i]
            torch.mm(dec[i].Wb, a, out=h)
            act_fwd(h, t, tmp)
            a = ha
        last = dec[-1]
        out = b["out"]
        torch.mm(bdec[-1][1], last.WbT, out=out)  # batch-major (C, N), like y
        out.sigmoid_()
        # the loss and its gradient, unscaled (the fused Adam divides by grad_scale)
        d, c = b["d"], b["c"]
        torch.sub(out, y, out=d)
        if self.loss == "huber":
            torch.clamp(d, -1.0, 1.0, out=c)
            r = torch.nn.functional.huber_loss(out, y, reduction="sum")
            g, gT = c, b["cT"]
        elif self.loss == "mse":
            r = torch.dot(b["dv"], b["dv"])
            g, gT = d, b["dT"]
        else:
            torch.sign(d, out=c)
            r = torch.dot(b["cv"], b["dv"])
            g, gT = c, b["cT"]
        _aten.sigmoid_backward.grad_input(g, out, grad_input=g)
        # backward
        gl = grads[-1]
        _, haT, h, t, dh, _ = bdec[-1]
        _weight_grad(gl, gT, haT, first=first)
        torch.mm(last.WT, gT, out=dh)
        act_bwd(dh, h, t)
        g = dh
        for i in range(len(dec) - 2, -1, -1):
            gl = grads[n_enc + 1 + i]
            aT = bdec[i - 1][1] if i > 0 else b["zaT"]
            _weight_grad(gl, g, aT, first=first)
            if i > 0:
                _, _, h, t, dh, _ = bdec[i - 1]
                torch.mm(dec[i].WT, g, out=dh)
                act_bwd(dh, h, t)
            else:
                dh = b["dmu"]
                torch.mm(dec[i].WT, g, out=dh)
            g = dh
        if self.vae:
            dmu, dlv = b["dmu"], b["dlv"]
            if eps is not None:
                torch.mul(dmu, es, out=dlv)  # d z / d lv = eps * std / 2
            else:
                dlv.zero_()
            if kscale:
                dmu.add_(mu, alpha=kscale)
                dlv.add_(em1, alpha=kscale)
            dlv.mul_(self.c_half)
            g = b["dH"]
        gl = grads[n_enc]
        _, haT, h, t, dh, _ = benc[-1]
        _weight_grad(gl, g, haT, first=first)
        torch.mm(head.WT, g, out=dh)
        act_bwd(dh, h, t)
        g = dh
        for i in range(n_enc - 1, 0, -1):
            gl = grads[i]
            _, haT, h, t, dh, _ = benc[i - 1]
            _weight_grad(gl, g, haT, first=first)
            torch.mm(enc[i].WT, g, out=dh)
            act_bwd(dh, h, t)
            g = dh
        gW, gb = grads[0]
        if first:
            torch.mm(g, x, out=gW)
            torch.sum(g, 1, out=gb)
        else:
            gW.addmm_(g, x)
            gb.add_(g.sum(1))
        return r, k
