from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_TRAINING, real_sample, write_gradients

from dwivae.apply.grouping import DEFAULT_GROUP
from dwivae.cli import main
from dwivae.kernels import bindings as kernel
from dwivae.learn import training
from dwivae.learn.checkpoint import load_model, save_model
from dwivae.physics.acquisition import load_acquisition
from dwivae.physics.noise import remove_noise_floor


@pytest.fixture(autouse=True)
def tiny_default_preset(monkeypatch, tmp_path):
    """Make `dwivae train` and `--train` take a second, and keep their cache in tmp_path."""
    monkeypatch.setitem(training.PRESETS, "default", TINY_TRAINING)
    monkeypatch.setenv("DWIVAE_CACHE", str(tmp_path / "cache"))


def _fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    return err[0]


def test_train_then_refuse_rerun_without_force(tmp_path, capsys):
    out = tmp_path / "vae32"
    assert main(["train", "--protocol", "seed32", "--arch", "vae", "--seed", "3", "--quiet", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.train_config.seed == 3 and model.model_config.arch == "vae"
    assert len(model.history) == TINY_TRAINING.epochs
    _fails(capsys, ["train", "--protocol", "seed32", "--quiet", "--out", str(out)], "exists; pass --force")
    assert main(["train", "--protocol", "seed32", "--arch", "dae", "--quiet", "--force", "--out", str(out)]) == 0
    assert load_model(out).model_config.arch == "dae"


def test_train_from_gradient_files_with_overrides(tmp_path, acq):
    bval, bvec = write_gradients(tmp_path, acq.bvals, acq.bvecs)
    out = tmp_path / "m"
    assert main(["train", "--bvals", str(bval), "--bvecs", str(bvec), "--epochs", "2", "--loss", "mse",
                 "--beta-max", "0", "--latent", "10", "--normalise", "b0", "--noise", "rician",
                 "--snr-range", "10", "40", "--quiet", "--out", str(out)]) == 0
    model = load_model(out)
    assert model.train_config.normalise == "b0"
    assert model.train_config.loss == "mse" and model.train_config.beta_max == 0
    assert model.model_config.latent == 10 and len(model.history) == 2
    assert all(r["beta"] == 0 for r in model.history)


@pytest.mark.parametrize("argv, message", [
    (["train", "--protocol", "seed32", "--arch", "gan", "--out", "x"], "invalid choice: 'gan'"),
    (["train", "--protocol", "seed32", "--loss", "hinge", "--out", "x"], "invalid choice: 'hinge'"),
    (["train", "--protocol", "nope", "--out", "x"], "unknown protocol 'nope'"),
    (["train", "--out", "x"], "no protocol"),
    (["train", "--protocol", "seed32", "--normalise", "b0", "--out", "x"], "needs an SNR range"),
    (["train", "--bvals", "missing.bval", "--bvecs", "missing.bvec", "--out", "x"], "does not exist"),
    (["evaluate", "missing_model", "--out", "x"], "does not exist"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    _fails(capsys, argv, message)
    assert not (tmp_path / "x").exists()


def test_bad_gradient_files(tmp_path, capsys):
    bval, bvec = write_gradients(tmp_path, np.array([0, 1000, 1000]), np.eye(3)[:2])
    _fails(capsys, ["train", "--bvals", str(bval), "--bvecs", str(bvec), "--out", str(tmp_path / "m")],
           "2 directions but the bval file has 3")
    bval, bvec = write_gradients(tmp_path, np.array([0, 1000, 1000]), np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0]]))
    _fails(capsys, ["train", "--bvals", str(bval), "--bvecs", str(bvec), "--out", str(tmp_path / "m")],
           "direction of length 0")
    assert not (tmp_path / "m").exists()


def test_simulate_writes_arrays(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "--protocol", "seed32", "--atoms", "random", "--n-atoms", "100",
                 "--sigma", "0", "0.1", "--out", str(out)]) == 0
    info = json.loads((out / "simulate.json").read_text())
    assert info["n_atoms"] == 100 and info["n_noisy"] == 200
    noisy, clean = np.load(out / "noisy.npy"), np.load(out / "clean.npy")
    np.testing.assert_array_equal(noisy[:100], clean)  # sigma 0 first
    assert np.load(out / "tensors.npy").shape == (100, 6)


@pytest.fixture
def small64(tmp_path, trained_for):
    dwi, bval, bvec = real_sample("small_64D")
    model_dir = save_model(trained_for("small_64D"), tmp_path / "m64")
    return dwi, bval, bvec, model_dir


def test_denoise_command(tmp_path, capsys, small64):
    dwi, bval, bvec, model_dir = small64
    out = tmp_path / "dn.nii.gz"
    argv = ["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", str(model_dir),
            "--out", str(out), "--uncertainty", "3", "--quiet"]
    assert main(argv) == 0
    assert "denoised" in capsys.readouterr().out
    assert nib.load(out).shape == nib.load(dwi).shape
    assert (tmp_path / "dn_residual.nii.gz").exists() and (tmp_path / "dn_uncertainty.nii.gz").exists()
    sidecar = json.loads((tmp_path / "dn.json").read_text())
    assert sidecar["GeneratedBy"][0]["Name"] == "dwivae" and sidecar["VoxelsDenoised"] > 0
    assert sidecar["ProtocolFingerprint"] and sidecar["Model"]["fingerprint"]
    assert sidecar["ForwardPass"] == ("compiled" if kernel.compiled_forward(load_model(model_dir).network) else "torch")
    before = out.read_bytes()
    _fails(capsys, argv, "exists; pass --force")
    assert out.read_bytes() == before
    assert main([*argv, "--force"]) == 0


def test_denoise_finds_bids_gradients_and_trains_on_the_fly(tmp_path, capsys):
    dwi, bval, bvec = real_sample("small_64D")
    img = nib.load(dwi)
    nib.save(img, tmp_path / "sub-01_dwi.nii.gz")
    (tmp_path / "sub-01_dwi.bval").write_bytes(bval.read_bytes())
    (tmp_path / "sub-01_dwi.bvec").write_bytes(bvec.read_bytes())
    argv = ["denoise", str(tmp_path / "sub-01_dwi.nii.gz"), "--out", str(tmp_path / "d.nii.gz"), "--quiet"]
    assert main(argv) == 0  # no flag: a model for the data's protocol and noise, grouped by latent codes
    assert "training a vae" in capsys.readouterr().err
    cached = [p for p in (tmp_path / "cache").iterdir() if p.name != "kernels"]
    assert len(cached) == 1 and (cached[0] / "model.json").exists() and "-rician1-snr" in cached[0].name
    sidecar = json.loads((tmp_path / "d.json").read_text())
    assert sidecar["NonLocal"]["GroupSize"] == DEFAULT_GROUP and sidecar["NonLocal"]["NoiseFloorRemoved"] is True
    assert sidecar["NonLocal"]["NoiseFloorInData"] is True  # a real magnitude scan: its floor is there to take off
    assert sidecar["Model"]["path"] == str(cached[0].resolve())
    sigma_map = np.asarray(nib.load(tmp_path / "d_sigma.nii.gz").dataobj)
    assert sigma_map.shape == img.shape[:3] and np.allclose(sigma_map[sigma_map > 0], sidecar["NonLocal"]["NoiseSigma"])
    assert sidecar["Outputs"]["sigma"] == "d_sigma.nii.gz"
    assert main([*argv, "--train", "--force"]) == 0
    assert "using the cached vae" in capsys.readouterr().err  # the second run reuses the cached model


def _bad_inputs(tmp_path, dwi, bval, bvec, model_dir):
    img = nib.load(dwi)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image(data[..., 0], img.affine), tmp_path / "3d.nii.gz")
    nib.save(nib.Nifti1Image(data[..., :60], img.affine), tmp_path / "short.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros_like(data), img.affine), tmp_path / "zeros.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((9, 10, 10), np.uint8), img.affine), tmp_path / "mask_shape.nii.gz")
    shifted = img.affine.copy()
    shifted[0, 3] += 5
    nib.save(nib.Nifti1Image(np.ones((10, 10, 10), np.uint8), shifted), tmp_path / "mask_affine.nii.gz")
    np.savetxt(tmp_path / "short.bvec", np.loadtxt(bvec)[:60])  # this sample's bvec file is N x 3
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.json").write_text("{")
    (tmp_path / "corrupt" / "model.safetensors").write_bytes(b"")
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((model_dir / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({**meta, "format_version": 0}))
    (old / "model.safetensors").write_bytes((model_dir / "model.safetensors").read_bytes())
    grads = ["--bvals", str(bval), "--bvecs", str(bvec)]
    model = ["--model", str(model_dir)]
    out = ["--out", str(tmp_path / "o.nii.gz")]
    return [
        (["denoise", str(tmp_path / "3d.nii.gz"), *grads, *model, *out], "is 3D"),
        (["denoise", str(tmp_path / "short.nii.gz"), *grads, *model, *out], "has 60 volumes but small_64D.bval and small_64D.bvec have 65"),
        (["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(tmp_path / "short.bvec"), *model, *out],
         "60 directions but the bval file has 65"),
        (["denoise", str(dwi), *grads, "--model", str(tmp_path / "nomodel"), *out], "does not exist"),
        (["denoise", str(dwi), *grads, "--model", str(tmp_path / "corrupt"), *out], "corrupt"),
        (["denoise", str(dwi), *grads, "--model", str(old), *out], "format version 0"),
        (["denoise", str(dwi), *grads, *model, *out, "--mask", str(tmp_path / "mask_shape.nii.gz")], "shape"),
        (["denoise", str(dwi), *grads, *model, *out, "--mask", str(tmp_path / "mask_affine.nii.gz")], "affine"),
        (["denoise", str(dwi), *grads, *model, "--out", str(dwi)], "overwrite the input"),
        (["denoise", str(tmp_path / "zeros.nii.gz"), *grads, *model, *out, "--mask", "none"], "all zero"),
    ]


def test_denoise_bad_inputs(tmp_path, capsys, small64):
    dwi, bval, bvec, model_dir = small64
    before = dwi.read_bytes()
    for argv, message in _bad_inputs(tmp_path, dwi, bval, bvec, model_dir):
        _fails(capsys, [*argv, "--quiet"], message)
        assert not (tmp_path / "o.nii.gz").exists(), argv
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.nii.gz")]  # no temporaries
    assert dwi.read_bytes() == before


def test_demo_ends_with_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    for name in ("phantom/clean.nii.gz", "benchmark/results.json", "benchmark/fa_errors_phantom.png",
                 "dwi_dwivae.nii.gz", "dwi_dwivae_sigma.nii.gz", "dwi_dwivae.json", "dwi_mppca.nii.gz"):
        assert (out / name).exists(), name
    methods = json.loads((out / "benchmark" / "results.json").read_text())["phantoms"]["phantom"]["methods"]
    assert {"noisy", "dwivae", "mppca"} <= set(methods) and methods["dwivae"]["status"] == "ok"
    page = (out / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') >= 9 and "dwivae demo (seed 0)" in page
    assert "FA errors: phantom" in page and "mppca" in page  # the peers beside ours, on the phantom and the scan
    assert main(["demo", "--out", str(out)]) == 2 and "not empty" in capsys.readouterr().err


def test_train_with_rician_noise_and_an_snr_range(tmp_path, capsys):
    out = tmp_path / "rician"
    assert main(["train", "--protocol", "seed32", "--arch", "dae", "--noise", "rician", "--snr-range", "5", "50",
                 "--quiet", "--out", str(out)]) == 0
    config = load_model(out).train_config
    assert config.noise == "rician" and config.snr_range == (5.0, 50.0)
    water = tmp_path / "water"
    assert main(["train", "--protocol", "seed32", "--atoms", "mixed", "--fresh-atoms", "--free-water", "0.1",
                 "--epochs", "1", "--quiet", "--out", str(water)]) == 0
    assert load_model(water).train_config.free_water == 0.1
    assert main(["evaluate", str(water), "--out", str(tmp_path / "ev")]) == 0  # the same held-out split
    wide = tmp_path / "wide"
    assert main(["train", "--protocol", "seed32", "--hidden", "64", "32", "16", "--quiet", "--out", str(wide)]) == 0
    assert load_model(wide).model_config.widths() == (32, 64, 32, 16)
    _fails(capsys, ["train", "--protocol", "seed32", "--preset", "study", "--noise", "rician", "--quiet",
                    "--out", str(tmp_path / "x")], "need fresh samples each epoch")


def test_train_measures_the_snr_range_on_data(tmp_path, capsys):
    from dwivae.physics.noise import snr_range
    assert main(["phantom", "--protocol", "seed32", "--shape", "24", "24", "12", "--snr", "25", "--out",
                 str(tmp_path / "ph")]) == 0
    dwi, bval, bvec = (tmp_path / "ph" / name for name in ("dwi.nii.gz", "dwi.bval", "dwi.bvec"))
    labels = nib.load(tmp_path / "ph" / "labels.nii.gz").get_fdata() > 0
    nib.save(nib.Nifti1Image(labels.astype(np.uint8), nib.load(dwi).affine), tmp_path / "mask.nii.gz")
    out = tmp_path / "matched"
    assert main(["train", "--bvals", str(bval), "--bvecs", str(bvec), "--snr-from", str(dwi), "--mask",
                 str(tmp_path / "mask.nii.gz"), "--quiet", "--out", str(out)]) == 0
    assert "sigma" in capsys.readouterr().err
    from dwivae.physics.acquisition import load_acquisition
    data = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    _, expected = snr_range(data, load_acquisition(bval, bvec), labels)
    np.testing.assert_allclose(load_model(out).train_config.snr_range, expected, rtol=1e-6)
    _fails(capsys, ["train", "--bvals", str(bval), "--bvecs", str(bvec), "--snr-from", str(dwi), "--snr-range",
                    "5", "50", "--quiet", "--out", str(tmp_path / "x")], "not both")


def test_denoise_bias_correct_estimates_sigma_by_mppca(tmp_path, capsys):
    assert main(["phantom", "--protocol", "seed32", "--shape", "24", "24", "12", "--snr", "10", "--noise", "rician",
                 "--out", str(tmp_path / "ph")]) == 0
    dwi = tmp_path / "ph" / "dwi.nii.gz"
    truth = json.loads((tmp_path / "ph" / "phantom.json").read_text())["sigma"]
    model_dir = save_model(training.train(load_acquisition(tmp_path / "ph" / "dwi.bval", tmp_path / "ph" / "dwi.bvec"),
                                          arch="vae", seed=0, config=TINY_TRAINING), tmp_path / "m")
    common = ["denoise", str(dwi), "--model", str(model_dir), "--mask", "none", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "plain.nii.gz")]) == 0
    assert main([*common, "--bias-correct", "--out", str(tmp_path / "bc.nii.gz")]) == 0
    side = json.loads((tmp_path / "bc.json").read_text())["BiasCorrection"]
    assert side["SigmaFrom"] == "MP-PCA noise estimate" and side["Coils"] == 1
    assert side["NoiseSigma"] == pytest.approx(truth, rel=0.1)
    plain, corrected = (np.asarray(nib.load(tmp_path / f"{n}.nii.gz").dataobj) for n in ("plain", "bc"))
    acq = load_acquisition(tmp_path / "ph" / "dwi.bval", tmp_path / "ph" / "dwi.bvec")
    np.testing.assert_array_equal(corrected[..., acq.b0_mask], plain[..., acq.b0_mask])  # b0 kept
    np.testing.assert_allclose(corrected[..., ~acq.b0_mask],
                               remove_noise_floor(plain[..., ~acq.b0_mask], side["NoiseSigma"]), rtol=1e-5, atol=1e-3)
    assert np.all(corrected[..., ~acq.b0_mask] <= plain[..., ~acq.b0_mask])
    assert main([*common, "--bias-correct", "--sigma", "30", "--coils", "4", "--out", str(tmp_path / "given.nii.gz")]) == 0
    assert json.loads((tmp_path / "given.json").read_text())["BiasCorrection"] == {
        "NoiseSigma": 30.0, "SigmaFrom": "given", "Coils": 4}


def test_denoise_bias_correct_with_one_b0_uses_mppca(tmp_path, small64):
    dwi, bval, bvec, model_dir = small64  # one b0 volume
    assert main(["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", str(model_dir),
                 "--bias-correct", "--quiet", "--out", str(tmp_path / "bc.nii.gz")]) == 0
    side = json.loads((tmp_path / "bc.json").read_text())["BiasCorrection"]
    assert side["SigmaFrom"] == "MP-PCA noise estimate" and side["NoiseSigma"] > 0


def test_denoise_bias_correct_bad_inputs(tmp_path, capsys, small64):
    dwi, bval, bvec, model_dir = small64
    common = ["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--out", str(tmp_path / "o.nii.gz"),
              "--quiet"]
    _fails(capsys, [*common, "--model", str(model_dir), "--sigma", "20"], "add one of them")
    _fails(capsys, [*common, "--model", str(model_dir), "--keep-floor"], "drop it or add --nonlocal")
    _fails(capsys, [*common, "--model", str(model_dir), "--bias-correct", "--sigma", "-1"], "must be above 0")
    rician = training.train(load_acquisition(bval, bvec), arch="dae", seed=0,
                            config=replace(TINY_TRAINING, noise="rician", snr_range=(5.0, 50.0)))
    _fails(capsys, [*common, "--model", str(save_model(rician, tmp_path / "r")), "--bias-correct", "--sigma", "20"],
           "drop --bias-correct")
    assert not (tmp_path / "o.nii.gz").exists()


def test_denoise_spatial_file_matches_memory_across_slabs(tmp_path, capsys):
    from dwivae.apply.denoise import denoise
    assert main(["phantom", "--protocol", "seed32", "--shape", "20", "20", "12", "--snr", "15", "--out",
                 str(tmp_path / "ph")]) == 0
    dwi = tmp_path / "ph" / "dwi.nii.gz"
    acq = load_acquisition(tmp_path / "ph" / "dwi.bval", tmp_path / "ph" / "dwi.bvec")
    model = training.train(acq, arch="vae", seed=0, config=TINY_TRAINING)
    model_dir = save_model(model, tmp_path / "m")
    # 12 slices in slabs of 8: neighbourhoods cross the slab boundary
    assert main(["denoise", str(dwi), "--model", str(model_dir), "--mask", "none", "--spatial", "--quiet",
                 "--out", str(tmp_path / "sp.nii.gz")]) == 0
    side = json.loads((tmp_path / "sp.json").read_text())["Spatial"]
    assert side["Strength"] == 2.0 and side["LatentScale"] > 0 and side["Radius"] == 1
    truth = json.loads((tmp_path / "ph" / "phantom.json").read_text())["sigma"]
    assert side["SigmaFrom"] == "MP-PCA noise estimate" and side["NoiseSigma"] == pytest.approx(truth, rel=0.15)
    data = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    from_file = np.asarray(nib.load(tmp_path / "sp.nii.gz").dataobj)
    in_memory = denoise(data, acq, load_model(model_dir), spatial=2.0, sigma=side["NoiseSigma"])
    np.testing.assert_allclose(from_file, in_memory, rtol=1e-5, atol=1e-3)
    plain = denoise(data, acq, load_model(model_dir))
    assert np.abs(from_file - plain).max() > 1.0  # the neighbourhood changed the output
    np.testing.assert_array_equal(from_file[..., acq.b0_mask], data[..., acq.b0_mask])
    # the report says what was done besides the network
    assert main(["report", str(tmp_path / "sp.nii.gz"), "--out", str(tmp_path / "report.html")]) == 0
    assert "spatial 2 (h " in (tmp_path / "report.html").read_text()


def test_train_context_then_denoise_uses_it(tmp_path, capsys):
    from dwivae.apply.denoise import denoise
    assert main(["phantom", "--protocol", "seed32", "--shape", "20", "20", "12", "--snr", "15", "--out",
                 str(tmp_path / "ph")]) == 0
    dwi = tmp_path / "ph" / "dwi.nii.gz"
    model_dir = tmp_path / "m"
    assert main(["train", "--protocol", "seed32", "--context", "--context-steps", "20", "--quiet",
                 "--out", str(model_dir)]) == 0
    assert "context network" in capsys.readouterr().out
    model = load_model(model_dir)
    assert model.context is not None and model.context.config.steps == 20
    assert model.summary["context"]["test_mse"] > 0
    # 12 slices in slabs of 8: neighbourhoods cross the slab boundary
    assert main(["denoise", str(dwi), "--model", str(model_dir), "--mask", "none", "--quiet",
                 "--out", str(tmp_path / "c.nii.gz")]) == 0
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert sidecar["Context"] == {"Radius": 1, "Learned": True} and "neighbourhood" in sidecar["Description"]
    data = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    acq = load_acquisition(tmp_path / "ph" / "dwi.bval", tmp_path / "ph" / "dwi.bvec")
    from_file = np.asarray(nib.load(tmp_path / "c.nii.gz").dataobj)
    np.testing.assert_allclose(from_file, denoise(data, acq, model), rtol=1e-5, atol=1e-3)
    assert main(["denoise", str(dwi), "--model", str(model_dir), "--mask", "none", "--quiet", "--no-context",
                 "--out", str(tmp_path / "v.nii.gz")]) == 0
    assert json.loads((tmp_path / "v.json").read_text())["Context"] is None
    voxelwise = np.asarray(nib.load(tmp_path / "v.nii.gz").dataobj)
    np.testing.assert_allclose(voxelwise, denoise(data, acq, model, context=False), rtol=1e-5, atol=1e-3)
    assert np.abs(from_file - voxelwise).max() > 1.0
    _fails(capsys, ["denoise", str(dwi), "--model", str(model_dir), "--spatial", "--quiet",
                    "--out", str(tmp_path / "s.nii.gz")], "drop --spatial")
    assert not (tmp_path / "s.nii.gz").exists()
    assert main(["report", str(tmp_path / "c.nii.gz"), "--out", str(tmp_path / "report.html")]) == 0
    assert "learned context (3x3x3)" in (tmp_path / "report.html").read_text()


def test_the_plain_denoise_takes_the_coils_of_its_noise(tmp_path, capsys):
    dwi, bval, bvec = real_sample("small_64D")
    out = tmp_path / "d.nii.gz"
    assert main(["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--coils", "4", "--out", str(out),
                 "--quiet"]) == 0
    sidecar = json.loads((tmp_path / "d.json").read_text())
    assert sidecar["NonLocal"]["Coils"] == 4 and "nc-chi4" in sidecar["Model"]["path"]
