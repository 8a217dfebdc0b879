"""The compiled training step against the autograd step."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from test_kernel import needs_compiler

from dwivae.kernels import bindings as kernel
from dwivae.learn.compiled_step import CompiledStep, UnsupportedNetwork, shuffled_rows, standard_normals
from dwivae.learn.models import ModelConfig, build_model
from dwivae.learn.training import AutogradStep

pytestmark = needs_compiler


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The reference AutogradStep on 1 thread: 2 OpenMP threads on a busy 2-core machine are
    pathologically slow."""
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


def _run_both(arch, loss, beta, activation="elu", n_steps=5, batch=600, lr=1e-3, step=CompiledStep, **kwargs):
    """Train copies of one network with AutogradStep and ``step`` on the same batches; check that
    the losses agree at every step and return both networks."""
    ref, net = _pair(arch, activation)
    auto = AutogradStep(ref, lr=lr, loss=loss)
    compiled = step(net, lr=lr, loss=loss, **kwargs)
    for x, y, eps in _batches(arch, n_steps, batch):
        rec_a, kl_a = auto(x, y, eps, beta)
        rec_f, kl_f = compiled(x, y, eps, beta)
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


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_matches_autograd_step_for_each_activation(activation):
    ref, net = _run_both("vae", "huber", 0.01, activation=activation)
    _assert_same_weights(ref, net)


@pytest.mark.parametrize("batch", [1, 31, 33, 1100])
def test_partial_tiles_and_lanes_give_the_full_batch_gradient(batch):
    # batches that are not a multiple of the kernel's 32-sample tile, split over two lanes
    ref, net = _run_both("vae", "huber", 0.01, n_steps=2, batch=batch, lanes=2)
    _assert_same_weights(ref, net)


def test_vae_without_eps_decodes_the_mean():
    ref, net = _run_both("vae", "huber", 0.01, n_steps=1)
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
            module.alpha = 0.5  # an ELU the kernel does not compute
    with pytest.raises(UnsupportedNetwork, match="does not implement"):
        CompiledStep(odd, lr=1e-3, loss="huber")
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    with pytest.raises(UnsupportedNetwork, match="no compiled kernel"):
        CompiledStep(build_model(ModelConfig()), lr=1e-3, loss="huber")
    assert kernel.library() is None


def _eps_drawn(seed: int, n_steps: int, batch: int, first_step: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.concatenate([standard_normals(seed, first_step + k, batch, 7) for k in range(n_steps)]))


def test_steps_read_shuffled_rows_in_place_and_draw_the_documented_eps():
    # rows read in the keyed order, targets row % len(y), eps drawn in C == the same rows
    # gathered beforehand and eps given
    g = torch.Generator().manual_seed(0)
    y_all = torch.rand(90, 32, generator=g)
    x_all = (y_all.repeat(25, 1) + 0.1 * torch.randn(2250, 32, generator=g)).clamp_(min=0)
    rows = torch.from_numpy(shuffled_rows(99, 2250, first=100, count=3 * 700).astype(np.int64))
    nets = _pair("vae")
    a = CompiledStep(nets[0], lr=1e-3, loss="huber").steps(x_all, y_all, batch=700, n_steps=3, beta=0.01,
                                                          shuffle=99, first_sample=100, seed=7, first_step=5)
    b = CompiledStep(nets[1], lr=1e-3, loss="huber").steps(x_all[rows], y_all[rows % 90], batch=700, n_steps=3,
                                                          beta=0.01, eps=_eps_drawn(7, 3, 700, first_step=5))
    assert a == b
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("n", [1, 2, 5, 64, 1000, 4**6 + 1])
def test_shuffled_rows_are_a_permutation(n):
    order = shuffled_rows(3, n)
    assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(shuffled_rows(3, n, first=n // 2, count=n - n // 2), order[n // 2:])


def test_shuffled_rows_depend_on_the_key_and_look_random():
    a, b = shuffled_rows(1, 100_000), shuffled_rows(2, 100_000)
    assert not np.array_equal(a, b)
    assert abs(stats.spearmanr(a, np.arange(100_000))[0]) < 0.02  # no trace of the input order
    assert abs(stats.spearmanr(a, b)[0]) < 0.02
    assert np.mean(a[:50_000] < 50_000) == pytest.approx(0.5, abs=0.01)


def test_many_steps_in_one_call_equal_one_call_per_step():
    nets = _pair("vae")
    batches = _batches("vae", 3, 700)
    one = CompiledStep(nets[0], lr=1e-3, loss="huber")
    for x, y, eps in batches:
        one(x, y, eps, 0.01)
    x, y, eps = (torch.cat([b[k] for b in batches]) for k in range(3))
    CompiledStep(nets[1], lr=1e-3, loss="huber").steps(x, y, batch=700, n_steps=3, beta=0.01, eps=eps)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)


def test_the_number_of_threads_does_not_change_the_weights():
    # a batch of 3000 is 6 chunks, which the threads take as they come free
    nets = [build_model(ModelConfig()) for _ in range(3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    x, y, _ = _batches("vae", 1, 3000 * 2)[0]
    results = [CompiledStep(net, lr=1e-3, loss="huber", lanes=lanes).steps(x, y, batch=3000, n_steps=2, beta=0.01, seed=3)
               for net, lanes in zip(nets, (1, 2, 5))]
    assert results[0] == results[1] == results[2]
    for net in nets[1:]:
        for p, q in zip(nets[0].parameters(), net.parameters()):
            assert torch.equal(p, q)


def test_standard_normals():
    z = standard_normals(11, 4, 100_000, 7)
    assert z.shape == (100_000, 7) and z.dtype == np.float32
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z.ravel()[:-1], z.ravel()[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(z[:, 0] ** 2, z[:, 1] ** 2)[0, 1]) < 0.02  # a Box-Muller pair is independent
    assert all(stats.kstest(z[:, j], "norm").pvalue > 1e-3 for j in range(7))
    assert np.array_equal(z[:10], standard_normals(11, 4, 10, 7))
    assert not np.array_equal(z[:10], standard_normals(11, 5, 10, 7))
    assert not np.array_equal(z[:10], standard_normals(12, 4, 10, 7))


def test_steps_refuse_rows_out_of_range():
    step = CompiledStep(build_model(ModelConfig()), lr=1e-3, loss="huber")
    x = torch.rand(100, 32)
    with pytest.raises(ValueError, match="run past x's 100 rows"):
        step.steps(x, x, batch=100, n_steps=2, beta=0.0)
    with pytest.raises(ValueError, match="run past x's 100 rows"):
        step.steps(x, x, batch=50, n_steps=2, beta=0.0, shuffle=1, first_sample=1)
    with pytest.raises(ValueError, match="must be copies of y's 30 rows"):
        step.steps(x, x[:30], batch=50, n_steps=2, beta=0.0)


def test_network_is_trained_in_place():
    net, _ = _pair("vae")
    params = list(net.parameters())
    step = CompiledStep(net, lr=1e-2, loss="mse")
    before = [p.detach().clone() for p in params]
    x, y, eps = _batches("vae", 1, 64)[0]
    step(x, y, eps, 0.0)
    assert list(net.parameters()) == params  # same Parameter objects, new values
    assert all(not torch.equal(p, b) for p, b in zip(params, before))
    assert all(p.requires_grad and p.is_contiguous() for p in params)
    # the parameters share the step's flat buffer, and changes to them reach the step
    assert all(p.untyped_storage().data_ptr() == step.flat.untyped_storage().data_ptr() for p in params)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    assert net.mu.bias.untyped_storage().data_ptr() == step.flat.untyped_storage().data_ptr()


def test_other_latent_and_protocol_sizes_and_a_changing_learning_rate():
    torch.manual_seed(0)
    ref = build_model(ModelConfig(arch="vae", n_inputs=20, latent=10))
    net = copy.deepcopy(ref)
    auto, compiled = AutogradStep(ref, lr=1e-3, loss="huber"), CompiledStep(net, lr=1e-3, loss="huber")
    g = torch.Generator().manual_seed(0)
    for k in range(4):
        auto.lr = compiled.lr = 1e-3 / (k + 1)
        y = torch.rand(200, 20, generator=g)
        x = (y + 0.1 * torch.randn(200, 20, generator=g)).clamp_(min=0.0)
        eps = torch.randn(200, 10, generator=g)
        torch.testing.assert_close(compiled(x, y, eps, 0.01), auto(x, y, eps, 0.01), rtol=1e-5, atol=1e-7)
    _assert_same_weights(ref, net)


def test_networks_it_does_not_implement_are_refused():
    net = build_model(ModelConfig(arch="vae"))
    net.encoder[1] = torch.nn.Tanh()
    with pytest.raises(UnsupportedNetwork, match="Tanh"):
        CompiledStep(net, lr=1e-3, loss="huber")
    mixed = build_model(ModelConfig(arch="dae", activation="relu"))
    mixed.decoder[1] = torch.nn.ELU()
    with pytest.raises(UnsupportedNetwork, match="single activation"):
        CompiledStep(mixed, lr=1e-3, loss="huber")
    with pytest.raises(UnsupportedNetwork, match="float32"):
        CompiledStep(build_model(ModelConfig(arch="dae")).double(), lr=1e-3, loss="huber")
