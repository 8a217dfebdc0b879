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
    argv = ["benchmark", "--phantom", str(phantom_dir), "--methods", "svd", "vae", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    rows = results["phantoms"]["seed32_snr20"]["methods"]
    assert list(rows) == ["noisy", "svd", "vae"] and all(r["status"] == "ok" for r in rows.values())
    assert rows["svd"]["signal_rmse"] < rows["noisy"]["signal_rmse"]
    table = (out / "results.md").read_text()
    assert table == format_markdown(results) and table.strip() in printed
    for method, row in rows.items():
        assert f"| {method} | {row['signal_rmse']:.2f} | {row['psnr_db']:.1f} | {row['fa_mae']['WM']:.4f} |" in table
    assert (out / "fa_maps_seed32_snr20.png").stat().st_size > 5000
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err
    assert main(["benchmark", "--phantom", str(tmp_path), "--out", str(tmp_path / "b2")]) == 2
    assert "not a phantom directory" in capsys.readouterr().err
