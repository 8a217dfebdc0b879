"""`dwivae bids`: a small BIDS dataset denoised on a LocalCluster of 2 workers, rerun, summarised."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import SHARED_DATA, TINY_TRAINING, open_in_chromium, real_sample

from dwivae.cli import main
from dwivae.learn import training
from dwivae.physics.acquisition import load_acquisition

pytest.importorskip("bids")
pytest.importorskip("distributed")


def _put(source_dir: Path, root: Path, subject: str, session: str) -> Path:
    """Copy a series and its gradient files into ``root`` under BIDS names; the image's path."""
    folder = root / f"sub-{subject}" / f"ses-{session}" / "dwi"
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"sub-{subject}_ses-{session}_dwi"
    dwi = next(source_dir.glob("*.nii*"))
    img = nib.load(dwi)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine), f"{stem}.nii.gz")
    for ext in ("bval", "bvec"):
        shutil.copy(next(source_dir.glob(f"*.{ext}")), f"{stem}.{ext}")
    return Path(f"{stem}.nii.gz")


def make_dataset(root: Path, work: Path) -> dict[str, Path]:
    """Three subjects, two sessions each: a seed32 phantom (subjects 01, 03), DIPY's real small_64D
    (subject 02), and sub-03's second session cut short (a corrupt gzip stream)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    for seed in (1, 2, 3):
        assert main(["phantom", "--protocol", "seed32", "--shape", "14", "14", "8", "--snr", "20", "--noise", "rician",
                     "--seed", str(seed), "--quiet", "--out", str(work / f"ph{seed}")]) == 0
        (work / f"ph{seed}" / "clean.nii.gz").unlink()  # keep one image per folder: the noisy series
        for extra in (work / f"ph{seed}").glob("*.nii.gz"):
            if extra.name != "dwi.nii.gz":
                extra.unlink()
    small = work / "small"
    small.mkdir()
    for path in real_sample("small_64D"):
        shutil.copy(path, small / path.name)
    scans = {"01-1": _put(work / "ph1", root, "01", "1"), "01-2": _put(work / "ph2", root, "01", "2"),
             "02-1": _put(small, root, "02", "1"), "02-2": _put(small, root, "02", "2"),
             "03-1": _put(work / "ph3", root, "03", "1"), "03-2": _put(work / "ph3", root, "03", "2")}
    whole = scans["03-2"].read_bytes()
    scans["03-2"].write_bytes(whole[: len(whole) // 2])  # the stream ends in the middle of the data
    with pytest.raises(EOFError):
        gzip.decompress(scans["03-2"].read_bytes())
    return scans


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(training.PRESETS, "default", TINY_TRAINING)  # the driver sends the configs to the workers
        work = tmp_path_factory.mktemp("bids")
        scans = make_dataset(work / "data", work / "sources")
        out = work / "data" / "derivatives" / "dwivae"
        code = main(["bids", str(work / "data"), str(out), "participant", "--workers", "2"])
        yield scans, out, code


def _outputs(out: Path, subject: str, session: str) -> dict[str, Path]:
    base = out / f"sub-{subject}" / f"ses-{session}" / "dwi" / f"sub-{subject}_ses-{session}"
    return {"denoised": Path(f"{base}_desc-denoised_dwi.nii.gz"), "residual": Path(f"{base}_desc-residual_dwi.nii.gz"),
            "sigma": Path(f"{base}_desc-sigma_dwi.nii.gz"), "sidecar": Path(f"{base}_desc-denoised_dwi.json"),
            "bval": Path(f"{base}_dwi.bval"), "bvec": Path(f"{base}_dwi.bvec"),
            "qc": out / "logs" / "qc" / f"sub-{subject}_ses-{session}.json"}


def test_participant_denoises_every_readable_scan_into_a_bids_derivative(dataset):
    scans, out, code = dataset
    assert code == 1  # one scan failed
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "dwivae"
    for key in ("01-1", "01-2", "02-1", "02-2", "03-1"):
        subject, session = key.split("-")
        paths = _outputs(out, subject, session)
        noisy, denoised = nib.load(scans[key]), nib.load(paths["denoised"])
        assert denoised.shape == noisy.shape and np.allclose(denoised.affine, noisy.affine)
        residual = np.asarray(nib.load(paths["residual"]).dataobj)
        np.testing.assert_allclose(residual, np.asarray(noisy.dataobj) - np.asarray(denoised.dataobj), atol=1e-3)
        assert np.abs(residual).max() > 0  # it was denoised, not copied
        sigma = np.asarray(nib.load(paths["sigma"]).dataobj)
        assert sigma.shape == noisy.shape[:3] and sigma.max() > 0
        source = load_acquisition(*(Path(str(scans[key]).replace(".nii.gz", e)) for e in (".bval", ".bvec")))
        copied = load_acquisition(paths["bval"], paths["bvec"])
        np.testing.assert_allclose(copied.bvals, source.bvals, rtol=1e-9)
        np.testing.assert_allclose(copied.bvecs, source.bvecs, atol=1e-7)
        assert len(paths["bvec"].read_text().splitlines()) == 3  # FSL's layout, whatever the input's
        side = json.loads(paths["sidecar"].read_text())
        assert side["NonLocal"]["GroupSize"] == 150 and side["Sources"] == [str(scans[key].resolve())]
        qc = json.loads(paths["qc"].read_text())
        assert qc["Voxels"] > 0 and 0 < qc["FAAfter"] < 1 and qc["MDAfter"] > 0 and qc["Sigma"] == pytest.approx(
            float(sigma.max()))
        assert (out / "logs" / "qc" / qc["Figure"]).is_file()
        assert -1 <= qc["ResidualB0Correlation"] <= 1 and abs(qc["ResidualMean"]) < 1 and 0.2 < qc["ResidualSD"] < 2


def test_pybids_reads_the_outputs_as_a_derivative_dataset(dataset):
    from bids import BIDSLayout

    _, out, _ = dataset
    layout = BIDSLayout(out, validate=False, is_derivative=True)
    denoised = layout.get(desc="denoised", suffix="dwi", extension=".nii.gz")
    assert sorted((f.entities["subject"], f.entities["session"]) for f in denoised) == [
        ("01", "1"), ("01", "2"), ("02", "1"), ("02", "2"), ("03", "1")]
    assert all(Path(layout.get_bval(f.path)).name == Path(f.path).name.replace("_desc-denoised_dwi.nii.gz", "_dwi.bval")
               for f in denoised)  # the input's gradient files apply by inheritance
    assert set((out / ".bidsignore").read_text().split()) >= {"/models", "/logs"}


def test_the_bids_validator_accepts_the_output_tree(dataset):
    validator = shutil.which("bids-validator-deno", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    if validator is None:
        if os.environ.get("CI"):
            pytest.fail("bids-validator-deno must be installed in CI (the test extra of pyproject.toml has it)")
        pytest.skip("bids-validator-deno is not installed (pip install bids-validator-deno)")
    _, out, _ = dataset
    run = subprocess.run([validator, str(out), "--format", "json"], capture_output=True, text=True, timeout=300)
    issues = json.loads(run.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert not errors, errors
    assert run.returncode == 0


def test_one_model_per_protocol_is_shared_by_its_scans(dataset):
    _, out, _ = dataset
    models = sorted(p.parent for p in (out / "models").glob("*/model.json"))
    assert len(models) == 2  # seed32 and small_64D, not one per scan
    used = {json.loads(_outputs(out, *key.split("-"))["sidecar"].read_text())["Model"]["path"]
            for key in ("01-1", "01-2", "02-1", "02-2", "03-1")}
    assert used == {str(m.resolve()) for m in models}


def test_the_corrupt_scan_is_reported_and_the_others_finish(dataset):
    _, out, _ = dataset
    summary = json.loads((out / "logs" / "participant.json").read_text())
    assert (summary["Denoised"], summary["Failed"], summary["CompleteBefore"]) == (5, 1, 0)
    failed = [row for row in summary["Scans"] if row["Status"] == "failed"]
    assert [row["Scan"] for row in failed] == ["sub-03/ses-2/dwi/sub-03_ses-2_dwi.nii.gz"]
    assert "\n" not in failed[0]["Reason"] and failed[0]["Reason"].startswith("the image is truncated or corrupt")
    log = (out / failed[0]["Log"]).read_text()
    assert log.startswith("sub-03/ses-2/dwi/sub-03_ses-2_dwi.nii.gz: the image is truncated or corrupt")
    assert not _outputs(out, "03", "2")["denoised"].exists()
    assert not list(out.rglob(".*.tmp*"))  # nothing half-written


def test_a_second_run_redoes_nothing_and_group_writes_its_page(dataset, tmp_path, capsys, monkeypatch):
    scans, out, _ = dataset
    def derivatives() -> dict[Path, int]:  # every scan's outputs and the models, with their times
        return {path: path.stat().st_mtime_ns for path in out.rglob("*")
                if path.is_file() and path.relative_to(out).parts[0].startswith(("sub-", "models"))}

    written = derivatives()
    monkeypatch.chdir(out.parents[2])  # relative paths, as a user types them
    code = main(["bids", "data", "data/derivatives/dwivae", "participant", "--workers", "2",
                 "--participant-label", "sub-01", "02", "--session", "1", "2"])
    assert code == 0  # sub-03 was not asked for
    assert "4 of 4 scans are complete" in capsys.readouterr().err
    assert derivatives() == written and len(written) == 5 * 6 + 2 * 2
    summary = json.loads((out / "logs" / "participant.json").read_text())
    assert (summary["Denoised"], summary["CompleteBefore"], summary["Failed"]) == (0, 4, 0)
    assert main(["bids", "data", "data/derivatives/dwivae", "participant", "--workers", "2", "--quiet"]) == 1
    assert derivatives() == written  # the whole dataset again: only the corrupt scan is tried, and fails again
    assert capsys.readouterr().err.splitlines() == ["1 failed: see data/derivatives/dwivae/logs"]  # no progress
    summary = json.loads((out / "logs" / "participant.json").read_text())
    assert (summary["Denoised"], summary["CompleteBefore"], summary["Failed"]) == (0, 5, 1)

    assert main(["bids", "data", "data/derivatives/dwivae", "group"]) == 0
    capsys.readouterr()
    assert main(["bids", "data", "data/derivatives/dwivae", "group"]) == 2  # the page exists
    assert "pass --force" in capsys.readouterr().err
    assert main(["bids", "data", "data/derivatives/dwivae", "group", "--force"]) == 0
    page = out / "group_report.html"
    text = page.read_text()
    assert text.count("<tr>") >= 1 + 5 and "sub-02/ses-2/dwi/sub-02_ses-2_dwi.nii.gz" in text
    assert "Failed scans" in text and "sub-03/ses-2/dwi/sub-03_ses-2_dwi.nii.gz</td><td>the image is truncated" in text
    logs, images = open_in_chromium(page, tmp_path / "group.png")
    assert not [entry for entry in logs if entry["level"] == "SEVERE"], logs
    assert len(images) == 5 and all(complete and width > 0 for complete, width, _ in images)


def test_scheduler_submits_to_a_running_cluster(dataset, monkeypatch):
    from dask.distributed import LocalCluster

    scans, out, _ = dataset
    monkeypatch.setitem(training.PRESETS, "default", TINY_TRAINING)
    before = {key: _outputs(out, *key.split("-"))["sidecar"].stat().st_mtime_ns for key in ("02-1", "02-2", "01-1")}
    environment = dict(os.environ)
    try:
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True) as cluster:
            code = main(["bids", str(scans["01-1"].parents[3]), str(out), "participant", "--participant-label", "02",
                         "--force", "--scheduler", cluster.scheduler_address])
            assert len(cluster.scheduler.workers) == 1  # the cluster is left running: it is not ours
    finally:  # Dask's nannies leave their workers' variables (OMP_NUM_THREADS=1, ...) in this process
        os.environ.clear()
        os.environ.update(environment)
    assert code == 0
    after = {key: _outputs(out, *key.split("-"))["sidecar"].stat().st_mtime_ns for key in before}
    assert after["02-1"] > before["02-1"] and after["02-2"] > before["02-2"] and after["01-1"] == before["01-1"]
    assert len(list((out / "models").glob("*/model.json"))) == 2  # sub-02's protocol kept its model


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    assert main(["bids", str(tmp_path / "data"), str(tmp_path / "out"), "participant"]) == 2
    assert "no dataset_description.json" in capsys.readouterr().err
    assert main(["bids", str(tmp_path / "data"), str(tmp_path / "data"), "participant"]) == 2
    assert "is the dataset itself: write the derivative beside it" in capsys.readouterr().err
    assert main(["bids", str(tmp_path / "data"), str(tmp_path / "out"), "group"]) == 2
    assert "run `dwivae bids" in capsys.readouterr().err


def test_a_scan_with_the_wrong_gradient_files_or_none_is_refused_in_one_line(tmp_path):
    from dwivae.bids.layout import Scan
    from dwivae.bids.scan_tasks import inspect_scan

    dwi, bval, bvec = real_sample("small_64D")
    other_bval, other_bvec = SHARED_DATA / "mrtrix_b3000_dwi.bval", SHARED_DATA / "mrtrix_b3000_dwi.bvec"
    scan = Scan(dwi=dwi, bval=other_bval, bvec=other_bvec, relative=Path("sub-01/dwi/sub-01_dwi.nii"), subject="01",
                session="")
    outcome = inspect_scan(scan)
    assert not outcome.ok and not outcome.detail
    assert outcome.reason == ("the image has 65 volumes but mrtrix_b3000_dwi.bval and mrtrix_b3000_dwi.bvec have 68: "
                              "give the gradient files of this image")
    outcome = inspect_scan(Scan(dwi=dwi, bval=bval, bvec=None, relative=scan.relative, subject="01", session=""))
    assert not outcome.ok and outcome.reason.startswith("no .bvec beside the image")
    good = inspect_scan(Scan(dwi=dwi, bval=bval, bvec=bvec, relative=scan.relative, subject="01", session=""))
    assert good.ok and good.snr[0] < good.snr[1]


def test_local_workers_share_the_cpus_and_keep_glibc_adaptive_malloc(monkeypatch):
    from dwivae.bids.participant import _cluster
    from dwivae.kernels.bindings import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier cluster's nannies leave it
    environment = dict(os.environ)
    client, cluster = _cluster(None, 2)
    assert dict(os.environ) == environment  # this process's own is left as it was
    try:
        seen = client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    finally:
        client.close()
        cluster.close()
    assert set(seen.values()) == {(None, str(max(1, default_threads() // 2)))} and len(seen) == 2


def test_the_kernels_take_at_most_omp_num_threads(monkeypatch):
    from dwivae.kernels.bindings import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cpus = default_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus + 5))
    assert default_threads() == cpus
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert default_threads() == cpus


def test_denoise_file_takes_other_names_only_for_its_own_outputs(tmp_path, trained_for):
    from dwivae.apply.denoise_file import denoise_file

    dwi, bval, bvec = real_sample("small_64D")
    acq = load_acquisition(bval, bvec)
    with pytest.raises(ValueError, match=r"names must give the outputs \['denoised', 'residual', 'sidecar'\]"):
        denoise_file(dwi, acq, trained_for("small_64D"), tmp_path / "out.nii.gz", mask=None,
                     names={"denoised": tmp_path / "a.nii.gz", "sidecar": tmp_path / "a.json"})
    assert not list(tmp_path.iterdir())
