from __future__ import annotations

import json
import math

import nibabel as nib
import numpy as np
import pytest

from dwivae.cli import main
from dwivae.errors import InputError
from dwivae.physics.phantom import S0, make_phantom
from dwivae.physics.tensorfit import fa, fit_tensor

SHAPE = (24, 24, 12)


def test_clean_phantom_fits_back_to_its_tensors(acq):
    phantom = make_phantom(acq, shape=SHAPE, snr=20, noise="gaussian")
    labels = phantom.labels
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    single = (labels >= 1) & (labels <= 3)
    D, s0 = fit_tensor(phantom.clean[single], acq.bvals, acq.bvecs)
    np.testing.assert_allclose(D, phantom.tensors[single], atol=1e-7)
    assert np.abs(fa(D) - fa(phantom.tensors[single])).max() < 1e-3
    np.testing.assert_allclose(s0[labels[single] == 3], S0["WM"], rtol=1e-4)
    wm = fa(phantom.tensors[labels == 3])
    assert 0.65 < wm.min() and wm.max() < 0.75  # white matter FA 0.71
    assert fa(phantom.tensors[labels == 1]).max() < 1e-3  # CSF isotropic
    fibres = phantom.fibres[labels == 4]
    np.testing.assert_allclose(np.linalg.norm(fibres, axis=-1), 1, atol=1e-5)
    np.testing.assert_allclose(np.sum(fibres[:, 0] * fibres[:, 1], axis=-1), 0, atol=1e-5)  # 90 degree crossing


def test_gaussian_noise_has_the_requested_sigma(acq):
    phantom = make_phantom(acq, shape=(32, 32, 16), snr=25, noise="gaussian", seed=1)
    flat = phantom.labels == 3  # white matter b0: a flat region at S0 = 1000
    residual = (phantom.noisy - phantom.clean)[flat][:, acq.b0_mask]
    assert phantom.sigma == pytest.approx(1000 / 25)
    assert residual.std() == pytest.approx(phantom.sigma, rel=0.03)
    assert abs(residual.mean()) < 0.05 * phantom.sigma


@pytest.mark.parametrize("coils", [1, 4])
def test_magnitude_noise_floor_in_the_background(acq, coils):
    noise = "rician" if coils == 1 else "nc-chi"
    phantom = make_phantom(acq, shape=(32, 32, 16), snr=10, noise=noise, coils=coils, seed=2)
    background = phantom.noisy[phantom.labels == 0]
    # the magnitude of pure noise over n channels: mean sigma sqrt(2) Gamma(n + 1/2) / Gamma(n)
    expected = phantom.sigma * math.sqrt(2) * math.gamma(coils + 0.5) / math.gamma(coils)
    assert background.mean() == pytest.approx(expected, rel=0.02)


def test_seed_fixes_the_noise(acq):
    a, b, c = (make_phantom(acq, shape=SHAPE, seed=s).noisy for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kwargs, message", [
    ({"snr": 0}, "SNR must be positive"),
    ({"noise": "laplace"}, "unknown noise"),
    ({"noise": "rician", "coils": 4}, "with --noise nc-chi"),
    ({"shape": (4, 30, 30)}, "at least 8 voxels"),
])
def test_bad_settings(acq, kwargs, message):
    with pytest.raises(InputError, match=message):
        make_phantom(acq, **{"shape": SHAPE, **kwargs})


def test_phantom_command(tmp_path, capsys):
    out = tmp_path / "ph"
    argv = ["phantom", "--protocol", "seed32", "--shape", *map(str, SHAPE), "--snr", "30", "--noise", "nc-chi",
            "--coils", "2", "--out", str(out)]
    assert main(argv) == 0
    info = json.loads((out / "phantom.json").read_text())
    assert info["snr"] == 30 and info["coils"] == 2 and info["sigma"] == pytest.approx(1000 / 30)
    dwi = nib.load(out / "dwi.nii.gz")
    assert dwi.shape == (*SHAPE, 32) and nib.load(out / "fibres.nii.gz").shape == (*SHAPE, 6)
    np.testing.assert_allclose(dwi.header.get_zooms()[:3], (2, 2, 2))
    assert np.loadtxt(out / "dwi.bval").size == 32
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err


def test_realistic_phantom_has_every_tissue_partial_volume_and_both_crossings():
    from dwivae.physics.acquisition import seed32
    from dwivae.physics.phantom import make_realistic_phantom

    acq = seed32()
    a = make_realistic_phantom(acq, shape=(32, 32, 16), snr=20, seed=3)
    b = make_realistic_phantom(acq, shape=(32, 32, 16), snr=20, seed=3)
    np.testing.assert_array_equal(a.noisy, b.noisy)  # the seed fixes tissue and noise
    assert set(np.unique(a.labels)) == {0, 1, 2, 3, 4}
    crossing = a.labels == 4
    angles = np.degrees(np.arccos(np.abs(np.sum(a.fibres[crossing, 0] * a.fibres[crossing, 1], axis=-1))))
    assert np.any(np.abs(angles - 90) < 1) and np.any(np.abs(angles - 60) < 1)
    s0 = a.clean[..., acq.b0_mask].mean(axis=-1)
    assert np.any((s0 > 1050) & (s0 < 1250) & (a.labels > 0))  # WM/GM mixtures at boundaries
    wm = a.clean[a.labels == 3][:, ~acq.b0_mask]
    assert np.std(wm / wm.mean(axis=1, keepdims=True), axis=0).mean() > 0.05  # voxels differ
