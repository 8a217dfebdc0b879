from __future__ import annotations

import json

import numpy as np
import pytest

from dwivae.checkpoint import load_model, save_model
from dwivae.errors import InputError
from dwivae.training import reconstruct, train


@pytest.fixture(scope="module")
def tiny_model():
    from conftest import TINY_TRAINING
    from dwivae.acquisition import seed32
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
