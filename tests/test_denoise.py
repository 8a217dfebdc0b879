from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from conftest import real_sample

from dwivae.apply.denoise import denoise
from dwivae.apply.denoise_file import denoise_file
from dwivae.apply.estimate import denoise_signals
from dwivae.errors import InputError
from dwivae.physics.acquisition import load_acquisition

SAMPLES = ["small_64D", "mrtrix_msmt_dwi", "mrtrix_b3000_dwi"]


@pytest.mark.parametrize("name", SAMPLES)
def test_denoise_file_on_real_data(tmp_path, trained_for, name):
    dwi, bval, bvec = real_sample(name)
    acq = load_acquisition(bval, bvec)
    model = trained_for(name)
    paths, stats = denoise_file(dwi, acq, model, tmp_path / "out.nii.gz")
    src = nib.load(dwi)
    data = np.asarray(src.dataobj, dtype=np.float32)
    out = nib.load(paths["denoised"])
    res = nib.load(paths["residual"])
    assert out.shape == src.shape and out.get_data_dtype() == np.float32
    np.testing.assert_allclose(out.affine, src.affine)
    np.testing.assert_array_equal(out.header.get_zooms()[:3], src.header.get_zooms()[:3])
    denoised = np.asarray(out.dataobj)
    np.testing.assert_array_equal(np.asarray(res.dataobj), data - denoised)  # residual = input - output
    np.testing.assert_array_equal(denoised[..., acq.b0_mask], data[..., acq.b0_mask])  # b0 kept
    changed = np.any(denoised != data, axis=-1)
    assert stats.denoised > 0 and changed.sum() == stats.denoised
    assert stats.outside_mask == changed.size - stats.denoised - stats.skipped
    # deterministic: a second run gives the same bytes
    again, _ = denoise_file(dwi, acq, model, tmp_path / "again.nii.gz")
    np.testing.assert_array_equal(np.asarray(nib.load(again["denoised"]).dataobj), denoised)


def test_in_memory_api_mask_and_invalid_voxels(trained_for):
    dwi, bval, bvec = real_sample("small_64D")
    acq = load_acquisition(bval, bvec)
    data = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    data[0, 0, 0] = np.nan
    data[1, 1, 1, acq.b0_mask] = 0.0
    mask = np.zeros(data.shape[:3], bool)
    mask[:5] = True
    out = denoise(data, acq, trained_for("small_64D"), mask=mask)
    np.testing.assert_array_equal(out[5:], data[5:])  # outside the mask: untouched
    assert np.all(np.isnan(out[0, 0, 0])) and np.array_equal(out[1, 1, 1], data[1, 1, 1])
    assert np.any(out[2:5, 2:8, 2:8] != data[2:5, 2:8, 2:8])


@pytest.mark.parametrize("name", ["small_64D", "mrtrix_msmt_dwi"])
def test_compiled_and_torch_forward_passes_agree(trained_for, name, monkeypatch):
    dwi, bval, bvec = real_sample(name)
    acq = load_acquisition(bval, bvec)
    data = np.asarray(nib.load(dwi).dataobj, dtype=np.float32)
    model = trained_for(name)
    compiled = denoise(data, acq, model)
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    plain = denoise(data, acq, model)
    assert np.any(plain != data)
    np.testing.assert_allclose(compiled, plain, rtol=1e-5, atol=1e-5 * float(np.abs(data).max()))


def test_posterior_std_needs_vae_and_is_positive(trained_for):
    dwi, bval, bvec = real_sample("small_64D")
    acq = load_acquisition(bval, bvec)
    data = np.asarray(nib.load(dwi).dataobj, dtype=np.float32).reshape(-1, acq.n_volumes)[:50]
    _, valid, std = denoise_signals(data, acq, trained_for("small_64D"), posterior_samples=4)
    assert np.all(std[valid][:, ~acq.b0_mask] >= 0) and std[valid].max() > 0
    with pytest.raises(InputError, match="need a VAE"):
        denoise_signals(data, acq, trained_for("small_64D", "dae"), posterior_samples=4)


def test_protocol_mismatch_names_the_fix(tmp_path, trained_for):
    dwi, bval, bvec = real_sample("small_64D")
    model = trained_for("mrtrix_b3000_dwi")
    with pytest.raises(InputError, match="trained for another protocol .* --train"):
        denoise_file(dwi, load_acquisition(bval, bvec), model, tmp_path / "o.nii.gz")


@pytest.mark.skipif(shutil.which("mrinfo") is None, reason="MRtrix3 is not installed")
def test_output_reads_in_mrtrix(tmp_path, trained_for):
    dwi, bval, bvec = real_sample("small_64D")
    paths, _ = denoise_file(dwi, load_acquisition(bval, bvec), trained_for("small_64D"), tmp_path / "o.nii")
    info = subprocess.run(["mrinfo", "-size", str(paths["denoised"])], capture_output=True, text=True, check=True)
    assert info.stdout.split() == ["10", "10", "10", "65"]
    subprocess.run(["dwi2tensor", "-quiet", "-fslgrad", str(bvec), str(bval), str(paths["denoised"]),
                    str(tmp_path / "dt.mif")], check=True)
    assert (tmp_path / "dt.mif").stat().st_size > 0


def test_output_fits_in_dipy(tmp_path, trained_for):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel
    dwi, bval, bvec = real_sample("small_64D")
    acq = load_acquisition(bval, bvec)
    paths, _ = denoise_file(dwi, acq, trained_for("small_64D"), tmp_path / "o.nii.gz")
    data = np.asarray(nib.load(paths["denoised"]).dataobj)
    fit = TensorModel(gradient_table(acq.bvals, bvecs=acq.bvecs)).fit(data[4:6, 4:6, 4:6])
    assert np.all(np.isfinite(fit.fa))


def test_code_noise_scale_measures_what_noise_does_to_the_codes(trained_for):
    from dwivae.apply.estimate import code_noise_scale, encode_signals
    dwi, bval, bvec = real_sample("mrtrix_msmt_dwi")
    acq = load_acquisition(bval, bvec)
    model = trained_for("mrtrix_msmt_dwi")
    signals = np.asarray(nib.load(dwi).dataobj, dtype=np.float32).reshape(-1, acq.n_volumes)
    codes, s0, valid = encode_signals(signals, acq, model)
    codes, s0 = codes[valid], s0[valid]
    scales = [code_noise_scale(codes, s0, model, sigma) for sigma in (1.0, 20.0, 80.0)]
    assert scales[0] < scales[1] < scales[2] and scales[0] < 0.1 * scales[2]
    assert code_noise_scale(codes, s0, model, 20.0) == scales[1]  # seeded
    assert code_noise_scale(codes, s0, model, 20.0, max_voxels=50) != scales[1]  # a subset of voxels
