"""The study's networks: a variational autoencoder (VAE) and a denoising autoencoder (DAE).

Both map a b0-normalised q-space signal of N volumes to a denoised signal of N volumes through
an encoder of three fully connected layers that narrow linearly to the latent size, and a mirrored
decoder ending in a sigmoid (normalised signals lie in [0, 1]). The VAE has two parallel heads for
the latent mean and log-variance and samples ``z = mu + sigma * eps`` only when it is given
``eps``; the DAE has one deterministic latent head.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dwivae.errors import InputError

ARCHITECTURES = ("vae", "dae")
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


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
        if self.activation not in ACTIVATIONS:
            raise InputError(f"unknown activation {self.activation!r}: choose one of {', '.join(ACTIVATIONS)}")
        if not 1 <= self.latent < self.n_inputs:
            raise InputError(f"latent size {self.latent} must be between 1 and the number of volumes "
                             f"({self.n_inputs}) minus one")
        step = (self.n_inputs - self.latent) / 4
        hidden = self.hidden or tuple(round(self.n_inputs - step * k) for k in (1, 2, 3))
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))

    def widths(self) -> tuple[int, ...]:
        """Encoder widths from input to the last hidden layer, e.g. (32, 26, 20, 13)."""
        return (self.n_inputs, *self.hidden)

    def to_json(self) -> dict:
        """A JSON-serialisable dict that ``ModelConfig(**d)`` reads back."""
        return {**asdict(self), "hidden": list(self.hidden)}


def _stack(widths: tuple[int, ...], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w_in, w_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(w_in, w_out), ACTIVATIONS[activation]()]
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """The VAE (``config.arch == "vae"``) or the DAE (``"dae"``) of the study.

    ``forward(x, eps=None)`` returns ``(reconstruction, mu, logvar)``. With ``eps`` (a VAE only),
    the decoder sees ``z = mu + exp(logvar / 2) * eps``; without it, ``z = mu``, so inference is
    deterministic. The DAE returns ``logvar = None``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths()
        self.encoder = _stack(widths, config.activation)
        self.mu = nn.Linear(widths[-1], config.latent)
        self.logvar = nn.Linear(widths[-1], config.latent) if config.arch == "vae" else None
        self.decoder = nn.Sequential(
            *_stack((config.latent, *widths[:0:-1]), config.activation),
            nn.Linear(widths[1], widths[0]),
            nn.Sigmoid(),
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latent mean and log-variance (None for the DAE) of signals x, shape (B, N)."""
        h = self.encoder(x)
        return self.mu(h), (self.logvar(h) if self.logvar is not None else None)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Signals (B, N) from latent codes (B, latent)."""
        return self.decoder(z)

    def forward(
        self, x: torch.Tensor, eps: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        mu, logvar = self.encode(x)
        z = mu
        if eps is not None and logvar is not None:
            z = mu + torch.exp(0.5 * logvar) * eps
        return self.decode(z), mu, logvar


def build_model(config: ModelConfig) -> Autoencoder:
    """Build the network that ``config`` describes (weights from torch's current generator)."""
    return Autoencoder(config)
