"""The learned context network: simulated neighbourhoods, the network, its training and its use."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING

from dwivae.apply.denoise import denoise
from dwivae.apply.spatial import context_codes
from dwivae.errors import InputError
from dwivae.learn.checkpoint import load_model, model_fingerprint, save_model
from dwivae.learn.context import train_context
from dwivae.learn.models import ContextConfig, ContextNet, neighbour_offsets
from dwivae.learn.neighbourhoods import CUT, ONE_TISSUE, bent_atoms, rotations, simulate_neighbourhoods
from dwivae.learn.training import train
from dwivae.physics.phantom import make_phantom

SHORT = ContextConfig(steps=200, batch_size=512, lr=3e-3)


@pytest.fixture(scope="module")
def with_context():
    """A tiny VAE for seed32 (the study's Gaussian noise levels) with a briefly trained context network."""
    from dwivae.physics.acquisition import seed32
    return train_context(train(seed32(), arch="vae", seed=0, config=TINY_TRAINING), config=SHORT)


def test_neighbourhoods_hold_one_or_two_tissues_and_the_centre_target(acq):
    noise_free = replace(TINY_TRAINING, noise="rician", snr_range=(1e6, 1e6), atoms="mixed", epochs=1)
    model = train(acq, arch="vae", seed=0, config=noise_free)
    n = 4000
    hoods = simulate_neighbourhoods(model, n, radius=1, rng=np.random.default_rng(0),
                                    generator=torch.Generator().manual_seed(0))
    assert hoods.noisy.shape == (n, 27, 32) and hoods.valid.shape == (n, 27) and hoods.target.shape == (n, 32)
    assert hoods.valid[:, 13].all()  # the centre always exists
    cut = ~hoods.valid.all(axis=1)
    assert abs(cut.mean() - CUT) < 0.03
    centre = hoods.noisy[:, 13]
    # noise-free (SNR 1e6): the target is the centre's signal over its b0 mean
    np.testing.assert_allclose(centre / centre[:, acq.b0_mask].mean(axis=1, keepdims=True), hoods.target, atol=1e-4)
    s0 = hoods.noisy[..., acq.b0_mask].mean(axis=2)
    spread = s0.max(axis=1) / s0.min(axis=1)
    assert ONE_TISSUE - 0.03 < np.mean(spread < 1.02) < 0.8  # one-tissue neighbourhoods, and boundaries
    assert spread.max() > 2  # the tissues have their own S0


def test_invalid_neighbours_are_never_read():
    torch.manual_seed(0)
    net = ContextNet(ContextConfig(latent=3))
    for p in net.refine[-1].parameters():
        torch.nn.init.normal_(p)
    codes = torch.randn(5, 27, 3)
    valid = torch.rand(5, 27) < 0.5
    valid[:, 13] = True
    out = net(codes, valid)
    garbage = torch.where(valid[..., None], codes, torch.full_like(codes, 1e6))
    torch.testing.assert_close(net(garbage, valid), out)
    assert not torch.allclose(net(codes, torch.ones_like(valid)), out)


def test_untrained_net_with_no_neighbours_returns_the_centre():
    net = ContextNet(ContextConfig(latent=4))
    codes = torch.randn(6, 27, 4)
    only_centre = torch.zeros(6, 27, dtype=torch.bool)
    only_centre[:, 13] = True
    torch.testing.assert_close(net(codes, only_centre), codes[:, 13])  # refinement starts at zero
    assert (neighbour_offsets(1)[13] == 0).all()


def test_context_codes_gather_the_right_neighbours():
    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    net = ContextNet(ContextConfig(latent=3)).eval()
    latent = rng.standard_normal((5, 6, 4, 3)).astype(np.float32)
    valid = rng.uniform(size=(5, 6, 4)) < 0.7
    out = context_codes(latent, valid, net, chunk=7)
    np.testing.assert_array_equal(out[~valid], latent[~valid])
    offsets = neighbour_offsets(1).long().numpy()
    for x, y, z in np.argwhere(valid)[::3]:
        codes = np.zeros((27, 3), np.float32)
        exists = np.zeros(27, bool)
        for k, (dx, dy, dz) in enumerate(offsets):
            p = (x + dx, y + dy, z + dz)
            if all(0 <= c < n for c, n in zip(p, valid.shape)) and valid[p]:
                codes[k], exists[k] = latent[p], True
        with torch.no_grad():
            expected = net(torch.from_numpy(codes)[None], torch.from_numpy(exists)[None])[0].numpy()
        np.testing.assert_allclose(out[x, y, z], expected, rtol=1e-5, atol=1e-6)


def test_training_beats_the_voxelwise_model_and_is_seeded(with_context):
    summary = with_context.summary["context"]
    assert summary["test_log_mse"] < 0.85 * summary["test_log_mse_voxelwise"]  # what it was trained on
    assert summary["test_mse"] < summary["test_mse_voxelwise"]
    untrained = train_context(load_model_copy(with_context), config=replace(SHORT, steps=1)).summary["context"]
    assert summary["test_log_mse"] < 0.9 * untrained["test_log_mse"]
    again = train_context(load_model_copy(with_context), config=SHORT)
    for a, b in zip(with_context.context.state_dict().values(), again.context.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def load_model_copy(model):
    """The same autoencoder without its context network."""
    return replace(model, context=None, summary=dict(model.summary))


def test_context_survives_saving_and_denoises_a_phantom_better(tmp_path, with_context):
    path = save_model(with_context, tmp_path / "m")
    loaded = load_model(path)
    assert loaded.context is not None and loaded.context.config == with_context.context.config
    assert model_fingerprint(loaded) == model_fingerprint(with_context)
    assert model_fingerprint(load_model_copy(with_context)) != model_fingerprint(with_context)
    phantom = make_phantom(with_context.acquisition, shape=(24, 24, 10), snr=20, noise="gaussian", seed=3)
    mask = phantom.labels > 0
    learned = denoise(phantom.noisy, with_context.acquisition, loaded, mask=mask)
    np.testing.assert_array_equal(learned, denoise(phantom.noisy, with_context.acquisition, with_context, mask=mask))
    voxelwise = denoise(phantom.noisy, with_context.acquisition, loaded, mask=mask, context=False)
    dw = ~with_context.acquisition.b0_mask
    error = {name: np.sqrt(np.mean((out[mask][:, dw] - phantom.clean[mask][:, dw]) ** 2))
             for name, out in (("learned", learned), ("voxelwise", voxelwise))}
    assert error["learned"] < 0.95 * error["voxelwise"]
    with pytest.raises(InputError, match="drop --spatial"):
        denoise(phantom.noisy, with_context.acquisition, loaded, mask=mask, spatial=2.0)


def test_config_is_checked():
    with pytest.raises(InputError, match="radius"):
        ContextConfig(radius=0)
    with pytest.raises(InputError, match="steps"):
        ContextConfig(steps=0)
    assert ContextConfig(radius=2).size == 125


def test_rotations_are_proper_and_turn_by_the_vector_length():
    omega = np.random.default_rng(0).standard_normal((50, 3))
    R = rotations(omega)
    np.testing.assert_allclose(R @ np.swapaxes(R, 1, 2), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(R @ omega[..., None], omega[..., None], atol=1e-12)  # the axis stays
    angle = np.arccos((np.trace(R, axis1=1, axis2=2) - 1) / 2)
    np.testing.assert_allclose(angle, np.minimum(np.linalg.norm(omega, axis=1) % (2 * np.pi),
                                                 2 * np.pi - np.linalg.norm(omega, axis=1) % (2 * np.pi)), atol=1e-9)


def test_bent_tensors_keep_their_shape_and_turn_smoothly(acq):
    from dwivae.physics.tensorfit import eigen, fit_tensor
    offsets = neighbour_offsets(1).numpy().astype(np.float64)
    straight = bent_atoms(acq, "random", 20, offsets, rng=np.random.default_rng(0), max_bend=0.0)
    np.testing.assert_allclose(straight, np.broadcast_to(straight[:, 13:14], straight.shape), atol=1e-6)
    bend = np.radians(15.0)
    bent = bent_atoms(acq, "random", 200, offsets, rng=np.random.default_rng(1), max_bend=bend)
    D = fit_tensor(bent.astype(np.float64), acq.bvals, acq.bvecs)[0]
    evals, evecs = eigen(D)
    first = evecs[..., :, 0]
    np.testing.assert_allclose(evals, np.broadcast_to(evals[:, 13:14], evals.shape), rtol=1e-3, atol=1e-7)
    turn = np.degrees(np.arccos(np.clip(np.abs(np.sum(first * first[:, 13:14], axis=-1)), 0, 1)))
    distance = np.linalg.norm(offsets, axis=1)
    anisotropic = (evals[:, 13, 0] - evals[:, 13, 1]) > 0.2e-3  # a well-defined principal direction
    assert turn[anisotropic].max() > 5.0  # it bends ...
    assert np.all(turn[anisotropic] <= 15.0 * np.sqrt(3) * distance + 0.5)  # ... by at most the bend per voxel
    mixed = bent_atoms(acq, "mixed", 100, offsets, rng=np.random.default_rng(2))
    assert mixed.shape == (100, 27, 32) and np.all((mixed > 0) & (mixed <= 1 + 1e-6))
