"""Evaluation on the held-out simulated split: the study's Table 2 and more.

For "noisy" and for every model: signal MSE/MAE against the clean signals, and the MSE/MAE of the
six tensor elements fitted (log-linear least squares) from each against the true tensors, plus FA
and MD errors, overall and per noise level. All models are scored on the same test samples.
"""
from __future__ import annotations

import numpy as np

from dwivae.compare.metrics import per_group, summary
from dwivae.errors import InputError
from dwivae.learn.dataset import held_out_pairs, simulate_split
from dwivae.learn.training import TrainedModel, model_output
from dwivae.physics.tensorfit import fit_tensor

METRIC_KEYS = ("signal_mse", "signal_mae", "D_mse", "D_mae", "fa_mae", "md_mae")


def _shared_data_settings(models: dict[str, TrainedModel]) -> TrainedModel:
    """Check that all models were trained on one protocol and split; return the first."""
    first_name, first = next(iter(models.items()))
    key = _data_key(first)
    for name, model in models.items():
        if _data_key(model) != key:
            raise InputError(f"{name} and {first_name} were trained on different protocols or splits "
                             "(seed, atoms, test fraction): evaluate them separately or retrain with one --seed")
    return first


def _data_key(model: TrainedModel) -> tuple:
    c = model.train_config
    return (model.acquisition.fingerprint(), c.seed, c.atoms, c.n_atoms, c.test_fraction)


def _scores(estimate: np.ndarray, clean: np.ndarray, D_true: np.ndarray, levels: np.ndarray,
            noise_levels: np.ndarray, bvals: np.ndarray, bvecs: np.ndarray) -> dict:
    D_est, _ = fit_tensor(estimate, bvals, bvecs)
    result = summary(estimate, clean, D_est, D_true)
    groups = per_group(estimate, clean, D_est, D_true, levels)
    result["per_noise_level"] = {f"{noise_levels[g]:.2f}": groups[g] for g in sorted(groups)}
    return result


def evaluate(models: dict[str, TrainedModel]) -> dict[str, dict]:
    """Score noisy signals and each model's reconstructions on the shared held-out split.

    Parameters
    ----------
    models : dict of str to TrainedModel
        Models by name (the CLI uses the model directory's name); all trained on the same
        protocol, seed and split settings.

    Returns
    -------
    dict
        For ``"noisy"`` and each model name: ``signal_mse``, ``signal_mae``, ``D_mse``, ``D_mae``,
        ``fa_mae``, ``md_mae`` and ``per_noise_level`` (the same keys for each noise standard
        deviation, keyed by its value with two decimals).
    """
    if not models:
        raise InputError("give at least one model directory to evaluate")
    reference = _shared_data_settings(models)
    c = reference.train_config
    acq = reference.acquisition
    split = simulate_split(acq, seed=c.seed, atoms=c.atoms, n_atoms=c.n_atoms, test_fraction=c.test_fraction,
                           free_water=c.free_water)
    noisy, atom, level = held_out_pairs(split, seed=c.seed)
    clean, D_true = split.test_clean[atom], split.test_D[atom]
    score = dict(clean=clean, D_true=D_true, levels=level, noise_levels=split.noise_levels,
                 bvals=acq.bvals, bvecs=acq.bvecs)
    results = {"noisy": _scores(noisy, **score)}
    for name, model in models.items():
        results[name] = _scores(model_output(model, noisy), **score)
    return results


def format_table(results: dict[str, dict]) -> str:
    """The overall numbers as a fixed-width text table, one row per method."""
    header = f"{'method':<16}" + "".join(f"{k:>12}" for k in METRIC_KEYS)
    rows = [f"{name:<16}" + "".join(f"{r[k]:>12.4g}" for k in METRIC_KEYS) for name, r in results.items()]
    return "\n".join([header, *rows])
