from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from conftest import TINY_TRAINING

from dwivae.cli import main
from dwivae.compare.benchmark import dti_fit, format_markdown, load_phantom, score
from dwivae.learn import training


@pytest.fixture
def phantom_dir(tmp_path):
    out = tmp_path / "seed32_snr20"
    assert main(["phantom", "--protocol", "seed32", "--shape", "20", "20", "10", "--out", str(out)]) == 0
    return out


def test_the_benchmark_fits_tensors_as_dipy_does(phantom_dir):
    """One tensor fit for the benchmark, the report and the evaluation, equal to DIPY's WLS fit."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    ph = load_phantom(phantom_dir)
    mask, acq = ph["labels"] > 0, ph["acq"]
    data = ph["noisy"].copy()
    data[..., 5][data[..., 5] < np.median(data[..., 5])] = 0  # denoised data can hold zeros: clipped as DIPY does
    still = np.random.default_rng(0).normal(1000, 30, (4, data.shape[-1]))  # no diffusion, as oil: MD ~ 0,
    data[np.nonzero(mask)[0][:4], np.nonzero(mask)[1][:4], np.nonzero(mask)[2][:4]] = still  # negative eigenvalues
    ours = dti_fit(data, acq, mask)
    gtab = gradient_table(acq.bvals, bvecs=acq.bvecs, b0_threshold=acq.b0_threshold)
    theirs = TensorModel(gtab, fit_method="WLS").fit(data[mask])
    np.testing.assert_allclose(ours["fa"][4:], np.nan_to_num(theirs.fa)[4:], atol=1e-5)
    np.testing.assert_allclose(ours["fa"][:4], np.nan_to_num(theirs.fa)[:4], atol=1e-3)  # FA of tensors near 0
    np.testing.assert_allclose(ours["md"], theirs.md, rtol=1e-5, atol=1e-9)
    assert np.abs(np.sum(ours["v1"] * theirs.evecs[..., 0], axis=-1)).min() > 0.999


def test_clean_scores_zero_and_noise_scores_worse(phantom_dir):
    ph = load_phantom(phantom_dir)
    mask = ph["labels"] > 0
    reference = dti_fit(ph["clean"], ph["acq"], mask)
    perfect = score(ph["clean"], ph["clean"], ph["labels"], reference, ph["acq"])
    assert perfect["signal_rmse"] == 0 and perfect["fa_mae"]["all"] == 0 and perfect["angle_wm_deg"] < 0.01
    noisy = score(ph["noisy"], ph["clean"], ph["labels"], reference, ph["acq"])
    assert noisy["signal_rmse"] == pytest.approx(50, rel=0.15)  # Rician, sigma 50
    assert noisy["fa_mae"]["WM"] > 0.01 and noisy["md_mae"]["CSF"] > 0 and noisy["angle_wm_deg"] > 0.5


def test_benchmark_command_writes_the_numbers_it_prints(phantom_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(training.PRESETS, "default", TINY_TRAINING)
    monkeypatch.setenv("DWIVAE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "bench"
    variants = [tmp_path / "vae_rician", tmp_path / "dae_64"]
    assert main(["train", "--protocol", "seed32", "--noise", "rician", "--snr-range", "10", "40", "--quiet",
                 "--out", str(variants[0])]) == 0
    bval, bvec = (tmp_path / "b64.bval", tmp_path / "b64.bvec")
    np.savetxt(bval, np.r_[0, np.full(64, 1000.0)][None], fmt="%g")
    directions = np.random.default_rng(0).standard_normal((64, 3))
    np.savetxt(bvec, np.r_[[[0, 0, 0]], directions / np.linalg.norm(directions, axis=1, keepdims=True)].T)
    assert main(["train", "--bvals", str(bval), "--bvecs", str(bvec), "--arch", "dae", "--quiet",
                 "--out", str(variants[1])]) == 0
    capsys.readouterr()
    argv = ["benchmark", "--phantom", str(phantom_dir), "--methods", "svd", "vae", "--variants", *map(str, variants),
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = dict(results["phantoms"]["seed32_snr20"]["methods"])
    skipped = rows.pop("dae_64")
    assert skipped["status"] == "skipped" and "another protocol" in skipped["note"]
    assert list(rows) == ["noisy", "svd", "vae", "vae_rician"] and all(r["status"] == "ok" for r in rows.values())
    assert rows["svd"]["signal_rmse"] < rows["noisy"]["signal_rmse"]
    table = (out / "results.md").read_text()
    assert table == format_markdown(results) and table.strip() in printed
    assert "| dae_64 | skipped: model for another protocol" in table
    for method, row in rows.items():
        assert (f"| {method} | {row['signal_rmse']:.2f} | {row['fa_mae']['all']:.4f} | {row['md_mae']['all'] * 1e6:.1f} "
                f"| {row['rmse']['WM']:.1f} / {row['rmse']['GM']:.1f} /") in table
    assert (out / "fa_maps_seed32_snr20.png").stat().st_size > 5000
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err
    assert main(["benchmark", "--phantom", str(tmp_path), "--out", str(tmp_path / "b2")]) == 2
    assert "not a phantom directory" in capsys.readouterr().err


def test_bias_corrected_and_spatial_rows(phantom_dir, tmp_path):
    from dwivae.compare.benchmark import run_benchmark
    rician = training.train(load_phantom(phantom_dir)["acq"], arch="dae", seed=0,
                            config=replace(TINY_TRAINING, noise="rician", snr_range=(10.0, 40.0)))
    results = run_benchmark([phantom_dir], methods=["svd"], variants={"dae_rician": rician}, log=lambda _: None,
                            bias_correct=True, spatial=2.0)
    rows = results["phantoms"]["seed32_snr20"]["methods"]
    # a network trained on Rician noise has no floor left to remove: no dae_rician+bc; only networks
    # get a +spatial row
    assert list(rows) == ["noisy", "noisy+bc", "svd", "svd+bc", "dae_rician", "dae_rician+spatial"]
    assert rows["dae_rician+spatial"]["status"] == "ok" and "spatial 2" in rows["dae_rician+spatial"]["note"]
    # the noise floor lifts the diffusion-weighted signal, most where it is low (CSF at b=1000, whose
    # MD comes out too low): removing it must take the bias away
    assert rows["svd"]["signal_bias_dw"] > 0.02 * 50 and rows["svd"]["md_bias"]["CSF"] < 0
    assert abs(rows["svd+bc"]["signal_bias_dw"]) < 0.3 * rows["svd"]["signal_bias_dw"]
    assert abs(rows["svd+bc"]["md_bias"]["CSF"]) < 0.5 * abs(rows["svd"]["md_bias"]["CSF"])
    assert rows["svd+bc"]["seconds"] >= rows["svd"]["seconds"]


def test_a_context_model_is_also_scored_voxel_by_voxel(phantom_dir):
    from dwivae.apply.denoise import denoise
    from dwivae.compare.benchmark import run_benchmark
    from dwivae.learn.context import train_context
    from dwivae.learn.models import ContextConfig
    ph = load_phantom(phantom_dir)
    model = train_context(training.train(ph["acq"], arch="vae", seed=0, config=TINY_TRAINING),
                          config=ContextConfig(steps=10, batch_size=64))
    results = run_benchmark([phantom_dir], methods=[], variants={"ctx": model}, log=lambda _: None, spatial=2.0)
    rows = results["phantoms"]["seed32_snr20"]["methods"]
    assert list(rows) == ["noisy", "ctx", "ctx-voxelwise", "ctx+spatial"]
    assert "learned context" in rows["ctx"]["note"] and "not used" in rows["ctx-voxelwise"]["note"]
    mask = ph["labels"] > 0
    voxelwise = score(denoise(ph["noisy"], ph["acq"], model, mask=mask, context=False), ph["clean"], ph["labels"],
                      dti_fit(ph["clean"], ph["acq"], mask), ph["acq"])
    assert rows["ctx-voxelwise"]["signal_rmse"] == pytest.approx(voxelwise["signal_rmse"])
    assert rows["ctx"]["signal_rmse"] != pytest.approx(voxelwise["signal_rmse"])
