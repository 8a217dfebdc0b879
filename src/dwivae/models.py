"""The study's networks, a variational autoencoder (VAE) and a denoising autoencoder (DAE), and a
learned neighbourhood network on their latent codes.

Both map a b0-normalised q-space signal of N volumes to a denoised signal of N volumes through
an encoder of three fully connected layers that narrow linearly to the latent size, and a mirrored
decoder ending in a sigmoid (normalised signals lie in [0, 1]). The VAE has two parallel heads for
the latent mean and log-variance and samples ``z = mu + sigma * eps`` only when it is given
``eps``; the DAE has one deterministic latent head. :class:`ContextNet` replaces a voxel's latent
mean by a learned, edge-aware combination of the latent means of its 3x3x3 neighbourhood.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from dwivae.errors import InputError

ARCHITECTURES = ("vae", "dae")
CONTEXT_LOSSES = ("log", "signal")
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


def neighbour_offsets(radius: int) -> torch.Tensor:
    """Offsets (K, 3) of a (2r + 1)³ neighbourhood in C order; the centre is row K // 2."""
    axis = torch.arange(-radius, radius + 1, dtype=torch.float32)
    return torch.cartesian_prod(axis, axis, axis)


class ContextNet(nn.Module):
    """A learned, edge-aware combination of the latent codes of a voxel's neighbourhood.

    ``forward(codes, valid)`` takes the latent means (B, K, L) of K = (2r + 1)³ voxels (centre
    at K // 2) and which of them exist (B, K), and returns one code (B, L) for the centre voxel:

    ``z = sum_k w_k mu_k + refine(z, mu_c, log q)``, with ``w = softmax_k(score(mu_k - mu_c, mu_c,
    |mu_k - mu_c|², |offset_k|², log q))`` over the valid voxels, where q is the median squared
    code distance of the neighbours to the centre (how far apart codes lie here: noise and
    anatomy). It generalises the hand-set bilateral weights of :mod:`dwivae.spatial`: the score
    network learns which neighbours share the centre's tissue and the refinement (zero at the
    start) what averaging codes does to the decoded signal.
    """

    def __init__(self, config: ContextConfig) -> None:
        super().__init__()
        self.config = config
        latent, width = config.latent, config.width
        self.score = nn.Sequential(nn.Linear(2 * latent + 3, width), nn.ELU(), nn.Linear(width, width), nn.ELU(),
                                   nn.Linear(width, 1))
        self.refine = nn.Sequential(nn.Linear(2 * latent + 1, width), nn.ELU(), nn.Linear(width, latent))
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)
        self.register_buffer("distance2", (neighbour_offsets(config.radius) ** 2).sum(dim=1), persistent=False)

    def forward(self, codes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        centre = codes[:, codes.shape[1] // 2]
        diff = codes - centre[:, None]
        d2 = (diff * diff).sum(dim=-1)
        neighbours = valid.clone()
        neighbours[:, codes.shape[1] // 2] = False
        spread = torch.nanmedian(torch.where(neighbours, d2, torch.nan), dim=1).values
        log_q = torch.log(torch.nan_to_num(spread, nan=0.0) + 1e-6)[:, None]
        k = codes.shape[1]
        features = torch.cat([diff, centre[:, None].expand(-1, k, -1), d2[..., None],
                              self.distance2.expand(len(codes), k)[..., None], log_q[:, None].expand(-1, k, -1)],
                             dim=-1)
        score = self.score(features)[..., 0].masked_fill(~valid, -torch.inf)
        z = (torch.softmax(score, dim=1)[..., None] * codes).sum(dim=1)
        return z + self.refine(torch.cat([z, centre, log_q], dim=-1))
