from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY_TRAINING
from dwivae import training
from dwivae.benchmark import dti_fit, format_markdown, load_phantom, score
from dwivae.cli import main


@pytest.fixture
def phantom_dir(tmp_path):
    out = tmp_path / "seed32_snr20"
    assert main(["phantom", "--protocol", "seed32", "--shape", "20", "20", "10", "--out", str(out)]) == 0
    return out


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
        assert f"| {method} | {row['signal_rmse']:.2f} | {row['psnr_db']:.1f} | {row['fa_mae']['WM']:.4f} |" in table
    assert (out / "fa_maps_seed32_snr20.png").stat().st_size > 5000
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err
    assert main(["benchmark", "--phantom", str(tmp_path), "--out", str(tmp_path / "b2")]) == 2
    assert "not a phantom directory" in capsys.readouterr().err
