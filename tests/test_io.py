from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from dipy.data import get_fnames

from dwivae.errors import InputError
from dwivae.io import (
    NiftiWriter,
    find_gradient_files,
    iter_slabs,
    load_dwi,
    load_mask,
    output_paths,
    sidecar_path,
    write_json_atomic,
    write_nifti_atomic,
)

SHAPE = (4, 5, 7, 3)


def make_affine() -> np.ndarray:
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.5]
    return affine


def write_image(path, data: np.ndarray, *, affine: np.ndarray | None = None,
                slope: float | None = None, inter: float | None = None) -> nib.Nifti1Image:
    """Save ``data`` with a qform (code 1) 1 mm off the sform (code 4) and TR 2.5 s; with a slope, ``data``
    is stored raw."""
    img = nib.Nifti1Image(data, make_affine() if affine is None else affine)
    qform = img.affine.copy()
    qform[:3, 3] += 1.0
    img.set_qform(qform, code=1)
    img.set_sform(img.affine, code=4)
    img.header.set_xyzt_units("mm", "sec")
    if data.ndim == 4:
        img.header.set_zooms(img.header.get_zooms()[:3] + (2.5,))
    img.header["descrip"] = b"test image"
    nib.save(img, path)
    if slope is not None:  # nibabel picks its own scaling on save: patch the header of the .nii instead
        header = img.header.copy()
        header["scl_slope"], header["scl_inter"] = slope, inter
        with open(path, "r+b") as f:
            header.write_to(f)
    return nib.load(path)


@pytest.fixture
def dwi(tmp_path) -> nib.Nifti1Image:
    data = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    write_image(tmp_path / "dwi.nii.gz", data)
    return load_dwi(tmp_path / "dwi.nii.gz")


def reassemble(img: nib.Nifti1Image, slab: int) -> np.ndarray:
    parts = [data for _, _, data in iter_slabs(img, slab=slab)]
    assert all(p.dtype == np.float32 for p in parts)
    return np.concatenate(parts, axis=2)


@pytest.mark.parametrize("slab", [1, 3, 7, 100])
def test_slabs_reassemble_the_data(dwi, slab):
    np.testing.assert_array_equal(reassemble(dwi, slab), dwi.get_fdata(dtype=np.float32))


def test_slabs_apply_scaling_to_int16(tmp_path):
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 50
    path = tmp_path / "scaled.nii"
    write_image(path, raw, slope=2.0, inter=10.0)
    img = load_dwi(path)
    assert img.get_data_dtype() == np.int16 and (img.dataobj.slope, img.dataobj.inter) == (2.0, 10.0)
    np.testing.assert_array_equal(reassemble(img, 3), raw * 2.0 + 10.0)


def test_slabs_of_the_dipy_sample():
    img = load_dwi(get_fnames(name="small_64D")[0])
    np.testing.assert_array_equal(reassemble(img, 4), img.get_fdata(dtype=np.float32))


def test_slab_must_be_positive(dwi):
    with pytest.raises(InputError, match="at least 1 slice"):
        next(iter_slabs(dwi, slab=0))


def test_truncated_file_is_reported(tmp_path):
    path = tmp_path / "cut.nii"
    write_image(path, np.ones(SHAPE, dtype=np.float32))
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(InputError, match="truncated or corrupt"):
        list(iter_slabs(load_dwi(path)))


def test_load_dwi_errors(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz does not exist"):
        load_dwi(tmp_path / "missing.nii.gz")
    (tmp_path / "text.nii").write_text("not an image")
    with pytest.raises(InputError, match="text.nii could not be read as NIfTI"):
        load_dwi(tmp_path / "text.nii")
    write_image(tmp_path / "t1.nii.gz", np.zeros(SHAPE[:3], dtype=np.float32))
    with pytest.raises(InputError, match=r"t1.nii.gz is 3D \(4, 5, 7\); a diffusion series needs a 4th axis"):
        load_dwi(tmp_path / "t1.nii.gz")


def assert_same_geometry(out: nib.Nifti1Image, like: nib.Nifti1Image) -> None:
    np.testing.assert_allclose(out.affine, like.affine)
    for name in ("qform_code", "sform_code", "xyzt_units", "descrip"):
        assert out.header[name] == like.header[name], name
    np.testing.assert_allclose(out.header.get_qform(), like.header.get_qform())
    np.testing.assert_allclose(out.header.get_sform(), like.header.get_sform())
    assert out.header.get_zooms() == like.header.get_zooms()[:out.ndim]
    assert out.get_data_dtype() == np.float32
    assert (out.dataobj.slope, out.dataobj.inter) == (1.0, 0.0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_written_output_keeps_the_geometry(tmp_path, suffix):
    """Also from a scaled int16 input: the float32 output must not inherit its slope and intercept."""
    raw = np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE)
    like = write_image(tmp_path / "in.nii", raw, slope=2.0, inter=10.0)
    data = np.random.default_rng(1).random(SHAPE) * 1000
    path = write_nifti_atomic(tmp_path / f"out{suffix}", data, like)
    out = nib.load(path)
    assert out.shape == SHAPE
    assert_same_geometry(out, like)
    assert out.header.get_zooms()[3] == 2.5
    np.testing.assert_array_equal(out.get_fdata(), data.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii", f"out{suffix}"]


def test_existing_output_needs_force(tmp_path, dwi):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"old")
    with pytest.raises(InputError, match="out.nii.gz exists; pass --force to overwrite it"):
        write_nifti_atomic(target, np.ones(SHAPE), dwi)
    assert target.read_bytes() == b"old"
    write_nifti_atomic(target, np.ones(SHAPE), dwi, force=True)
    np.testing.assert_array_equal(nib.load(target).get_fdata(), 1.0)


def test_output_onto_the_input_is_refused(tmp_path, dwi):
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="would overwrite the input .*dwi.nii.gz: choose another --out"):
        write_nifti_atomic(tmp_path / "sub" / ".." / "dwi.nii.gz", np.ones(SHAPE), dwi, force=True)
    with pytest.raises(InputError, match="would overwrite the input"):
        NiftiWriter(tmp_path / "dwi.nii.gz", SHAPE, dwi, force=True)


def test_failure_mid_write_leaves_nothing(tmp_path, dwi, monkeypatch):
    def fail(self, filename):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib.Nifti1Image, "to_filename", fail)
    with pytest.raises(OSError, match="disk full"):
        write_nifti_atomic(tmp_path / "out.nii.gz", np.ones(SHAPE), dwi)
    with pytest.raises(OSError, match="disk full"), NiftiWriter(tmp_path / "slabs.nii.gz", SHAPE, dwi) as writer:
        writer.write_slab(0, 7, np.ones(SHAPE))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwi.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_writer_error_in_block_leaves_nothing(tmp_path, dwi, suffix):
    with pytest.raises(KeyboardInterrupt), NiftiWriter(tmp_path / f"out{suffix}", SHAPE, dwi) as writer:
        writer.write_slab(0, 3, np.ones((4, 5, 3, 3)))
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwi.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("shape", [SHAPE, SHAPE[:3]])
def test_writer_round_trip(tmp_path, dwi, suffix, shape):
    expected = np.zeros(shape, dtype=np.float32)
    with NiftiWriter(tmp_path / f"out{suffix}", shape, dwi) as writer:
        for z0, z1, data in iter_slabs(dwi, slab=3):
            slab = data * 3 - 1 if len(shape) == 4 else data.mean(axis=3)
            writer.write_slab(z0, z1, slab)
            expected[:, :, z0:z1] = slab
        assert not writer.path.exists()
    out = nib.load(tmp_path / f"out{suffix}")
    assert out.shape == shape
    assert_same_geometry(out, dwi)
    np.testing.assert_array_equal(out.get_fdata(dtype=np.float32), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dwi.nii.gz", f"out{suffix}"]


def test_writer_rejects_misfit_slabs(tmp_path, dwi):
    with pytest.raises(ValueError, match="does not start with the image's grid"):
        NiftiWriter(tmp_path / "out.nii", (4, 5, 6, 3), dwi)
    with pytest.raises(ValueError, match="does not fit"), NiftiWriter(tmp_path / "out.nii", SHAPE, dwi) as writer:
        writer.write_slab(6, 8, np.ones((4, 5, 2, 3)))
    assert not (tmp_path / "out.nii").exists()


def test_mask_checks(tmp_path, dwi):
    inside = np.zeros(SHAPE[:3], dtype=np.uint8)
    inside[1:3, 1:4, 2:5] = 1
    write_image(tmp_path / "mask.nii.gz", inside)
    np.testing.assert_array_equal(load_mask(tmp_path / "mask.nii.gz", dwi), inside.astype(bool))
    write_image(tmp_path / "mask4d.nii", inside[..., None])
    np.testing.assert_array_equal(load_mask(tmp_path / "mask4d.nii", dwi), inside.astype(bool))

    write_image(tmp_path / "small.nii.gz", inside[:, :, :6])
    with pytest.raises(InputError, match=r"small.nii.gz has shape \(4, 5, 6\) but the image has \(4, 5, 7\): "
                                         "give a mask of the image's grid"):
        load_mask(tmp_path / "small.nii.gz", dwi)
    shifted = make_affine()
    shifted[0, 3] += 1.0
    write_image(tmp_path / "shifted.nii.gz", inside, affine=shifted)
    with pytest.raises(InputError, match="shifted.nii.gz has a different affine .* up to 1 mm"):
        load_mask(tmp_path / "shifted.nii.gz", dwi)
    shifted[0, 3] -= 0.9995  # within tolerance
    write_image(tmp_path / "close.nii.gz", inside, affine=shifted)
    assert load_mask(tmp_path / "close.nii.gz", dwi).sum() == inside.sum()
    write_image(tmp_path / "empty.nii.gz", np.zeros_like(inside))
    with pytest.raises(InputError, match="empty.nii.gz has no voxel above 0"):
        load_mask(tmp_path / "empty.nii.gz", dwi)


def test_find_gradient_files(tmp_path):
    dwi = tmp_path / "sub-01_dwi.nii.gz"
    dwi.touch()
    with pytest.raises(InputError, match="no sub-01_dwi.bval or sub-01_dwi.bvec next to sub-01_dwi.nii.gz .*"
                                         "pass --bvals and --bvecs"):
        find_gradient_files(dwi)
    (tmp_path / "sub-01_dwi.bval").write_text("0 1000\n")
    with pytest.raises(InputError, match="no sub-01_dwi.bvec next to"):
        find_gradient_files(dwi)
    (tmp_path / "sub-01_dwi.bvec").write_text("0 1\n0 0\n0 0\n")
    assert find_gradient_files(dwi) == (tmp_path / "sub-01_dwi.bval", tmp_path / "sub-01_dwi.bvec")
    nifti, bval, bvec = get_fnames(name="small_64D")
    assert find_gradient_files(nifti) == (bval, bvec)


def test_output_and_sidecar_names(tmp_path):
    assert output_paths("dwi_vae.nii.gz", "_residual").name == "dwi_vae_residual.nii.gz"
    assert output_paths(tmp_path / "dwi.vae.nii", "_sigma") == tmp_path / "dwi.vae_sigma.nii"
    assert sidecar_path(tmp_path / "dwi_vae.nii.gz") == tmp_path / "dwi_vae.json"
    assert sidecar_path("a/b.nii") == sidecar_path("a/b.nii.gz")
    with pytest.raises(InputError, match="out.mgz is not named like a NIfTI file"):
        output_paths("out.mgz", "_residual")


def test_json_sidecar(tmp_path):
    path = tmp_path / "dwi_vae.json"
    write_json_atomic(path, {"sigma": np.float32(2.5), "shape": np.array(SHAPE)})
    assert json.loads(path.read_text()) == {"sigma": 2.5, "shape": list(SHAPE)}
    with pytest.raises(InputError, match="exists; pass --force"):
        write_json_atomic(path, {})
    write_json_atomic(path, {"a": 1}, force=True)
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["dwi_vae.json"]
