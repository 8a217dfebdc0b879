from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from dwivae.errors import InputError
from dwivae.kernels import bindings as kernel
from dwivae.learn.compiled_step import CompiledStep
from dwivae.learn.models import ModelConfig, build_model
from dwivae.learn.training import AutogradStep, TrainConfig, make_step, reconstruct, train


def _weights(model):
    return {k: v.clone() for k, v in model.network.state_dict().items()}


def test_same_seed_gives_identical_weights(acq, tiny_config):
    a = train(acq, arch="vae", seed=5, config=tiny_config)
    b = train(acq, arch="vae", seed=5, config=tiny_config)
    c = train(acq, arch="vae", seed=6, config=tiny_config)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a.history == b.history


def test_history_records_losses_beta_and_test_mse(acq, tiny_config):
    model = train(acq, arch="vae", seed=0, config=replace(tiny_config, epochs=4, beta_step=1e-3))
    h = model.history
    assert [r["epoch"] for r in h] == [1, 2, 3, 4]
    assert [r["beta"] for r in h] == pytest.approx([0, 0, 1e-3, 1.5e-3])
    assert ["test_mse" in r for r in h] == [False, True, False, True]
    for r in h:
        assert r["total"] == pytest.approx(r["recon"] + r["beta"] / 32 * r["kl"])  # beta per summed volume
        assert r["kl"] > 0
    assert model.summary["test_mse"] == h[-1]["test_mse"]


def test_dae_has_no_kl(acq, tiny_config):
    model = train(acq, arch="dae", seed=0, config=tiny_config)
    assert all(r["kl"] == 0 and r["beta"] == 0 for r in model.history)


def test_training_lowers_test_error(acq, tiny_config):
    model = train(acq, arch="vae", seed=0, config=tiny_config)
    first, last = model.history[1]["test_mse"], model.history[-1]["test_mse"]
    assert last < first
    # Even a second of training must beat the noisy input on noisy signals.
    rng = np.random.default_rng(0)
    from dwivae.learn.dataset import simulate_split
    split = simulate_split(acq, seed=0, atoms="random", n_atoms=4000)
    noisy = np.maximum(split.test_clean + 0.3 * rng.standard_normal(split.test_clean.shape), 0).astype(np.float32)
    denoised = reconstruct(model.network, noisy)
    assert np.mean((denoised - split.test_clean) ** 2) < 0.5 * np.mean((noisy - split.test_clean) ** 2)


def test_fixed_data_set_mode_runs(acq, tiny_config):
    config = replace(tiny_config, samples_per_epoch=None, n_atoms=300, epochs=1, batch_size=512)
    model = train(acq, arch="vae", seed=0, config=config)
    assert model.summary["sample_passes"] == (240 * 31 // 512) * 512


@pytest.mark.parametrize("kernel", ["compiled", "torch"])
def test_fixed_data_set_mode_is_reproducible_and_learns(acq, tiny_config, kernel, monkeypatch):
    # the study's mode: in C (rows read in place, noise, order and eps from counters), or with
    # torch where no kernel can be built (numpy noise, gathered epochs)
    if kernel == "torch":
        monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    config = replace(tiny_config, samples_per_epoch=None, n_atoms=1000, epochs=4, batch_size=500, test_every=1)
    a, b = (train(acq, arch="vae", seed=2, config=config) for _ in range(2))
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.history[-1]["test_mse"] < 0.8 * a.history[0]["test_mse"]
    assert all(np.isfinite(r["recon"]) and r["kl"] > 0 for r in a.history)


def test_bad_train_config():
    with pytest.raises(InputError, match="unknown loss"):
        TrainConfig(loss="hinge")
    with pytest.raises(InputError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(InputError, match="random or mixed atoms"):
        TrainConfig(free_water=0.1)  # the grid
    with pytest.raises(InputError, match=r"in \[0, 1\)"):
        TrainConfig(atoms="random", free_water=1.0)


def test_cosine_schedule_decays_to_a_hundredth():
    config = TrainConfig(epochs=11, lr=1e-3, lr_schedule="cosine")
    assert config.lr_at(1) == pytest.approx(1e-3)
    assert config.lr_at(6) == pytest.approx((1e-3 + 1e-5) / 2)
    assert config.lr_at(11) == pytest.approx(1e-5)
    assert TrainConfig(lr=1e-3).lr_at(11) == 1e-3
    with pytest.raises(InputError, match="unknown learning-rate schedule"):
        TrainConfig(lr_schedule="step")


@pytest.mark.parametrize("noise, coils", [("rician", 1), ("nc-chi", 4)])
def test_training_noise_matches_the_model(noise, coils):
    from dwivae.learn.training import noisy_batch
    config = TrainConfig(samples_per_epoch=1000, noise=noise, coils=coils, snr_range=(10, 10))
    clean = torch.full((100_000, 2), 0.4)
    sigma = torch.full((100_000, 1), 0.1)
    noisy = noisy_batch(clean, sigma, config, torch.Generator().manual_seed(0)).double()
    assert float((noisy ** 2).mean()) == pytest.approx(0.4 ** 2 + 2 * coils * 0.1 ** 2, rel=5e-3)
    assert float(noisy.min()) >= 0


def test_rician_training_with_an_snr_range_is_reproducible(acq, tiny_config):
    config = replace(tiny_config, noise="rician", snr_range=(5, 50))
    a, b = (train(acq, arch="dae", seed=2, config=config) for _ in range(2))
    assert a.history == b.history and np.isfinite(a.summary["test_mse"])
    assert a.train_config.snr_range == (5.0, 50.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"noise": "laplace", "samples_per_epoch": 10}, "unknown noise"),
    ({"noise": "rician", "coils": 2, "samples_per_epoch": 10}, "with nc-chi noise"),
    ({"snr_range": (20, 10), "samples_per_epoch": 10}, "positive and increasing"),
    ({"noise": "rician"}, "need fresh samples each epoch"),
])
def test_bad_noise_settings(kwargs, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(**kwargs)


def test_online_simulation_draws_fresh_atoms_reproducibly(acq, tiny_config):
    config = replace(tiny_config, atoms="mixed", fresh_atoms=True)
    a, b = (train(acq, arch="dae", seed=4, config=config) for _ in range(2))
    fixed = train(acq, arch="dae", seed=4, config=replace(config, fresh_atoms=False))
    assert a.history == b.history and np.isfinite(a.summary["test_mse"])
    assert a.history != fixed.history  # the batches differ from the dictionary's
    with pytest.raises(InputError, match="not the grid"):
        replace(config, atoms="grid")


def test_a_128_volume_three_shell_protocol_trains_and_denoises(tiny_config):
    from dwivae.apply.denoise import denoise
    from dwivae.physics.acquisition import Acquisition
    from dwivae.physics.phantom import make_phantom
    rng = np.random.default_rng(0)
    bvecs = rng.standard_normal((128, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvals = np.r_[np.zeros(8), np.full(40, 1000.0), np.full(40, 2000.0), np.full(40, 3000.0)]
    bvecs[:8] = 0
    acq = Acquisition(bvals, bvecs)
    assert len(acq.shells()) == 4
    model = train(acq, arch="vae", seed=0, config=replace(tiny_config, atoms="mixed"))
    assert model.model_config.widths() == (128, 98, 68, 37)  # sized from the protocol
    phantom = make_phantom(acq, shape=(12, 12, 8), snr=30)
    out = denoise(phantom.noisy, acq, model, mask=phantom.labels > 0)
    assert out.shape == phantom.noisy.shape and np.isfinite(out).all()
    assert not np.array_equal(out[phantom.labels > 0], phantom.noisy[phantom.labels > 0])


def test_normalising_by_the_noisy_b0_mean(acq, tiny_config):
    from dwivae.learn.training import model_output, normalise_by_noisy_b0
    from dwivae.physics.simulate import add_noncentral_chi_noise, random_tensors, tensor_signals
    with pytest.raises(InputError, match="unknown normalisation"):
        TrainConfig(normalise="max")
    with pytest.raises(InputError, match="needs an SNR range"):
        TrainConfig(normalise="b0", samples_per_epoch=1000)  # the study's noise levels
    b0 = torch.from_numpy(acq.b0_mask)
    clean = torch.from_numpy(tensor_signals(random_tensors(50, rng=np.random.default_rng(0)), acq))
    noisy = clean * torch.linspace(0.8, 1.2, 50)[:, None]
    x, y = normalise_by_noisy_b0(noisy, clean, b0)
    torch.testing.assert_close(x[:, b0].mean(dim=1), torch.ones(50))
    torch.testing.assert_close(y, (clean / noisy[:, b0].mean(1, keepdim=True)).clamp(max=1.0))
    assert y.max() == 1.0  # capped: the sigmoid cannot go above
    config = replace(tiny_config, noise="rician", snr_range=(10.0, 40.0), normalise="b0")
    model = train(acq, arch="vae", seed=0, config=config)
    assert np.isfinite(model.summary["test_mse"])
    signals = add_noncentral_chi_noise(tensor_signals(random_tensors(200, rng=np.random.default_rng(1)), acq), 0.05,
                                       rng=np.random.default_rng(2))
    out = model_output(model, signals)
    m = signals[:, acq.b0_mask].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(out, reconstruct(model.network, signals / m) * m, rtol=1e-6)
    np.testing.assert_allclose(model_output(model, 3.0 * signals), 3.0 * out, rtol=1e-4, atol=1e-6)  # no S0 needed
    s0_model = train(acq, arch="vae", seed=0, config=replace(config, normalise="s0"))
    assert not np.allclose(model_output(s0_model, 3.0 * signals), 3.0 * model_output(s0_model, signals), rtol=1e-2)


def test_make_step_takes_the_kernel_where_it_can_and_autograd_otherwise(monkeypatch):
    compiled = kernel.library() is not None
    for activation in ("relu", "leaky_relu", "elu"):
        net = build_model(ModelConfig(arch="vae", activation=activation))
        assert type(make_step(net, lr=1e-3, loss="huber")) is (CompiledStep if compiled else AutogradStep)
    odd = build_model(ModelConfig())
    for module in odd.modules():
        if isinstance(module, torch.nn.ELU):
            module.alpha = 0.5  # a network the kernel does not compute: autograd trains it, no C change
    assert type(make_step(odd, lr=1e-3, loss="huber")) is AutogradStep
    tanh = build_model(ModelConfig())
    tanh.encoder[1] = torch.nn.Tanh()
    assert type(make_step(tanh, lr=1e-3, loss="huber")) is AutogradStep
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    assert type(make_step(build_model(ModelConfig()), lr=1e-3, loss="huber")) is AutogradStep
