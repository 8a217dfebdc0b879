"""Training losses: reconstruction, the Kullback-Leibler term and the KL weight (beta) schedule."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from dwivae.errors import InputError

RECONSTRUCTION_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "huber": F.huber_loss,
    "mse": F.mse_loss,
    "l1": F.l1_loss,
}


def reconstruction_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The reconstruction loss called ``name`` (mean over all elements; Huber with delta 1)."""
    if name not in RECONSTRUCTION_LOSSES:
        raise InputError(f"unknown loss {name!r}: choose one of {', '.join(RECONSTRUCTION_LOSSES)}")
    return RECONSTRUCTION_LOSSES[name]


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(mu, exp(logvar)) from N(0, I), summed over latents, mean over samples.

    Notes
    -----
    ``D_KL = -1/2 sum_j (1 + log sigma_j² - mu_j² - sigma_j²)`` (Kingma and Welling 2014,
    Appendix B; the study's Eq. 3).
    """
    return 0.5 * torch.mean(torch.sum(mu.square() + logvar.exp() - 1.0 - logvar, dim=1))


def beta_schedule(epoch: int, *, beta_max: float, start_epoch: int = 2, step: float = 1e-4) -> float:
    """KL weight at 1-based ``epoch``: 0 up to ``start_epoch``, then ``+step`` per epoch up to ``beta_max``.

    With the study's settings (start 2, step 1e-4, max 0.0015): epochs 1 and 2 give 0, epoch 3
    gives 1e-4 and epoch 17 onwards 0.0015.
    """
    return float(min(beta_max, step * max(0, epoch - start_epoch)))
