"""Noisy/clean training pairs: clean signals, the seeded train/test split and noisy samples.

The split is over clean signals ("atoms"), never over noisy copies, so that no test signal is seen
in training under another noise level. One seed fixes the atoms, the split and every noise draw;
the VAE and the DAE trained with one seed therefore see the same split and the same noisy samples.
Signals are normalised by S0 (S0 = 1 in simulation), so they lie in [0, 1] before noise.
"""
from __future__ import annotations

import ctypes
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from dwivae.errors import InputError
from dwivae.io import write_json_atomic
from dwivae.kernels.bindings import aligned_empty, default_threads, library
from dwivae.learn.config import ATOM_SOURCES
from dwivae.physics.acquisition import Acquisition, save_acquisition
from dwivae.physics.simulate import (
    STUDY_NOISE_LEVELS,
    ball_and_sticks_signals,
    random_ball_and_sticks,
    random_tensors,
    study_grid,
    tensor_signals,
)
from dwivae.physics.tensorfit import fit_tensor

STREAMS = ("split", "test_noise", "train", "init", "context", "eps", "order", "noise")
"""Independent random streams spawned from one seed, in this order (a stream added at the end
leaves the others as they were)."""


def seed_streams(seed: int) -> dict[str, np.random.SeedSequence]:
    """Independent seed sequences for each use of randomness, all fixed by ``seed``."""
    return dict(zip(STREAMS, np.random.SeedSequence(seed).spawn(len(STREAMS))))


def torch_generator(seq: np.random.SeedSequence) -> torch.Generator:
    """A CPU torch generator seeded from a numpy seed sequence."""
    return torch.Generator().manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> 1))


@dataclass(frozen=True)
class SimulatedSplit:
    """Clean signals and their tensors, split into training and test atoms.

    Attributes
    ----------
    train_clean, test_clean : (M, N) ndarray, float32
        Clean normalised signals (S0 = 1).
    train_D, test_D : (M, 6) ndarray, float32, mm²/s
        Their tensors (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz).
    noise_levels : (L,) ndarray
        Gaussian noise standard deviations (fractions of S0).
    """

    train_clean: np.ndarray
    test_clean: np.ndarray
    train_D: np.ndarray
    test_D: np.ndarray
    noise_levels: np.ndarray


def clean_atoms(acq: Acquisition, atoms: str, n: int, *, rng: np.random.Generator,
                tensors: bool = True, free_water: float = 0.0) -> tuple[np.ndarray | None, np.ndarray]:
    """Clean signals of an atom source and their tensors.

    Parameters
    ----------
    acq : Acquisition
    atoms : {"grid", "random", "sticks", "mixed"}
        See :func:`simulate_split`.
    n : int
        Number of random atoms (the grid has its own size).
    rng : numpy.random.Generator
    tensors : bool
        Return the tensors (for stick signals an OLS fit); False skips the fit and returns None.
    free_water : float
        Fraction of the random tensors that are isotropic, up to free water (see
        :func:`dwivae.physics.simulate.random_tensors`).

    Returns
    -------
    D : (M, 6) ndarray, float32, or None
    signals : (M, N) ndarray, float32
    """
    if atoms not in ATOM_SOURCES:
        raise InputError(f"unknown atom source {atoms!r}: choose one of {', '.join(ATOM_SOURCES)}")
    if atoms == "grid":
        D = study_grid(acq)
        return D, tensor_signals(D, acq)
    n_sticks = {"random": 0, "sticks": n, "mixed": n // 2}[atoms]
    D = random_tensors(n - n_sticks, rng=rng, isotropic_fraction=free_water)
    signals = [tensor_signals(D, acq)]
    if n_sticks:
        sticks = ball_and_sticks_signals(acq, **random_ball_and_sticks(n_sticks, rng=rng))
        if tensors:
            bvecs = np.where(np.isfinite(acq.bvecs), acq.bvecs, 0.0)
            D = np.concatenate([D, fit_tensor(sticks, acq.bvals, bvecs)[0].astype(np.float32)])
        signals.append(sticks)
    return (D if tensors else None), np.concatenate(signals)


def simulate_split(
    acq: Acquisition,
    *,
    seed: int,
    atoms: str = "grid",
    n_atoms: int = 500_000,
    test_fraction: float = 0.2,
    noise_levels: np.ndarray = STUDY_NOISE_LEVELS,
    free_water: float = 0.0,
) -> SimulatedSplit:
    """Simulate clean signals for ``acq`` and split them into training and test atoms.

    Parameters
    ----------
    acq : Acquisition
    seed : int
        Fixes the random tensors (``atoms="random"``) and the split.
    atoms : {"grid", "random", "sticks", "mixed"}
        The study's filtered grid of tensors, ``n_atoms`` random physiological tensors, random
        ball-and-sticks signals (1 to 3 sticks), or half random tensors and half sticks. The
        tensors of stick signals are their apparent tensors (the OLS fit of the clean signal),
        which the evaluation compares with.
    n_atoms : int
        Number of random atoms (ignored for the grid).
    test_fraction : float
        Fraction of atoms held out for testing (the study: 0.2).
    noise_levels : (L,) ndarray
        Noise standard deviations used for training and testing.
    free_water : float
        Fraction of isotropic random tensors (see :func:`clean_atoms`).
    """
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test fraction must lie between 0 and 1, got {test_fraction}")
    rng = np.random.default_rng(seed_streams(seed)["split"])
    D, clean = clean_atoms(acq, atoms, n_atoms, rng=rng, free_water=free_water)
    order = rng.permutation(len(D))
    n_test = int(round(test_fraction * len(D)))
    test, train = order[:n_test], order[n_test:]  # shuffled: any leading subset is a random sample
    return SimulatedSplit(clean[train], clean[test], D[train], D[test],
                          np.asarray(noise_levels, dtype=np.float32))


def noisy_copies(
    clean: np.ndarray, noise_levels: np.ndarray, *, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every clean signal once at every noise level, as the study built its data set.

    Each level's noise comes from its own generator spawned from ``rng``, so that the levels are
    drawn in parallel threads (numpy releases the GIL) with the same result on any number of them.
    Noise as :func:`dwivae.physics.simulate.add_gaussian_noise`: negative values set to 0.

    Returns
    -------
    noisy : (M * L, N) ndarray, float32
        Noisy signals, level-major: rows ``l * M + m``.
    atom : (M * L,) int64 ndarray
        Index of each row's clean signal.
    level : (M * L,) int64 ndarray
        Index of each row's noise level.
    """
    m, n_levels = len(clean), len(noise_levels)
    clean = np.asarray(clean, dtype=np.float32)
    noisy = aligned_empty((m * n_levels, clean.shape[1]))
    level_rngs = rng.spawn(n_levels)

    def fill(k: int) -> None:
        out = noisy[k * m:(k + 1) * m]
        level_rngs[k].standard_normal(out=out, dtype=np.float32)
        out *= np.float32(noise_levels[k])
        out += clean
        np.maximum(out, 0.0, out=out)

    with ThreadPoolExecutor(min(default_threads(), n_levels) or 1) as pool:
        list(pool.map(fill, range(n_levels)))
    atom = np.tile(np.arange(m), n_levels)
    level = np.repeat(np.arange(n_levels), m)
    return noisy, atom, level


def counter_noisy_copies(clean: np.ndarray, noise_levels: np.ndarray, *, seed: int) -> np.ndarray | None:
    """:func:`noisy_copies`' noisy rows (level-major), the noise drawn in C from counters under
    ``seed`` (``noisy_copies.c``, Box-Muller pairs) on every CPU: 0.9-2 s for the study's 10.6 M
    rows, page faults included, where :func:`noisy_copies` takes ~3 s on 2 cores. Rows on 64-byte
    boundaries. None where the kernel cannot be built."""
    lib = library()
    if lib is None:
        return None
    clean = np.ascontiguousarray(clean, dtype=np.float32)
    sigma = np.ascontiguousarray(noise_levels, dtype=np.float32)
    out = aligned_empty((len(clean) * len(sigma), clean.shape[1]))
    f32 = ctypes.POINTER(ctypes.c_float)
    status = lib.dwivae_noisy_copies(clean.ctypes.data_as(f32), len(clean), clean.shape[1], sigma.ctypes.data_as(f32),
                                     len(sigma), seed & (2**64 - 1), out.ctypes.data_as(f32), default_threads())
    if status != 0:
        raise InputError(f"{out.size} noise values are more than the kernel's 2^32 counters: simulate fewer atoms")
    return out


def held_out_pairs(
    split: SimulatedSplit, *, seed: int, max_atoms: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out noisy test samples for ``seed``: every test atom at every noise level.

    Identical for every model trained or evaluated with the same seed and protocol. With
    ``max_atoms``, only the first that many test atoms (a smaller set to monitor training).
    """
    rng = np.random.default_rng(seed_streams(seed)["test_noise"])
    return noisy_copies(split.test_clean[:max_atoms], split.noise_levels, rng=rng)


def save_simulation(acq: Acquisition, out: str | PathLike[str], *, seed: int = 0, atoms: str = "grid",
                    n_atoms: int = 500_000, sigmas: Sequence[float] | None = None) -> dict:
    """Write a simulated data set to ``out``: clean signals, their tensors, noisy copies at every
    noise level (with each copy's atom and sigma) as ``.npy``, the protocol's gradient files and
    ``simulate.json`` (returned), the study's data set with the defaults.

    Parameters
    ----------
    acq : Acquisition
    out : path
        Directory, created if missing.
    seed : int
        Fixes the atoms, the split and the noise.
    atoms : {"grid", "random", "sticks", "mixed"}
    n_atoms : int
        Random atoms (not the grid's).
    sigmas : sequence of float, optional
        Noise standard deviations (default: the study's 31 levels).
    """
    out = Path(out)
    split = simulate_split(acq, seed=seed, atoms=atoms, n_atoms=n_atoms)
    clean = np.concatenate([split.train_clean, split.test_clean])
    tensors = np.concatenate([split.train_D, split.test_D])
    levels = STUDY_NOISE_LEVELS if sigmas is None else np.asarray(sigmas, dtype=np.float32)
    noisy, atom, level = noisy_copies(clean, levels, rng=np.random.default_rng(seed))
    out.mkdir(parents=True, exist_ok=True)
    for name, array in {"clean": clean, "tensors": tensors, "noisy": noisy, "noisy_atom": atom,
                        "noisy_sigma": levels[level]}.items():
        np.save(out / f"{name}.npy", array)
    save_acquisition(acq, out / "protocol.bval", out / "protocol.bvec")
    info = {"protocol": acq.to_json(), "atoms": atoms, "n_atoms": len(clean),
            "n_train_atoms": len(split.train_clean), "n_test_atoms": len(split.test_clean),
            "noise_levels": [float(s) for s in levels], "n_noisy": len(noisy), "seed": seed}
    write_json_atomic(out / "simulate.json", info, force=True)
    return info
