"""Tiny protocols, volumes and models shared by the tests."""
from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from dwivae.learn.training import PRESETS, TrainConfig
from dwivae.physics.acquisition import seed32

TINY_TRAINING = replace(PRESETS["default"], atoms="random", n_atoms=4000, samples_per_epoch=40_000,
                        batch_size=1024, epochs=3, test_every=2, lr=2e-3)
"""A training run of about a second, on random tensors."""


@pytest.fixture
def acq():
    """The study's protocol: 2 x b=50 and 30 directions at b=1000."""
    return seed32()


@pytest.fixture
def tiny_config() -> TrainConfig:
    return TINY_TRAINING


def write_gradients(tmp_path, bvals: np.ndarray, bvecs: np.ndarray, *, transpose: bool = True):
    """Write FSL-style gradient files (bvecs 3 x N unless transpose=False) and return their paths."""
    bval, bvec = tmp_path / "dwi.bval", tmp_path / "dwi.bvec"
    np.savetxt(bval, np.atleast_2d(bvals), fmt="%g")
    np.savetxt(bvec, bvecs.T if transpose else bvecs, fmt="%.6f")
    return bval, bvec


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def real_sample(name: str) -> tuple[Path, Path, Path]:
    """(image, bval, bvec) of a real in-vivo sample: DIPY's ``small_64D`` or one in ../shared/data."""
    if name == "small_64D":
        from dipy.data import get_fnames
        return tuple(Path(p) for p in get_fnames(name="small_64D"))
    base = SHARED_DATA / name
    if not base.with_suffix(".nii.gz").exists():
        pytest.skip(f"{base}.nii.gz is not available")
    return base.with_suffix(".nii.gz"), base.with_suffix(".bval"), base.with_suffix(".bvec")


@pytest.fixture(scope="session")
def trained_for():
    """Train (once per session) a tiny model for a real sample's protocol: trained_for(name, arch)."""
    from dwivae.learn.training import train
    from dwivae.physics.acquisition import load_acquisition
    cache = {}

    def get(name: str, arch: str = "vae"):
        if (name, arch) not in cache:
            _, bval, bvec = real_sample(name)
            cache[name, arch] = train(load_acquisition(bval, bvec), arch=arch, seed=0, config=TINY_TRAINING)
        return cache[name, arch]
    return get


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking")


def open_in_chromium(page: Path, screenshot: Path) -> tuple[list[dict], list[list]]:
    """Load a page in headless Chromium; return its console messages and each image's (complete, naturalWidth)."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromium-driver must be installed in CI (.ci/run installs them)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, "--window-size=1300,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(page.resolve().as_uri())
        images = browser.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.src.slice(0, 22)])")
        logs = browser.get_log("browser")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(screenshot))
    finally:
        browser.quit()
    return logs, images
