from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from dwivae.errors import InputError
from dwivae.learn.checkpoint import expected_shapes, load_frozen, load_model, save_model
from dwivae.learn.config import ContextConfig, ModelConfig
from dwivae.learn.training import reconstruct, train


@pytest.fixture(scope="module")
def tiny_model():
    from conftest import TINY_TRAINING

    from dwivae.physics.acquisition import seed32
    return train(seed32(), arch="vae", seed=0, config=TINY_TRAINING)


def test_round_trip(tmp_path, tiny_model):
    out = save_model(tiny_model, tmp_path / "vae")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((out / "model.json").read_text())
    for key in ("format_version", "dwivae_version", "model_config", "train_config", "acquisition",
                "summary", "history", "seed"):
        assert key in meta
    back = load_model(out)
    x = np.random.default_rng(0).uniform(0, 1, (50, 32)).astype(np.float32)
    np.testing.assert_array_equal(reconstruct(back.network, x), reconstruct(tiny_model.network, x))
    assert back.acquisition.fingerprint() == tiny_model.acquisition.fingerprint()
    assert back.train_config == tiny_model.train_config and back.model_config == tiny_model.model_config


def test_refuses_existing_without_force(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path / "vae")
    with pytest.raises(InputError, match="exists; pass --force"):
        save_model(tiny_model, tmp_path / "vae")
    save_model(tiny_model, tmp_path / "vae", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no temporary left behind


def test_load_is_not_pickle(tmp_path, tiny_model):
    out = save_model(tiny_model, tmp_path / "vae")
    assert (out / "model.safetensors").read_bytes()[:2] != b"\x80\x04"  # not a pickle stream


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.json").unlink(), "model.json is missing"),
    (lambda d: (d / "model.json").write_text("{not json"), "corrupt"),
    (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "corrupt"),
    (lambda d: (d / "model.json").write_text(json.dumps({"format_version": 99})), "format version 99"),
])
def test_damaged_model_directories(tmp_path, tiny_model, damage, message):
    out = save_model(tiny_model, tmp_path / "vae")
    damage(out)
    with pytest.raises(InputError, match=message):
        load_model(out)


def test_missing_directory(tmp_path):
    with pytest.raises(InputError, match="does not exist: train one"):
        load_model(tmp_path / "nothing")


@pytest.mark.parametrize("config", [ModelConfig(), ModelConfig(arch="dae", n_inputs=65, latent=10),
                                    ModelConfig(hidden=(64, 32, 16)), ModelConfig(hidden=(20,))])
def test_expected_shapes_are_the_networks_own(config):
    from dwivae.learn.models import ContextNet, build_model

    context = ContextConfig(latent=config.latent)
    state = {name: tuple(t.shape) for name, t in build_model(config).state_dict().items()}
    state |= {f"context.{name}": tuple(t.shape) for name, t in ContextNet(context).state_dict().items()}
    assert expected_shapes(config, context) == state


def _tampered(tmp_path, tiny_model, *, weights=None, meta=None):
    """A copy of the tiny model with its tensors or model.json edited."""
    out = save_model(tiny_model, tmp_path / "m", force=True)
    if weights is not None:
        arrays = load_file(str(out / "model.safetensors"))
        weights(arrays)
        save_file(arrays, str(out / "model.safetensors"))
    if meta is not None:
        info = json.loads((out / "model.json").read_text())
        meta(info)
        (out / "model.json").write_text(json.dumps(info))
    return out


def _wide_first_layer(w):
    w["encoder.0.weight"] = np.ones((1000, 1), np.float32)
    w["encoder.0.bias"] = np.ones(1000, np.float32)


@pytest.mark.parametrize("weights, meta, message", [
    (_wide_first_layer, None, "encoder.0.weight is float32 (1000, 1)"),
    (lambda w: w.__setitem__("mu.bias", np.ones(9, np.float32)), None, "mu.bias"),
    (lambda w: w.__setitem__("decoder.0.weight", np.full((13, 7), np.nan, np.float32)), None, "NaN"),
    (lambda w: w.__setitem__("extra", np.ones(3, np.float32)), None, "unexpected: ['extra']"),
    (lambda w: w.pop("logvar.weight"), None, "missing: ['logvar.weight']"),
    (lambda w: w.__setitem__("mu.weight", w["mu.weight"].astype(np.float64)), None, "float64"),
    (None, lambda m: m["model_config"].__setitem__("hidden", [30, 20, 10]), "implies float32"),
    (None, lambda m: m["model_config"].__setitem__("hidden", [-5]), "must all be >= 1"),
    (None, lambda m: m["model_config"].__setitem__("activation", "swish"), "unknown activation"),
    (None, lambda m: m["model_config"].__setitem__("n_inputs", "many"), "corrupt"),
    (None, lambda m: m["acquisition"].update(bvals=m["acquisition"]["bvals"][:-1],
                                             bvecs=m["acquisition"]["bvecs"][:-1]), "protocol has 31 volumes"),
    (None, lambda m: m.__setitem__("context_config", {"latent": 7}), "missing"),
    (None, lambda m: m.pop("train_config"), "corrupt"),
])
def test_both_loaders_refuse_a_model_whose_files_disagree(tmp_path, tiny_model, weights, meta, message):
    out = _tampered(tmp_path, tiny_model, weights=weights, meta=meta)
    for loader in (load_model, load_frozen):
        with pytest.raises(InputError, match="corrupt|unknown|must all") as err:
            loader(out)
        assert message in str(err.value)
