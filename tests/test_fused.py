"""The fused training step against the autograd step it replaces."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dwivae import kernel
from dwivae.compiled_step import CompiledStep
from dwivae.fused import FusedStep, UnsupportedNetwork
from dwivae.models import ModelConfig, build_model
from dwivae.training import AutogradStep, make_step


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The reference AutogradStep on 1 thread: 2 OpenMP threads on a busy 2-core machine are
    pathologically slow. (FusedStep runs its ops on 1 thread whatever the setting.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _batches(arch: str, n_steps: int, batch: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_steps):
        y = torch.rand(batch, 32, generator=g)
        x = (y + 0.2 * torch.randn(batch, 32, generator=g)).clamp_(min=0.0)
        eps = torch.randn(batch, 7, generator=g) if arch == "vae" else None
        out.append((x, y, eps))
    return out


def _pair(arch: str, activation: str = "elu", seed: int = 1):
    torch.manual_seed(seed)
    net = build_model(ModelConfig(arch=arch, activation=activation))
    return net, copy.deepcopy(net)


def _run_both(arch, loss, beta, activation="elu", n_steps=5, batch=600, lr=1e-3, step=FusedStep, **kwargs):
    """Train copies of one network with AutogradStep and ``step`` on the same batches; check that
    the losses agree at every step and return both networks."""
    ref, net = _pair(arch, activation)
    auto = AutogradStep(ref, lr=lr, loss=loss)
    fused = step(net, lr=lr, loss=loss, **kwargs)
    for x, y, eps in _batches(arch, n_steps, batch):
        rec_a, kl_a = auto(x, y, eps, beta)
        rec_f, kl_f = fused(x, y, eps, beta)
        assert rec_f.shape == () and kl_f.shape == ()
        torch.testing.assert_close(rec_f, rec_a, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(kl_f, kl_a, rtol=1e-5, atol=1e-6)
    return ref, net


def _assert_same_weights(ref, net, atol=1e-5):
    for (name, a), b in zip(ref.named_parameters(), net.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("arch, beta", [("vae", 0.01), ("vae", 0.0), ("dae", 0.0)])
@pytest.mark.parametrize("loss", ["huber", "mse", "l1"])
def test_matches_autograd_step(arch, beta, loss):
    ref, net = _run_both(arch, loss, beta)
    _assert_same_weights(ref, net)
    assert not torch.equal(ref.mu.weight, _pair(arch)[0].mu.weight)  # it did train


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu"])
def test_matches_autograd_step_for_each_activation(activation):
    ref, net = _run_both("vae", "huber", 0.01, activation=activation)
    _assert_same_weights(ref, net)


def test_lanes_and_chunks_give_the_full_batch_gradient():
    # two lanes, each cut into chunks of 150: the gradient must still be the full batch's
    ref, net = _run_both("vae", "huber", 0.01, n_steps=2, batch=1100, lanes=2, chunk=150)
    _assert_same_weights(ref, net)
    ref, net = _run_both("dae", "mse", 0.0, n_steps=3, batch=1100, lanes=1, chunk=300)
    _assert_same_weights(ref, net)


def test_vae_without_eps_matches_autograd():
    ref, net = _pair("vae")
    auto, fused = AutogradStep(ref, lr=1e-3, loss="huber"), FusedStep(net, lr=1e-3, loss="huber")
    for x, y, _ in _batches("vae", 3, 300):
        torch.testing.assert_close(fused(x, y, None, 0.01), auto(x, y, None, 0.01), rtol=1e-5, atol=1e-7)
    _assert_same_weights(ref, net)


@pytest.mark.parametrize("lanes", [1, 2])
def test_deterministic(lanes):
    weights = []
    for _ in range(2):
        net, _ = _pair("vae")
        step = FusedStep(net, lr=2e-3, loss="huber", lanes=lanes, chunk=400)
        history = [step(x, y, eps, 0.001) for x, y, eps in _batches("vae", 2, 1100)]
        weights.append(([p.clone() for p in net.parameters()], history))
    (w1, h1), (w2, h2) = weights
    assert all(torch.equal(a, b) for a, b in zip(w1, w2))
    assert all(torch.equal(a, b) for pair1, pair2 in zip(h1, h2) for a, b in zip(pair1, pair2))


def test_network_is_trained_in_place():
    net, _ = _pair("vae")
    params = list(net.parameters())
    step = FusedStep(net, lr=1e-2, loss="mse")
    before = [p.detach().clone() for p in params]
    x, y, eps = _batches("vae", 1, 64)[0]
    step(x, y, eps, 0.0)
    assert list(net.parameters()) == params  # same Parameter objects, new values
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(p.requires_grad and p.is_contiguous() for p in params)
    # the parameters share the step's flat buffer, and changes to them reach the step
    assert all(p.untyped_storage().data_ptr() == step.flat.untyped_storage().data_ptr() for p in params)
    with torch.no_grad():
        net.mu.bias.fill_(0.25)
    assert int((step.flat == 0.25).sum()) >= 7
    # a state dict round trip keeps the link
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    assert net.mu.bias.untyped_storage().data_ptr() == step.flat.untyped_storage().data_ptr()


def test_restores_torch_thread_count():
    torch.set_num_threads(2)
    net, _ = _pair("dae")
    step = FusedStep(net, lr=1e-3, loss="huber", lanes=2)
    x, y, eps = _batches("dae", 1, 1200)[0]
    step(x, y, eps, 0.0)
    assert torch.get_num_threads() == 2


def test_unsupported_activation_raises_and_make_step_falls_back():
    net = build_model(ModelConfig(arch="vae"))
    net.encoder[1] = nn.Tanh()
    with pytest.raises(UnsupportedNetwork, match="Tanh"):
        FusedStep(net, lr=1e-3, loss="huber")
    assert type(make_step(net, lr=1e-3, loss="huber")) is AutogradStep
    mixed = build_model(ModelConfig(arch="dae", activation="relu"))
    mixed.decoder[1] = nn.ELU()
    with pytest.raises(UnsupportedNetwork, match="single activation"):
        FusedStep(mixed, lr=1e-3, loss="huber")
    double = build_model(ModelConfig(arch="dae")).double()
    with pytest.raises(UnsupportedNetwork, match="float32"):
        FusedStep(double, lr=1e-3, loss="huber")


def test_make_step_picks_the_fastest_step_that_handles_the_network(monkeypatch):
    compiled = kernel.library() is not None
    for activation in ("relu", "leaky_relu", "elu"):
        net = build_model(ModelConfig(arch="vae", activation=activation))
        assert type(make_step(net, lr=1e-3, loss="huber")) is (CompiledStep if compiled else FusedStep)
    odd = build_model(ModelConfig())
    for module in odd.modules():
        if isinstance(module, nn.ELU):
            module.alpha = 0.5  # FusedStep handles it, the kernel does not
    assert type(make_step(odd, lr=1e-3, loss="huber")) is FusedStep
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    assert type(make_step(build_model(ModelConfig()), lr=1e-3, loss="huber")) is FusedStep
    monkeypatch.setenv("DWIVAE_FUSED", "0")
    assert type(make_step(build_model(ModelConfig()), lr=1e-3, loss="huber")) is AutogradStep


def test_other_latent_and_protocol_sizes():
    torch.manual_seed(0)
    ref = build_model(ModelConfig(arch="vae", n_inputs=20, latent=10))
    net = copy.deepcopy(ref)
    auto, fused = AutogradStep(ref, lr=1e-3, loss="huber"), FusedStep(net, lr=1e-3, loss="huber")
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        y = torch.rand(200, 20, generator=g)
        x = (y + 0.1 * torch.randn(200, 20, generator=g)).clamp_(min=0.0)
        eps = torch.randn(200, 10, generator=g)
        torch.testing.assert_close(fused(x, y, eps, 0.01), auto(x, y, eps, 0.01), rtol=1e-5, atol=1e-7)
    _assert_same_weights(ref, net)


def test_learning_rate_can_change_between_steps():
    ref, net = _pair("vae")
    auto, fused = AutogradStep(ref, lr=1e-3, loss="huber"), FusedStep(net, lr=1e-3, loss="huber")
    for k, (x, y, eps) in enumerate(_batches("vae", 4, 300)):
        auto.lr = fused.lr = 1e-3 / (k + 1)
        auto(x, y, eps, 0.01)
        fused(x, y, eps, 0.01)
    assert fused.lr == auto.lr
    _assert_same_weights(ref, net)
