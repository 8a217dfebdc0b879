"""Figures and the HTML report on real data, checked in headless Chromium."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import open_in_chromium, real_sample

from dwivae.apply.denoise_file import denoise_file
from dwivae.cli import main
from dwivae.learn.checkpoint import save_model
from dwivae.physics.acquisition import load_acquisition
from dwivae.show.gallery import changed_voxels, volume_figures
from dwivae.show.report import build_report

ARTIFACTS = Path(os.environ.get("DWIVAE_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def demo_outputs(tmp_path_factory, trained_for):
    """VAE and DAE model directories and their denoised outputs of DIPY's small_64D."""
    out = tmp_path_factory.mktemp("report")
    dwi, bval, bvec = real_sample("small_64D")
    acq = load_acquisition(bval, bvec)
    outputs, models = [], {}
    for arch in ("vae", "dae"):
        model = trained_for("small_64D", arch)
        models[arch] = save_model(model, out / arch)
        written, _ = denoise_file(dwi, acq, model, out / f"dwi_{arch}.nii.gz", mask=None,
                                  provenance={"Model": {"path": str(models[arch])}, "Command": f"test {arch}",
                                              "GradientFiles": {"bval": str(bval), "bvec": str(bvec)}})
        outputs.append(written["denoised"])
    return out, outputs, models


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    """A benchmark run (noisy and SVD) on a small phantom."""
    out = tmp_path_factory.mktemp("bench")
    assert main(["phantom", "--protocol", "seed32", "--shape", "16", "16", "8", "--out", str(out / "ph")]) == 0
    assert main(["benchmark", "--phantom", str(out / "ph"), "--methods", "svd", "--quiet", "--out", str(out / "b")]) == 0
    return out / "b"


def test_report_opens_in_chromium_with_every_image(demo_outputs, benchmark_dir):
    out, outputs, _ = demo_outputs
    report = build_report(outputs, out / "report.html", benchmark=benchmark_dir, seed=0)
    page = report.read_text()
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page  # self-contained
    n_embedded = len(re.findall(r'<img src="data:image/png;base64,', page))
    # images, residual maps, histograms, FA, loss, reconstructions, 2 x influence, latents, benchmark bars + FA maps
    assert n_embedded >= 11
    for heading in ("What was run", "Key numbers", "In-vivo results", "Models", "Phantom benchmark"):
        assert f"<h2>{heading}</h2>" in page
    assert "test vae" in page and load_acquisition(*real_sample("small_64D")[1:]).fingerprint() in page
    logs, images = open_in_chromium(report, ARTIFACTS / "report.png")
    assert [entry for entry in logs if entry["level"] in ("SEVERE", "WARNING")] == []
    assert len(images) == n_embedded
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_volume_numbers_are_the_residuals_shown(demo_outputs, tmp_path):
    _, outputs, _ = demo_outputs
    dwi, bval, bvec = real_sample("small_64D")
    acq = load_acquisition(bval, bvec)
    noisy = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    denoised = {"VAE": np.asarray(nib.load(outputs[0]).dataobj)}
    figs, numbers = volume_figures(noisy, denoised, acq, tmp_path, fmt="svg", slices=(2, 5))
    assert {f.path.suffix for f in figs} == {".svg"} and all(f.path.exists() for f in figs)
    mask = changed_voxels(noisy, denoised, ~acq.b0_mask)
    mask[:, :, :2] = mask[:, :, 6:] = False
    residual = (denoised["VAE"] - noisy)[mask][:, ~acq.b0_mask]
    assert numbers["VAE"]["residual_mean"] == pytest.approx(float(residual.mean()), rel=1e-5)
    assert numbers["VAE"]["residual_sd"] == pytest.approx(float(residual.std()), rel=1e-5)
    assert numbers["noisy"]["fa_mean"] > 0


def test_figures_command_lists_what_it_drew(demo_outputs, tmp_path, capsys):
    _, outputs, models = demo_outputs
    out = tmp_path / "figs"
    argv = ["figures", str(models["vae"]), str(models["dae"]), "--denoised", *map(str, outputs), "--out", str(out)]
    assert main(argv) == 0
    listing = json.loads((out / "figures.json").read_text())
    files = [entry["file"] for entry in listing["figures"]]
    assert {"loss_curves.png", "reconstructions.png", "latent_gaussians.png", "in_vivo.png",
            "residual_maps.png", "residual_histograms.png", "fa_maps.png"} <= set(files)
    assert all((out / f).stat().st_size > 5_000 for f in files)
    assert set(listing["numbers"]["models"]) == {"vae", "dae"}
    assert listing["numbers"]["models"]["vae"]["latent_statistics"]["n_active"] >= 1
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err


def test_figures_of_a_benchmark(benchmark_dir, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", "--benchmark", str(benchmark_dir), "--format", "svg", "--out", str(out)]) == 0
    files = [entry["file"] for entry in json.loads((out / "figures.json").read_text())["figures"]]
    assert files == ["benchmark_ph.svg", "fa_maps_ph.png", "fa_errors_ph.png"]
    assert all((out / f).stat().st_size > 5_000 for f in files)
    assert main(["figures", "--benchmark", str(tmp_path), "--out", str(tmp_path / "g")]) == 2
    assert "no results.json" in capsys.readouterr().err


def test_report_and_figures_bad_input(demo_outputs, tmp_path, capsys):
    out, outputs, _ = demo_outputs
    assert main(["figures", "--out", str(tmp_path / "f")]) == 2
    assert "nothing to draw" in capsys.readouterr().err
    bare = tmp_path / "bare.nii.gz"
    shutil.copy(outputs[0], bare)
    assert main(["report", str(bare), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no sidecar bare.json" in err[0]
    assert main(["report", str(outputs[0]), "--format", "gif", "--out", str(tmp_path / "r.html")]) == 2
    assert not (tmp_path / "r.html").exists()
