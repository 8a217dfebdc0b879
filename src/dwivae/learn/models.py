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

import torch
from torch import nn

from dwivae.learn.config import ContextConfig, ModelConfig

ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}


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
    anatomy). It generalises the hand-set bilateral weights of :mod:`dwivae.apply.spatial`: the score
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
