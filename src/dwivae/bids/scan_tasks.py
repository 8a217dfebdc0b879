"""The work on one scan or one protocol, as Dask runs it on a worker: look, train, denoise.

Each task reads and writes files under paths it is given (a cluster's workers share the output
folder, not memory), and reports what went wrong in an :class:`Outcome` instead of raising, so
that one bad scan never stops the others. A model is trained once per protocol fingerprint, on
the SNR range of all that protocol's scans, into ``OUT_DIR/models``.
"""
from __future__ import annotations

import time
import traceback
import zlib
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae.bids.layout import Scan
from dwivae.errors import InputError
from dwivae.io.writing import write_text_atomic
from dwivae.learn.config import TrainConfig
from dwivae.physics.acquisition import Acquisition


@dataclass(frozen=True)
class Outcome:
    """What a task made of one scan (reasons do not repeat the scan's path: it is shown beside them).

    Attributes
    ----------
    scan : Scan
    ok : bool
    reason : str
        Why it failed, one line ("" if it did not).
    detail : str
        The traceback of an unexpected error, for the scan's log.
    fingerprint : str
        The protocol's fingerprint (from :func:`inspect_scan`).
    snr : (float, float)
        The scan's SNR range (from :func:`inspect_scan`).
    qc : dict
        The QC record (from :func:`denoise_scan`; :func:`dwivae.bids.qc.scan_qc`).
    """

    scan: Scan
    ok: bool
    reason: str = ""
    detail: str = ""
    fingerprint: str = ""
    snr: tuple[float, float] = (0.0, 0.0)
    qc: dict = field(default_factory=dict)


def failed(scan: Scan, err: BaseException) -> Outcome:
    """The outcome of a scan whose task raised ``err``: its message in one line, and the traceback
    where the error was not one of the input's."""
    reason = " ".join(str(err).split()) or type(err).__name__
    if not isinstance(err, InputError):
        reason = f"{type(err).__name__}: {reason}"
    detail = "" if isinstance(err, InputError) else "".join(traceback.format_exception(err))
    return Outcome(scan, ok=False, reason=reason, detail=detail)


def _acquisition(scan: Scan) -> tuple[Acquisition, nib.Nifti1Image]:
    """The scan's protocol and its image (opened lazily), checked against each other."""
    from dwivae import io
    from dwivae.physics.acquisition import load_acquisition

    if scan.bval is None or scan.bvec is None:
        missing = " and ".join(ext for ext, path in ((".bval", scan.bval), (".bvec", scan.bvec)) if path is None)
        raise InputError(f"no {missing} beside the image or inherited from a folder above it: add its gradient files")
    acq = load_acquisition(scan.bval, scan.bvec)
    img = io.load_dwi(scan.dwi)
    if img.shape[3] != acq.n_volumes:
        raise InputError(f"the image has {img.shape[3]} volumes but {scan.bval.name} and {scan.bvec.name} have "
                         f"{acq.n_volumes}: give the gradient files of this image")
    return acq, img


def _check_readable(img: nib.Nifti1Image) -> None:
    """Read the image's last volume, the end of its data (of the whole stream, for .nii.gz)."""
    try:
        np.asarray(img.dataobj[..., -1])
    except (OSError, EOFError, ValueError, zlib.error) as err:
        raise InputError("the image is truncated or corrupt: reading its last volume failed "
                         f"({type(err).__name__}: {' '.join(str(err).split())}); copy or export it again") from None


def inspect_scan(scan: Scan) -> Outcome:
    """Check a scan (gradient files, volume count, data readable to the end) and measure its
    protocol's fingerprint and SNR range."""
    from dwivae.apply.mask import auto_mask
    from dwivae.physics.noise import snr_range

    try:
        acq, img = _acquisition(scan)
        _check_readable(img)
        _, snr = snr_range(img.dataobj, acq, auto_mask(img, acq))
        return Outcome(scan, ok=True, fingerprint=acq.fingerprint(), snr=snr)
    except Exception as err:  # noqa: BLE001 - any failure of one scan is reported, the others go on
        return failed(scan, err)


def train_protocol(scan: Scan, config: TrainConfig, *, tag: str, models: str | PathLike[str], seed: int = 0) -> str:
    """The model of ``scan``'s protocol: read from ``models`` or trained into it; its directory."""
    from dwivae.learn.cache import load_or_train
    from dwivae.physics.acquisition import load_acquisition

    _, path = load_or_train(load_acquisition(scan.bval, scan.bvec), arch="vae", seed=seed, config=config, tag=tag,
                            root=Path(models))
    return str(path)


def _write_gradients(acq: Acquisition, bval: Path, bvec: Path) -> None:
    """The protocol's gradient files in FSL's layout (one row of b-values; three rows of unit
    directions, zero for the b0 volumes), each written atomically."""
    for path, rows, fmt in ((bval, acq.bvals[None, :], "%.10g"), (bvec, acq.bvecs.T, "%.8f")):
        text = "\n".join(" ".join(fmt % value for value in row) for row in rows) + "\n"
        write_text_atomic(path, text, force=True)


def denoise_scan(scan: Scan, model_dir: str, out_dir: str | PathLike[str], *, coils: int = 1, seed: int = 0,
                 command: str = "") -> Outcome:
    """Denoise one scan as the plain ``dwivae denoise`` does, with the model of its protocol, into
    its BIDS derivative names; then copy its gradient files and write its QC record (last)."""
    from dwivae import io
    from dwivae.apply.denoise_file import denoise_file
    from dwivae.apply.plain import PLAIN_SETTINGS
    from dwivae.bids.qc import scan_qc
    from dwivae.learn.checkpoint import load_frozen, load_model

    try:
        started = time.perf_counter()
        acq, _ = _acquisition(scan)
        paths = scan.outputs(out_dir)
        paths["denoised"].parent.mkdir(parents=True, exist_ok=True)
        model = load_frozen(model_dir) or load_model(model_dir)  # without torch where the kernels run
        _, stats = denoise_file(scan.dwi, acq, model, paths["denoised"], names=paths,
                                coils=coils, seed=seed, force=True, inputs=[scan.bval, scan.bvec, model_dir],
                                **PLAIN_SETTINGS,
                                provenance={"Command": command, "SkullStripped": False,
                                            "Model": {"path": str(Path(model_dir).resolve())},
                                            "GradientFiles": {"bval": str(scan.bval), "bvec": str(scan.bvec)}})
        _write_gradients(acq, *scan.gradient_copies(out_dir))
        qc = scan_qc(scan, acq, paths, stats, figure=scan.qc_path(out_dir).with_suffix(".png"))
        qc["Seconds"] = round(time.perf_counter() - started, 2)
        io.write_json_atomic(scan.qc_path(out_dir), qc, force=True)
        return Outcome(scan, ok=True, fingerprint=acq.fingerprint(), qc=qc)
    except Exception as err:  # noqa: BLE001 - any failure of one scan is reported, the others go on
        return failed(scan, err)
