"""The compiled training step against the autograd step, as the fused step is tested."""
from __future__ import annotations

import copy

import pytest
import torch

from dwivae import kernel
from dwivae.compiled_step import CompiledStep
from dwivae.fused import UnsupportedNetwork
from dwivae.models import ModelConfig, build_model
from dwivae.training import AutogradStep
from test_fused import _assert_same_weights, _batches, _run_both
from test_kernel import needs_compiler

pytestmark = needs_compiler


@pytest.mark.parametrize("arch, beta", [("vae", 0.01), ("vae", 0.0), ("dae", 0.0)])
@pytest.mark.parametrize("loss", ["huber", "mse", "l1"])
def test_matches_autograd_step(arch, beta, loss):
    ref, net = _run_both(arch, loss, beta, step=CompiledStep)
    _assert_same_weights(ref, net)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_matches_autograd_step_for_each_activation(activation):
    ref, net = _run_both("vae", "huber", 0.01, activation=activation, step=CompiledStep)
    _assert_same_weights(ref, net)


@pytest.mark.parametrize("batch", [1, 31, 33, 1100])
def test_partial_tiles_and_lanes_give_the_full_batch_gradient(batch):
    # batches that are not a multiple of the kernel's 32-sample tile, split over two lanes
    ref, net = _run_both("vae", "huber", 0.01, n_steps=2, batch=batch, lanes=2, step=CompiledStep)
    _assert_same_weights(ref, net)


def test_vae_without_eps_decodes_the_mean():
    ref, net = _run_both("vae", "huber", 0.01, n_steps=1, step=CompiledStep)
    auto_net, comp_net = copy.deepcopy(ref), copy.deepcopy(net)
    x, y, _ = _batches("vae", 1, 200)[0]
    rec_a, kl_a = AutogradStep(auto_net, lr=1e-3, loss="huber")(x, y, None, 0.01)
    rec_c, kl_c = CompiledStep(comp_net, lr=1e-3, loss="huber")(x, y, None, 0.01)
    torch.testing.assert_close(rec_c, rec_a, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(kl_c, kl_a, rtol=1e-5, atol=1e-6)
    _assert_same_weights(auto_net, comp_net)


def test_same_batches_give_bit_identical_weights():
    torch.manual_seed(0)
    first = build_model(ModelConfig())
    nets = [first, copy.deepcopy(first)]
    steps = [CompiledStep(net, lr=1e-3, loss="huber", lanes=2) for net in nets]
    for x, y, eps in _batches("vae", 3, 700):
        for step in steps:
            step(x, y, eps, 0.01)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


def test_refuses_what_it_does_not_implement(monkeypatch):
    odd = build_model(ModelConfig())
    for module in odd.modules():
        if isinstance(module, torch.nn.ELU):
            module.alpha = 0.5  # an ELU the kernel does not compute (FusedStep does)
    with pytest.raises(UnsupportedNetwork, match="does not implement"):
        CompiledStep(odd, lr=1e-3, loss="huber")
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    with pytest.raises(UnsupportedNetwork, match="no compiled kernel"):
        CompiledStep(build_model(ModelConfig()), lr=1e-3, loss="huber")
    assert kernel.library() is None
