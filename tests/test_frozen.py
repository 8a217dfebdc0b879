"""A model read without torch runs as its torch modules do, and `dwivae denoise` needs no torch."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import TINY_TRAINING, real_sample

from dwivae import denoise, load_frozen
from dwivae.learn.checkpoint import load_model, model_fingerprint, save_model
from dwivae.learn.models import ModelConfig, build_model
from dwivae.learn.training import TrainedModel

HAS_COMPILER = bool(os.environ.get("CI")) or shutil.which("cc") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler to build the kernel")


def saved(tmp_path, acq, **config) -> TrainedModel:
    torch.manual_seed(3)
    model_config = ModelConfig(n_inputs=acq.n_volumes, **config)
    model = TrainedModel(build_model(model_config).eval(), model_config, TINY_TRAINING, acq, [], {})
    save_model(model, tmp_path / "model")
    return load_model(tmp_path / "model")


@needs_compiler
@pytest.mark.parametrize("config", [{}, {"arch": "dae"}, {"activation": "relu", "latent": 5},
                                    {"activation": "leaky_relu", "hidden": (40, 20, 10)}])
def test_frozen_model_runs_every_part_as_the_torch_modules(tmp_path, acq, config):
    model = saved(tmp_path, acq, **config)
    frozen = load_frozen(tmp_path / "model")
    assert frozen is not None and frozen.acquisition.fingerprint() == acq.fingerprint()
    x = np.random.default_rng(0).random((300, acq.n_volumes), dtype=np.float32)
    with torch.inference_mode():
        mu = model.network.encode(torch.from_numpy(x))[0]
        expected = {"all": model.network.decode(mu).numpy(), "encoder": mu.numpy(),
                    "decoder": model.network.decode(mu).numpy()}
    inputs = {"all": x, "encoder": x, "decoder": mu.numpy()}
    for part, want in expected.items():
        np.testing.assert_allclose(frozen.compiled(part)(inputs[part]), want, rtol=1e-5, atol=2e-6)


def test_fingerprint_is_the_same_however_the_model_is_read(tmp_path, acq):
    model = saved(tmp_path, acq)
    frozen = load_frozen(tmp_path / "model")
    if frozen is None:
        pytest.skip("no compiled kernel here")
    assert model_fingerprint(frozen) == model_fingerprint(model)
    with torch.no_grad():
        model.network.mu.bias[0] += 1e-3
    assert model_fingerprint(model) != model_fingerprint(frozen)


def test_without_the_kernel_no_frozen_model_is_offered(tmp_path, acq, monkeypatch):
    saved(tmp_path, acq)
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    assert load_frozen(tmp_path / "model") is None


def test_frozen_model_refuses_corrupt_files(tmp_path, acq):
    from dwivae.errors import InputError

    saved(tmp_path, acq)
    (tmp_path / "model" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="corrupt"):
        load_frozen(tmp_path / "model")


@needs_compiler
def test_in_memory_denoise_agrees_between_frozen_and_torch_models(trained_for, tmp_path):
    model = trained_for("small_64D")
    save_model(model, tmp_path / "model")
    frozen = load_frozen(tmp_path / "model")
    image, _, _ = real_sample("small_64D")
    data = np.asarray(nib.load(image).dataobj, dtype=np.float32)
    np.testing.assert_allclose(denoise(data, model.acquisition, frozen),
                               denoise(data, model.acquisition, model), rtol=1e-5, atol=1e-3)


@needs_compiler
def test_denoise_command_does_not_import_torch_unless_an_option_needs_it(trained_for, tmp_path):
    model = trained_for("small_64D")
    save_model(model, tmp_path / "model")
    image, bval, bvec = real_sample("small_64D")
    script = ("import sys; from dwivae.cli import main; code = main(sys.argv[1:]); "
              "print(f'TORCH {\"torch\" in sys.modules}'); sys.exit(code)")

    def run(out: str, *extra: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, "denoise", str(image), "--bvals", str(bval),
                               "--bvecs", str(bvec), "--model", str(tmp_path / "model"),
                               "--out", str(tmp_path / out), "--quiet", *extra],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "TORCH False" in run("frozen.nii.gz")
    assert "TORCH True" in run("torch.nii.gz", "--uncertainty", "2")
    frozen, with_torch = (np.asarray(nib.load(tmp_path / name).dataobj) for name in ("frozen.nii.gz", "torch.nii.gz"))
    np.testing.assert_array_equal(frozen, with_torch)  # both use the compiled forward pass
    sidecar = json.loads((tmp_path / "frozen.json").read_text())
    assert sidecar["ForwardPass"] == "compiled" and sidecar["Model"]["fingerprint"] == model_fingerprint(model)


def test_what_a_frozen_model_cannot_do_is_refused_with_the_fix(tmp_path, acq, monkeypatch):
    from dwivae.errors import InputError

    model = saved(tmp_path, acq)
    frozen = load_frozen(tmp_path / "model")
    if frozen is None:
        pytest.skip("no compiled kernel here")
    data = np.random.default_rng(0).uniform(100, 1000, (3, 3, 3, acq.n_volumes)).astype(np.float32)
    with pytest.raises(InputError, match="load_model"):
        denoise(data, acq, frozen, spatial=2.0, sigma=10.0)
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    with pytest.raises(InputError, match="load_model"):
        denoise(data, acq, frozen)
    assert denoise(data, acq, model).shape == data.shape  # the torch model does both


@needs_compiler
def test_the_plain_command_reads_its_cached_model_without_torch(tmp_path, monkeypatch):
    from dwivae.cli import main
    from dwivae.learn.config import PRESETS

    monkeypatch.setitem(PRESETS, "default", TINY_TRAINING)
    monkeypatch.setenv("DWIVAE_CACHE", str(tmp_path / "cache"))
    image, bval, bvec = real_sample("small_64D")
    command = ["denoise", str(image), "--bvals", str(bval), "--bvecs", str(bvec), "--quiet"]
    assert main([*command, "--out", str(tmp_path / "first.nii.gz")]) == 0  # trains and caches its model
    script = ("import sys; from dwivae.cli import main; code = main(sys.argv[1:]); "
              "print(f'TORCH {\"torch\" in sys.modules}'); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", script, *command, "--out", str(tmp_path / "again.nii.gz")],
                          capture_output=True, text=True, timeout=300, env=os.environ)
    assert done.returncode == 0, done.stderr
    assert "TORCH False" in done.stdout and "using the cached vae" in done.stderr
    first, again = (np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj) for name in ("first", "again"))
    np.testing.assert_allclose(again, first, rtol=1e-5, atol=1e-3)
    sidecars = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("first", "again")]
    assert sidecars[0]["Model"] == sidecars[1]["Model"] and (tmp_path / "cache") in Path(
        sidecars[1]["Model"]["path"]).parents
