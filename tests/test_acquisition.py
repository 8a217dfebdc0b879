from __future__ import annotations

import numpy as np
import pytest
from conftest import write_gradients

from dwivae.errors import InputError
from dwivae.physics.acquisition import Acquisition, builtin_protocol, from_json, load_acquisition, seed32

SHARED = "../shared/data"


def test_seed32_layout():
    acq = seed32()
    assert acq.n_volumes == 32
    assert acq.bvals[0] == acq.bvals[-1] == 50
    assert np.all(acq.bvals[1:-1] == 1000)
    assert acq.b0_mask.sum() == 2
    norms = np.linalg.norm(acq.bvecs[1:-1], axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-9)
    cos = np.abs(acq.bvecs[1:-1] @ acq.bvecs[1:-1].T)
    np.fill_diagonal(cos, 0)
    assert np.degrees(np.arccos(cos.max())) > 20  # well spread: no two directions within 20 degrees


@pytest.mark.parametrize("transpose", [True, False])
def test_load_either_orientation(tmp_path, transpose):
    acq = seed32()
    bval, bvec = write_gradients(tmp_path, acq.bvals, acq.bvecs, transpose=transpose)
    loaded = load_acquisition(bval, bvec)
    np.testing.assert_allclose(loaded.bvecs, acq.bvecs, atol=1e-6)
    assert loaded.fingerprint() == acq.fingerprint()


def test_shells_with_tolerance_and_fingerprint_invariance():
    rng = np.random.default_rng(0)
    dirs = rng.standard_normal((6, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    bvals = np.array([0, 3000, 2950, 3000, 5, 1000, 1010])
    bvecs = np.vstack([[0, 0, 0], dirs[:3], [0, 0, 0], dirs[3:5]])
    acq = Acquisition(bvals, bvecs)
    np.testing.assert_array_equal(acq.shells(), [2, 1005, 3000])
    np.testing.assert_array_equal(acq.shell_labels(), [0, 2, 2, 2, 0, 1, 1])
    flipped = Acquisition(bvals + np.array([0, 10, 0, -20, 0, 0, 0]), bvecs * np.array([1, -1, 1, 1, 1, -1, 1])[:, None])
    assert flipped.fingerprint() == acq.fingerprint()
    assert acq.mismatch(flipped) is None
    other = Acquisition(np.array([0, 2000, 2950, 3000, 5, 1000, 1010]), bvecs)
    assert other.fingerprint() != acq.fingerprint()
    assert "volume 1 has b=2000" in acq.mismatch(other)


def test_mismatch_reports_count_and_direction():
    acq = seed32()
    assert "has 31 volumes" in acq.mismatch(Acquisition(acq.bvals[:-1], acq.bvecs[:-1], name="short"))
    rotated = acq.bvecs.copy()
    rotated[5] = np.cross(rotated[5], [0, 0, 1])
    rotated[5] /= np.linalg.norm(rotated[5])
    assert "volume 5 direction differs" in acq.mismatch(Acquisition(acq.bvals, rotated))


def test_nan_direction_of_a_b0_means_none():
    acq = Acquisition(np.array([0, 1000]), np.array([[np.nan] * 3, [0, 0, 1]]))
    np.testing.assert_array_equal(acq.bvecs[0], 0)


def test_json_round_trip():
    acq = seed32()
    back = from_json(acq.to_json())
    assert back.fingerprint() == acq.fingerprint() and back.name == "seed32"


def test_real_files_with_interleaved_b0_and_jitter():
    acq = load_acquisition(f"{SHARED}/mrtrix_b3000_dwi.bval", f"{SHARED}/mrtrix_b3000_dwi.bvec")
    assert acq.n_volumes == 68
    assert acq.b0_mask.sum() == 8
    assert list(acq.shells()) == [0, 3000]
    msmt = load_acquisition(f"{SHARED}/mrtrix_msmt_dwi.bval", f"{SHARED}/mrtrix_msmt_dwi.bvec")
    assert msmt.b0_mask.sum() == 6 and len(msmt.shells()) == 4


@pytest.mark.parametrize("bvals, bvecs, message", [
    (np.array([0, 1000, 1000]), np.eye(3)[:2], "2 directions but the bval file has 3"),
    (np.array([0, 1000, np.nan]), np.eye(3), "b-values must be finite"),
    (np.array([0, 1000, 1000]), np.array([[0, 0, 0], [1, 0, 0], [np.nan, 0, 0]]), "volume 2 has b=1000 but a non-finite"),
    (np.array([0, 1000, 1000]), np.array([[0, 0, 0], [1, 0, 0], [0, 0, 0]]), "volume 2 has b=1000 but a direction of length 0"),
    (np.array([0, -5, 1000]), np.eye(3), ">= 0"),
])
def test_bad_gradients(tmp_path, bvals, bvecs, message):
    bval, bvec = write_gradients(tmp_path, bvals, bvecs)
    with pytest.raises(InputError, match=message):
        load_acquisition(bval, bvec)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_acquisition(tmp_path / "nope.bval", tmp_path / "nope.bvec")
    (tmp_path / "bad.bval").write_text("0 1000 abc\n")
    (tmp_path / "bad.bvec").write_text("1 0 0\n")
    with pytest.raises(InputError, match="not a table of numbers"):
        load_acquisition(tmp_path / "bad.bval", tmp_path / "bad.bvec")


def test_unknown_builtin():
    with pytest.raises(InputError, match="unknown protocol 'seed99'"):
        builtin_protocol("seed99")
