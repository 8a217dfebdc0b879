from __future__ import annotations

import pytest
import torch

from dwivae.errors import InputError
from dwivae.learn.models import ModelConfig, build_model


def test_vae_shape_and_deterministic_inference():
    config = ModelConfig(arch="vae", n_inputs=32, latent=7)
    assert config.widths() == (32, 26, 20, 13)
    net = build_model(config).eval()
    x = torch.rand(10, 32)
    out, mu, logvar = net(x)
    assert out.shape == (10, 32) and mu.shape == logvar.shape == (10, 7)
    assert torch.all((out >= 0) & (out <= 1))
    torch.testing.assert_close(net(x)[0], out)  # z = mu: no sampling without eps
    sampled = net(x, torch.randn(10, 7))[0]
    assert not torch.allclose(sampled, out)
    torch.testing.assert_close(net(x, torch.zeros(10, 7))[0], out)


def test_dae_has_no_logvar_and_ignores_eps():
    net = build_model(ModelConfig(arch="dae", n_inputs=102, latent=7))
    x = torch.rand(4, 102)
    out, mu, logvar = net(x, torch.randn(4, 7))
    assert logvar is None and out.shape == (4, 102)
    torch.testing.assert_close(out, net(x)[0])


def test_decoder_mirrors_encoder():
    net = build_model(ModelConfig(latent=10))
    enc = [m.out_features for m in net.encoder if isinstance(m, torch.nn.Linear)]
    dec = [m.out_features for m in net.decoder if isinstance(m, torch.nn.Linear)]
    assert dec == enc[::-1] + [32]


@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "gan"}, "unknown architecture 'gan'"),
    ({"latent": 40}, "latent size 40"),
    ({"activation": "tanh"}, "unknown activation"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(InputError, match=message):
        ModelConfig(**kwargs)


def test_torch_free_config_names_match_the_torch_modules():
    # dwivae.learn.config validates names without importing torch; models and losses implement them
    from dwivae.learn.config import ACTIVATION_NAMES, LOSSES
    from dwivae.learn.frozen import MODULE_NAMES
    from dwivae.learn.losses import RECONSTRUCTION_LOSSES
    from dwivae.learn.models import ACTIVATIONS

    assert set(ACTIVATIONS) == set(ACTIVATION_NAMES) == set(MODULE_NAMES)
    assert all(ACTIVATIONS[name].__name__ == MODULE_NAMES[name] for name in ACTIVATION_NAMES)
    assert set(RECONSTRUCTION_LOSSES) == set(LOSSES)
