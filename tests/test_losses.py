from __future__ import annotations

import pytest
import torch

from dwivae.errors import InputError
from dwivae.learn.losses import beta_schedule, kl_divergence, reconstruction_loss


def test_kl_closed_form_against_torch_distributions():
    mu, logvar = torch.randn(64, 7), torch.randn(64, 7)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(7), torch.ones(7))
    expected = torch.distributions.kl_divergence(q, p).sum(1).mean()
    torch.testing.assert_close(kl_divergence(mu, logvar), expected)
    assert kl_divergence(torch.zeros(3, 7), torch.zeros(3, 7)) == 0


@pytest.mark.parametrize("epoch, beta", [(1, 0.0), (2, 0.0), (3, 1e-4), (17, 0.0015), (40, 0.0015), (10, 8e-4)])
def test_study_beta_schedule(epoch, beta):
    assert beta_schedule(epoch, beta_max=0.0015) == pytest.approx(beta)


def test_beta_zero_is_the_ablation():
    assert all(beta_schedule(e, beta_max=0.0) == 0 for e in range(1, 41))


def test_losses():
    a, b = torch.zeros(4), torch.full((4,), 0.5)
    assert reconstruction_loss("mse")(a, b) == pytest.approx(0.25)
    assert reconstruction_loss("l1")(a, b) == pytest.approx(0.5)
    assert reconstruction_loss("huber")(a, b) == pytest.approx(0.125)
    assert reconstruction_loss("huber")(a, torch.full((4,), 3.0)) == pytest.approx(2.5)
    with pytest.raises(InputError, match="unknown loss 'l3'"):
        reconstruction_loss("l3")
