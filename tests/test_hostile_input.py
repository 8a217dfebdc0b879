"""Nothing lost, nothing run: outputs, gradient files, headers and models under hostile input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_TRAINING, write_gradients
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dwivae.apply.mask import auto_mask
from dwivae.cli import main
from dwivae.learn.checkpoint import save_model
from dwivae.learn.training import train
from dwivae.physics.acquisition import Acquisition, load_acquisition, seed32

SHAPE = (10, 10, 6)


@pytest.fixture(scope="module")
def model32():
    return train(seed32(), arch="vae", seed=0, config=TINY_TRAINING)


@pytest.fixture
def scan(tmp_path, model32):
    """A small seed32 series in BIDS form (image, gradient files, the scanner's JSON sidecar) and a model."""
    acq = seed32()
    rng = np.random.default_rng(0)
    signal_ = 1000 * np.exp(-acq.bvals * 1e-3)
    data = (signal_ * rng.uniform(0.5, 1.5, SHAPE)[..., None] + rng.normal(0, 20, (*SHAPE, 32))).astype(np.float32)
    bids = tmp_path / "bids"
    bids.mkdir()
    dwi = bids / "sub-01_dwi.nii.gz"
    nib.save(nib.Nifti1Image(data, np.eye(4)), dwi)
    np.savetxt(bids / "sub-01_dwi.bval", acq.bvals[None], fmt="%g")
    np.savetxt(bids / "sub-01_dwi.bvec", acq.bvecs.T, fmt="%.6f")
    (bids / "sub-01_dwi.json").write_text(json.dumps({"PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}))
    model = save_model(model32, tmp_path / "models" / "m")
    return dwi, model


def _fails(capsys, argv, message, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    return err[0]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_inputs_bids_sidecar_is_never_overwritten(tmp_path, capsys, scan):
    dwi, model = scan
    before = _files(tmp_path)
    for force in ([], ["--force"]):
        _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(dwi.with_name("sub-01_dwi.nii")),
                        "--quiet", *force], "would overwrite the input")
        _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(model / "model.nii.gz"),
                        "--quiet", *force], "would overwrite the input")
    assert _files(tmp_path) == before


def test_outputs_sharing_a_sidecar_need_force(tmp_path, capsys, scan):
    dwi, model = scan
    assert main(["denoise", str(dwi), "--model", str(model), "--out", str(tmp_path / "x.nii.gz"), "--quiet"]) == 0
    sidecar = (tmp_path / "x.json").read_bytes()
    _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(tmp_path / "x.nii"), "--quiet"],
           "x.json exists; pass --force")
    assert (tmp_path / "x.json").read_bytes() == sidecar and not (tmp_path / "x.nii").exists()


def test_an_existing_directory_as_output_is_refused_before_anything_is_written(tmp_path, capsys, scan):
    dwi, model = scan
    folder = tmp_path / "outdir.nii.gz"
    folder.mkdir()
    _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(folder), "--force", "--quiet"],
           "is a directory")
    assert not list(folder.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bids", "models", "outdir.nii.gz"]


def test_an_output_in_a_directory_that_cannot_be_written_is_refused_up_front(tmp_path, capsys, scan, monkeypatch):
    dwi, model = scan
    import tempfile

    real = tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(tmp_path / "locked" / "o.nii.gz"),
                    "--quiet"], "cannot write in")


def test_a_failure_in_the_middle_leaves_no_output(tmp_path, capsys, scan, monkeypatch):
    dwi, model = scan
    from dwivae import io

    def broken(self, z0, z1, data):
        if self._staged.name.startswith(".o_residual"):
            raise OSError(28, "No space left on device")
        return original(self, z0, z1, data)

    original = io.NiftiWriter.write_slab
    monkeypatch.setattr(io.NiftiWriter, "write_slab", broken)
    _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(tmp_path / "o.nii.gz"), "--quiet"],
           "No space left")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))]


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


def test_ctrl_c_while_the_output_is_compressed_leaves_nothing(tmp_path, model32):
    acq = seed32()
    rng = np.random.default_rng(1)
    data = rng.uniform(100, 1000, (96, 96, 40, 32)).astype(np.float32)  # random values compress slowly
    dwi = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), dwi)
    bval, bvec = write_gradients(tmp_path, acq.bvals, acq.bvecs)
    model = save_model(model32, tmp_path / "m")
    out = tmp_path / "out" / "dn.nii.gz"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "dwivae.cli", "denoise", str(dwi), "--bvals", str(bval),
                             "--bvecs", str(bvec), "--model", str(model), "--out", str(out), "--mask", "none",
                             "--quiet"], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    # the .nii.gz temporaries are created when the finished series is compressed, after the compute
    compressing = _wait_for(lambda: any(p.name.endswith(".tmp.nii.gz") for p in out.parent.iterdir()), 120)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert compressing, "the run ended before its outputs were compressed"
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("argv, message", [
    (["--uncertainty", "-2"], "argument --uncertainty: must be at least 0"),
    (["--threads", "0"], "argument --threads: must be at least 1"),
    (["--threads", "-3"], "argument --threads: must be at least 1"),
    (["--threads", "two"], "'two' is not a whole number"),
    (["--bias-correct", "--sigma", "nan"], "argument --sigma"),
    (["--spatial", "-1"], "argument --spatial"),
    (["--coils", "0", "--bias-correct"], "argument --coils"),
])
def test_numeric_flags_are_range_checked(tmp_path, capsys, scan, argv, message):
    dwi, model = scan
    _fails(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(tmp_path / "o.nii.gz"), *argv],
           message)
    assert not list(tmp_path.glob("o*"))


def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused(tmp_path, capsys, scan):
    import gzip
    import struct

    dwi, model = scan
    raw = bytearray(nib.Nifti1Image(np.zeros((2, 2, 2, 32), np.float32), np.eye(4)).to_bytes())
    raw[42:48] = struct.pack("<3h", 30000, 30000, 30000)  # dim[1:4] of the NIfTI-1 header
    for suffix, blob in ((".nii", bytes(raw)), (".nii.gz", gzip.compress(bytes(raw)))):
        path = tmp_path / f"huge{suffix}"
        path.write_bytes(blob)
        _fails(capsys, ["denoise", str(path), "--bvals", str(dwi.with_suffix("").with_suffix(".bval")),
                        "--bvecs", str(dwi.with_suffix("").with_suffix(".bvec")), "--model", str(model),
                        "--out", str(tmp_path / "o.nii.gz"), "--quiet"], "more than its")


def test_gradient_file_problems_name_the_file_that_is_wrong(tmp_path, capsys, scan):
    dwi, model = scan
    acq = seed32()
    out = ["--model", str(model), "--out", str(tmp_path / "o.nii.gz"), "--quiet"]
    bval = tmp_path / "g.bval"
    np.savetxt(bval, acq.bvals[None], fmt="%g")
    bvec = tmp_path / "g.bvec"
    np.savetxt(bvec, acq.bvecs.T[:, :-1], fmt="%.6f")
    _fails(capsys, ["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), *out], "g.bvec: the bvec file")
    bad = acq.bvecs.copy()
    bad[3] *= 3
    np.savetxt(bvec, bad.T, fmt="%.6f")
    _fails(capsys, ["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), *out], "g.bvec: volume 3")
    empty = tmp_path / "empty.bval"
    empty.write_text("")
    _fails(capsys, ["denoise", str(dwi), "--bvals", str(empty), "--bvecs", str(bvec), *out], "is empty")
    _fails(capsys, ["denoise", str(dwi), "--bvals", str(tmp_path), "--bvecs", str(bvec), *out], "is a directory")
    short = tmp_path / "short.bval"
    np.savetxt(short, acq.bvals[None, :-1], fmt="%g")
    np.savetxt(bvec, acq.bvecs.T[:, :-1], fmt="%.6f")
    _fails(capsys, ["denoise", str(dwi), "--bvals", str(short), "--bvecs", str(bvec), *out],
           "sub-01_dwi.nii.gz has 32 volumes but short.bval and g.bvec have 31")


def test_a_protocol_mismatch_says_which_side_is_the_model(tmp_path, capsys, scan):
    dwi, model = scan
    acq = seed32()
    rotated = acq.bvecs.copy()
    rotated[5] = [rotated[5][1], -rotated[5][0], rotated[5][2]]
    bval, bvec = write_gradients(tmp_path, acq.bvals, rotated)
    _fails(capsys, ["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", str(model),
                    "--out", str(tmp_path / "o.nii.gz"), "--quiet"], "between the data's (dwi.bval) and the model's")


def test_a_ramp_of_b_values_is_not_one_shell():
    ramp = np.arange(1000, 3001, 32.0)
    bvecs = np.tile([1.0, 0, 0], (len(ramp), 1))
    chained = Acquisition(ramp, bvecs)
    assert (np.ptp(chained.bvals[chained.shell_labels() == 0]) <= 100)
    for s in range(chained.shell_labels().max() + 1):
        assert np.ptp(chained.bvals[chained.shell_labels() == s]) <= chained.shell_tolerance
    flat = Acquisition(np.full(len(ramp), 2000.0), bvecs)
    assert chained.fingerprint() != flat.fingerprint()
    jitter = Acquisition(np.array([0, 2950, 3000, 3005, 1000, 1010]), np.tile([0, 1.0, 0], (6, 1)))
    np.testing.assert_array_equal(jitter.shells(), [0, 1005, 3000])


def test_non_finite_voxels_neither_move_the_auto_mask_nor_go_uncounted(tmp_path, capsys, scan):
    from dipy.segment.mask import median_otsu

    dwi, model = scan
    img = nib.load(dwi)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[2:4, 2:4, 1] = np.nan
    data[7, 7, 3, 0] = np.inf
    path = tmp_path / "nan.nii.gz"
    nib.save(nib.Nifti1Image(data, img.affine), path)
    acq = load_acquisition(dwi.with_suffix("").with_suffix(".bval"), dwi.with_suffix("").with_suffix(".bvec"))
    b0 = data[..., acq.b0_mask].mean(axis=-1)
    _, expected = median_otsu(np.where(np.isfinite(b0), b0, 0), median_radius=2, numpass=1)
    np.testing.assert_array_equal(auto_mask(nib.load(path), acq), expected)
    out = tmp_path / "o.nii.gz"
    assert main(["denoise", str(path), "--bvals", str(dwi.with_suffix("").with_suffix(".bval")),
                 "--bvecs", str(dwi.with_suffix("").with_suffix(".bvec")), "--model", str(model),
                 "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "(5 voxels of the image hold non-finite values)" in captured.out and captured.err == ""
    assert json.loads((tmp_path / "o.json").read_text())["VoxelsNonFinite"] == 5


@pytest.mark.parametrize("fill", [0.0, np.nan])
def test_all_zero_or_nan_images_give_one_line(tmp_path, capsys, scan, fill):
    dwi, model = scan
    path = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.full((*SHAPE, 32), fill, np.float32), np.eye(4)), path)
    bval, bvec = dwi.with_suffix("").with_suffix(".bval"), dwi.with_suffix("").with_suffix(".bvec")
    code = main(["denoise", str(path), "--bvals", str(bval), "--bvecs", str(bvec), "--model", str(model),
                 "--out", str(tmp_path / "o.nii.gz"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not list(tmp_path.glob("o*"))


def test_report_does_not_follow_a_planted_sidecar(tmp_path, capsys, scan):
    dwi, model = scan
    out = tmp_path / "o.nii.gz"
    assert main(["denoise", str(dwi), "--model", str(model), "--out", str(out), "--quiet"]) == 0
    other = tmp_path / "other.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 3, 3, 32), np.float32), np.eye(4)), other)
    sidecar = json.loads((tmp_path / "o.json").read_text())
    (tmp_path / "o.json").write_text(json.dumps({**sidecar, "Sources": [str(other)]}))
    _fails(capsys, ["report", str(out), "--out", str(tmp_path / "r.html")], "does not belong to this output")
    assert not (tmp_path / "r.html").exists()


# ---- property-based: the loaders never crash, whatever they are given ----

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)
entries = st.one_of(finite, st.just(float("nan")), st.just(float("inf")), st.sampled_from([0.0, 1000.0, 50.0]))
quick = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _outcome(capsys, argv) -> None:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code in (0, 2), (code, err)
    if code == 2:
        assert len(err) == 1 and err[0].startswith("dwivae "), err


@quick
@given(bvals=st.lists(entries, min_size=0, max_size=40), bvecs=st.lists(st.lists(entries, min_size=3, max_size=3),
                                                                          min_size=0, max_size=40),
       layout=st.sampled_from(["fsl", "rows", "ragged"]))
def test_random_gradient_tables_give_exit_0_or_one_line(tmp_path, capsys, scan, bvals, bvecs, layout):
    dwi, model = scan
    bval, bvec = tmp_path / "r.bval", tmp_path / "r.bvec"
    bval.write_text(" ".join(f"{v:g}" for v in bvals))
    rows = np.array(bvecs).T if layout == "fsl" and bvecs else np.array(bvecs)
    text = "\n".join(" ".join(f"{v:g}" for v in row) for row in rows)
    bvec.write_text(text + ("\n1 2" if layout == "ragged" else ""))
    _outcome(capsys, ["denoise", str(dwi), "--bvals", str(bval), "--bvecs", str(bvec), "--model", str(model),
                      "--out", str(tmp_path / "o.nii.gz"), "--quiet", "--force"])


@quick
@given(field=st.sampled_from(["dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "sform_code"]),
       value=st.one_of(st.integers(-2**31, 2**31 - 1), st.floats(allow_nan=True, allow_infinity=True)),
       index=st.integers(0, 7))
def test_random_header_edits_give_exit_0_or_one_line(tmp_path, capsys, scan, field, value, index):
    dwi, model = scan
    img = nib.load(dwi)
    raw = bytearray(nib.Nifti1Image(np.asarray(img.dataobj), img.affine).to_bytes())
    header = nib.Nifti1Header.from_fileobj(__import__("io").BytesIO(bytes(raw[:348])))
    block = header.binaryblock
    array = np.frombuffer(block, dtype=header.structarr.dtype).copy()
    try:
        target = array[field]
        target.flat[min(index, target.size - 1)] = value
        array[field] = target
    except (OverflowError, ValueError, TypeError):
        return
    raw[:348] = array.tobytes()
    path = tmp_path / "edited.nii"
    path.write_bytes(bytes(raw))
    _outcome(capsys, ["denoise", str(path), "--bvals", str(dwi.with_suffix("").with_suffix(".bval")),
                      "--bvecs", str(dwi.with_suffix("").with_suffix(".bvec")), "--model", str(model),
                      "--out", str(tmp_path / "o.nii.gz"), "--quiet", "--force"])


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), finite, st.text(max_size=5)),
                           lambda inner: st.lists(inner, max_size=4), max_leaves=8)


@quick
@given(section=st.sampled_from(["model_config", "train_config", "acquisition", "context_config", "format_version"]),
       key=st.sampled_from(["arch", "n_inputs", "latent", "hidden", "activation", "epochs", "noise", "coils",
                            "bvals", "bvecs", "name", "b0_threshold", "shell_tolerance", "radius", "width"]),
       value=json_values, drop=st.booleans())
def test_random_model_json_edits_give_exit_0_or_one_line(tmp_path, capsys, scan, section, key, value, drop):
    dwi, model = scan
    meta_path = model / "model.json"
    original = meta_path.read_text()
    meta = json.loads(original)
    if section == "format_version":
        meta[section] = value
    else:
        part = meta.setdefault(section, {}) if section == "context_config" else meta[section]
        if drop:
            part.pop(key, None)
        else:
            part[key] = value
    meta_path.write_text(json.dumps(meta))
    try:
        _outcome(capsys, ["denoise", str(dwi), "--model", str(model), "--out", str(tmp_path / "o.nii.gz"),
                          "--quiet", "--force"])
    finally:
        meta_path.write_text(original)
