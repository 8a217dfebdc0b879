from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import TINY_TRAINING

from dwivae.cli import main
from dwivae.compare.evaluation import METRIC_KEYS, evaluate, format_table
from dwivae.errors import InputError
from dwivae.learn.checkpoint import save_model
from dwivae.learn.training import train


@pytest.fixture(scope="module")
def pair():
    from dwivae.physics.acquisition import seed32
    return {arch: train(seed32(), arch=arch, seed=0, config=TINY_TRAINING) for arch in ("vae", "dae")}


def test_table2_keys_and_per_level(pair):
    results = evaluate(pair)
    assert list(results) == ["noisy", "vae", "dae"]
    for scores in results.values():
        assert set(METRIC_KEYS) <= set(scores)
        assert len(scores["per_noise_level"]) == 31 and "0.91" in scores["per_noise_level"]
    clean_level = results["noisy"]["per_noise_level"]["0.00"]
    assert clean_level["signal_mse"] == 0 and clean_level["D_mse"] < 1e-20  # clean signals fit back to D
    for name in ("vae", "dae"):
        assert results[name]["D_mse"] < results["noisy"]["D_mse"] / 3  # denoising lowers the tensor error
    assert format_table(results).splitlines()[1].startswith("noisy")


def test_models_from_different_splits_are_refused(pair):
    from dwivae.physics.acquisition import seed32
    other = train(seed32(), arch="vae", seed=1, config=replace(TINY_TRAINING, epochs=1))
    with pytest.raises(InputError, match="different protocols or splits"):
        evaluate({"a": pair["vae"], "b": other})


def test_evaluate_command_writes_the_printed_numbers(tmp_path, capsys, pair):
    dirs = [str(save_model(model, tmp_path / f"{arch}32")) for arch, model in pair.items()]
    assert main(["evaluate", *dirs, "--out", str(tmp_path / "res")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert list(metrics) == ["noisy", "vae32", "dae32"]
    row = next(line for line in printed.splitlines() if line.startswith("vae32")).split()
    assert float(row[3]) == pytest.approx(metrics["vae32"]["D_mse"], rel=1e-3)
    assert main(["evaluate", *dirs, "--out", str(tmp_path / "res")]) == 2  # no overwrite without --force
