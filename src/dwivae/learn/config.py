"""The settings of a network and of its training: dataclasses saved with the weights.

They need no torch, so that a saved model can be read and run through the compiled kernel
(:mod:`dwivae.learn.frozen`) without importing it; :mod:`dwivae.learn.models` and :mod:`dwivae.learn.training`
re-export them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from dwivae.errors import InputError
from dwivae.physics.simulate import NOISE_KINDS

ARCHITECTURES = ("vae", "dae")
ATOM_SOURCES = ("grid", "random", "sticks", "mixed")
"""Where clean training signals come from: the study's tensor grid, random tensors, ball-and-sticks, or both."""
ACTIVATION_NAMES = ("relu", "leaky_relu", "elu")
CONTEXT_LOSSES = ("log", "signal")
LOSSES = ("huber", "mse", "l1")
"""Reconstruction losses (:data:`dwivae.learn.losses.RECONSTRUCTION_LOSSES`)."""


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a network; saved with its weights.

    Parameters
    ----------
    arch : {"vae", "dae"}
    n_inputs : int
        Number of volumes N of the protocol.
    latent : int
        Latent size (the study: 7, and 10 for comparison).
    hidden : tuple of int
        Widths of the encoder layers; empty means three layers narrowing linearly from
        ``n_inputs`` to ``latent``. The decoder mirrors them.
    activation : {"relu", "leaky_relu", "elu"}
    """

    arch: str = "vae"
    n_inputs: int = 32
    latent: int = 7
    hidden: tuple[int, ...] = field(default=())
    activation: str = "elu"

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if self.activation not in ACTIVATION_NAMES:
            raise InputError(f"unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATION_NAMES)}")
        if not 1 <= self.latent < self.n_inputs:
            raise InputError(f"latent size {self.latent} must be between 1 and the number of volumes "
                             f"({self.n_inputs}) minus one")
        step = (self.n_inputs - self.latent) / 4
        hidden = self.hidden or tuple(round(self.n_inputs - step * k) for k in (1, 2, 3))
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        if any(h < 1 for h in self.hidden):
            raise InputError(f"hidden widths {list(self.hidden)} must all be >= 1")

    def widths(self) -> tuple[int, ...]:
        """Encoder widths from input to the last hidden layer, e.g. (32, 26, 20, 13)."""
        return (self.n_inputs, *self.hidden)

    def to_json(self) -> dict:
        """A JSON-serialisable dict that ``ModelConfig(**d)`` reads back."""
        return {**asdict(self), "hidden": list(self.hidden)}


@dataclass(frozen=True)
class ContextConfig:
    """Everything needed to rebuild a :class:`ContextNet`, and how it was trained; saved with it.

    Parameters
    ----------
    latent : int
        Latent size of the autoencoder whose codes it combines.
    radius : int
        Neighbourhood radius r: (2r + 1)³ voxels.
    width : int
        Width of the hidden layers of its two small networks.
    steps, batch_size, lr : int, int, float
        Adam steps, neighbourhoods per step and learning rate of its training.
    loss : {"log", "signal"}
        Its training loss on the centre voxel: the mean squared difference of log signals
        (``log(S + 0.01)``; errors weighted as the tensor fit weighs them, so that dark voxels such
        as CSF at high b count), or the autoencoder's reconstruction loss on the signals.
    """

    latent: int = 7
    radius: int = 1
    width: int = 32
    steps: int = 3000
    batch_size: int = 1024
    lr: float = 2e-3
    loss: str = "log"

    def __post_init__(self) -> None:
        if self.loss not in CONTEXT_LOSSES:
            raise InputError(f"unknown context loss {self.loss!r}: choose one of {', '.join(CONTEXT_LOSSES)}")
        if self.radius < 1 or self.width < 1 or self.latent < 1:
            raise InputError(f"context radius ({self.radius}), width ({self.width}) and latent size "
                             f"({self.latent}) must be >= 1")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise InputError(f"context steps ({self.steps}) and batch size ({self.batch_size}) must be >= 1 "
                             f"and the learning rate ({self.lr}) > 0")

    @property
    def size(self) -> int:
        """Voxels per neighbourhood, (2r + 1)³."""
        return (2 * self.radius + 1) ** 3

    def to_json(self) -> dict:
        """A JSON-serialisable dict that ``ContextConfig(**d)`` reads back."""
        return asdict(self)


LR_SCHEDULES = ("constant", "cosine")
NORMALISATIONS = ("s0", "b0")

@dataclass(frozen=True)
class TrainConfig:
    """Training settings; saved with the weights.

    Parameters
    ----------
    epochs : int
    lr : float
        Adam learning rate.
    lr_schedule : {"constant", "cosine"}
        Constant (the study), or cosine decay from ``lr`` to ``lr / 100`` over the epochs.
    batch_size : int
    loss : {"huber", "mse", "l1"}
        Reconstruction loss.
    beta_max, beta_start_epoch, beta_step : float, int, float
        KL weight schedule (see :func:`dwivae.learn.losses.beta_schedule`); ``beta_max=0`` trains
        without the KL term (the study's ablation). The DAE has no KL term. beta weighs the KL
        term against the reconstruction loss summed over the N volumes of a sample (the ELBO's
        convention); as the reconstruction loss is a mean over volumes, the step uses beta / N.
        Against the mean itself, the study's beta of 0.0015 collapses the posterior: the VAE
        then ignores its input (measured: FA error 0.47 on clean test signals, against 0.06
        without KL).
    seed : int
        Fixes simulation, split, noise, initialisation and latent sampling.
    samples_per_epoch : int or None
        None: every training atom at every noise level, with noise drawn once (the study's
        fixed data set). An int: that many fresh samples per epoch, each a random training atom
        at a random noise level with new noise (online simulation).
    atoms : {"grid", "random", "sticks", "mixed"}
        Clean signals from the study's tensor grid, random physiological tensors, random
        ball-and-sticks, or both (see :func:`dwivae.learn.dataset.simulate_split`).
    n_atoms : int
        Number of random atoms (all sources but the grid).
    test_fraction : float
    test_every : int
        Test MSE is measured every this many epochs and after the last one.
    noise : {"gaussian", "rician", "nc-chi"}
        Noise of the training samples: Gaussian clipped at 0 (the study), Rician, or noncentral
        chi over ``coils`` channels (see :func:`dwivae.physics.simulate.add_noncentral_chi_noise`).
        Rician and nc-chi need ``samples_per_epoch``.
    coils : int
    snr_range : (float, float), optional
        Draw each sample's noise as ``sigma = 1 / SNR`` (S0 = 1) with SNR log-uniform over this
        range, instead of the study's 31 levels (needs ``samples_per_epoch``).
    fresh_atoms : bool
        Online simulation: every batch draws new clean signals from the random atom source
        instead of picking training atoms from a fixed dictionary, so no sample repeats and
        memory does not grow with the parameter space (needs ``samples_per_epoch``; only the
        held-out atoms that measure the test MSE are simulated up front).
    free_water : float
        Fraction of the random tensors that are isotropic, ``d I`` with d up to 3.5e-3 mm²/s
        (free water, which the random tensors otherwise all but miss); random or mixed atoms only.
    normalise : {"s0", "b0"}
        What a training sample is divided by: the true S0 (1; the study), or, as denoising real
        data must, the mean of its own noisy b0 volumes m, with the clean target divided by the
        same m (capped at 1, the sigmoid's range). With "s0" the network never learns that the b0
        noise of real data scales the diffusion-weighted values it sees; with "b0" it does, and
        ``m`` times its output estimates the clean signal (needs ``snr_range``).
    """

    epochs: int = 40
    lr: float = 4e-4
    lr_schedule: str = "constant"
    batch_size: int = 3000
    loss: str = "huber"
    beta_max: float = 0.0015
    beta_start_epoch: int = 2
    beta_step: float = 1e-4
    seed: int = 0
    samples_per_epoch: int | None = None
    atoms: str = "grid"
    n_atoms: int = 500_000
    test_fraction: float = 0.2
    test_every: int = 5
    noise: str = "gaussian"
    coils: int = 1
    snr_range: tuple[float, float] | None = None
    fresh_atoms: bool = False
    free_water: float = 0.0
    normalise: str = "s0"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise InputError(f"unknown loss {self.loss!r}: choose one of {', '.join(LOSSES)}")
        if self.noise not in NOISE_KINDS:
            raise InputError(f"unknown noise {self.noise!r}: choose one of {', '.join(NOISE_KINDS)}")
        if self.coils < 1 or (self.noise != "nc-chi" and self.coils != 1):
            raise InputError(f"{self.coils} coils: use 1, or more with nc-chi noise")
        if self.snr_range is not None:
            object.__setattr__(self, "snr_range", tuple(float(v) for v in self.snr_range))
            low, high = self.snr_range
            if not 0 < low <= high:
                raise InputError(f"SNR range {low}-{high} must be positive and increasing")
        if not 0.0 <= self.free_water < 1.0:
            raise InputError(f"free-water fraction {self.free_water} must lie in [0, 1)")
        if self.free_water and self.atoms not in ("random", "mixed"):
            raise InputError("free water is added to the random tensors: choose random or mixed atoms")
        if self.fresh_atoms and self.atoms == "grid":
            raise InputError("fresh atoms are drawn at random: choose random, sticks or mixed atoms, not the grid")
        if (self.noise != "gaussian" or self.snr_range is not None or self.fresh_atoms) and self.samples_per_epoch is None:
            raise InputError("Rician/nc-chi noise, an SNR range and fresh atoms need fresh samples each epoch "
                             "(samples_per_epoch; the default preset), not the study's fixed data set")
        if self.normalise not in NORMALISATIONS:
            raise InputError(f"unknown normalisation {self.normalise!r}: choose one of {', '.join(NORMALISATIONS)}")
        if self.normalise == "b0" and self.snr_range is None:
            raise InputError("normalising by the noisy b0 needs an SNR range (--snr-range or --snr-from): at the "
                             "study's noise levels (sigma up to 0.91 S0) the b0 mean can be near 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs ({self.epochs}) and batch size ({self.batch_size}) must be >= 1")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"unknown learning-rate schedule {self.lr_schedule!r}: choose one of "
                             f"{', '.join(LR_SCHEDULES)}")
        if self.lr <= 0 or self.beta_max < 0:
            raise InputError(f"learning rate ({self.lr}) must be > 0 and beta ({self.beta_max}) >= 0")

    def to_json(self) -> dict:
        """A JSON-serialisable dict that ``TrainConfig(**d)`` reads back."""
        return asdict(self)

    def lr_at(self, epoch: int) -> float:
        """Learning rate of 1-based ``epoch``."""
        if self.lr_schedule == "constant" or self.epochs == 1:
            return self.lr
        floor = self.lr / 100
        return floor + 0.5 * (self.lr - floor) * (1 + math.cos(math.pi * (epoch - 1) / (self.epochs - 1)))


PRESETS: dict[str, TrainConfig] = {
    "study": TrainConfig(),
    "default": TrainConfig(samples_per_epoch=1_000_000, batch_size=2048, epochs=16, lr=2e-3,
                           lr_schedule="cosine", beta_step=2e-4),
}
"""``study``: the study's full data volume (all atoms x 31 levels, 40 epochs). ``default``: fresh
noise each epoch on fewer samples, tuned to reach the study preset's test quality in seconds."""
