"""Every figure renders to a real, non-blank image."""
from __future__ import annotations

import numpy as np
import pytest

from dwivae.learn.latent import LatentStatistics
from dwivae.show import figures


def assert_drawn(path, suffix=".png"):
    """The file exists and holds a decodable, non-uniform picture."""
    assert path.exists() and path.suffix == suffix
    if suffix == ".svg":
        text = path.read_text()
        assert text.lstrip().startswith("<?xml") and "<svg" in text and text.count("<path") > 10
        return
    import matplotlib.image as mpimg
    pixels = mpimg.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # not a blank canvas


@pytest.fixture
def volumes():
    rng = np.random.default_rng(0)
    noisy = rng.uniform(50, 150, (8, 9, 5, 12)).astype(np.float32)
    return noisy, {"VAE": noisy * 0.9, "DAE": noisy * 0.8 + 5}


def test_loss_curves(tmp_path):
    history = [{"epoch": e, "recon": 1 / e, "kl": 5.0 + e, "total": 1 / e + 0.01, **({"test_mse": 0.5 / e} if e % 2 == 0 else {})}
               for e in range(1, 7)]
    dae = [dict(r, kl=0.0) for r in history]
    assert_drawn(figures.loss_curves({"VAE": history, "DAE": dae}, tmp_path / "loss.png"))
    assert_drawn(figures.loss_curves({"DAE": dae}, tmp_path / "loss.svg"), ".svg")


def test_reconstruction_examples(tmp_path):
    clean = np.exp(-np.linspace(0, 2, 32))[None].repeat(3, axis=0)
    noisy = clean + 0.1
    out = figures.reconstruction_examples(clean, noisy, {"VAE": clean, "DAE": noisy}, tmp_path / "r.png",
                                          sigma=0.1, labels=["a", "b", "c"])
    assert_drawn(out)


def test_in_vivo_residuals_and_maps(tmp_path, volumes):
    noisy, denoised = volumes
    dw = np.ones(12, bool)
    dw[0] = False
    assert_drawn(figures.in_vivo_comparison(noisy, denoised, tmp_path / "a.png", volume=1, bvalue=1000))
    assert_drawn(figures.in_vivo_comparison(noisy, {"VAE": denoised["VAE"]}, tmp_path / "b.png", volume=1))
    assert_drawn(figures.residual_maps(noisy, denoised, tmp_path / "c.png", dw=dw, volume=1))
    residuals = {k: (v - noisy)[..., dw].ravel() for k, v in denoised.items()}
    assert_drawn(figures.residual_histograms(residuals, tmp_path / "d.png", description="all"))
    assert_drawn(figures.map_grid({k: v[:, :, 2, 0] / 150 for k, v in denoised.items()}, tmp_path / "e.png",
                                  title="FA", label="FA", vmin=0, vmax=1))


def test_latent_figures(tmp_path):
    L = 7
    stats = LatentStatistics(np.linspace(-1, 1, L), np.r_[np.full(5, 0.8), 0.01, 0.02], np.r_[np.full(5, 0.1), 1.0, 0.98],
                             np.r_[np.full(5, 2.0), 0.0, 0.01], np.r_[np.ones(5, bool), False, False])
    no_kl = LatentStatistics(np.zeros(L), np.ones(L), np.full(L, 1e-4), np.full(L, 9.0), np.ones(L, bool))
    assert_drawn(figures.latent_gaussians({"latent 7": stats, "no KL": no_kl}, tmp_path / "g.png"))
    traversal = np.random.default_rng(0).uniform(0, 1, (L, 5, 32))
    assert_drawn(figures.latent_influence(traversal, np.arange(L) / 10, tmp_path / "i.png", name="VAE",
                                          steps=[-2, -1, 0, 1, 2]))
