"""The scans of a BIDS dataset and the names of their denoised derivatives.

The dataset is read by pybids (``BIDSLayout``, validated names only; gradient files found by BIDS
inheritance), never by a parser of our own. Outputs follow BIDS Derivatives: the input's folders
and entities with ``desc-denoised`` (the series, its ``.bval``/``.bvec`` and JSON sidecar),
``desc-residual`` (input minus output) and ``desc-sigma`` (the noise level used), under an
``OUT_DIR`` with a ``dataset_description.json`` of ``DatasetType: derivative``. What is not BIDS
(the shared models, the logs and the QC records) is listed in ``.bidsignore``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

from dwivae._version import __version__
from dwivae.errors import InputError
from dwivae.io.writing import write_json_atomic, write_text_atomic

MODELS = "models"
"""Folder of ``OUT_DIR`` holding one model per protocol, shared by its scans."""
LOGS = "logs"
"""Folder of ``OUT_DIR`` with a log per failed scan and the run's summary."""
SUMMARY = "participant.json"
"""The last ``participant`` run's summary in ``OUT_DIR/logs``: every scan's status and reason, the models."""
QC = "logs/qc"
"""Folder of ``OUT_DIR`` with each scan's QC record (JSON) and figure, written after its outputs."""
IGNORED = (f"/{MODELS}", f"/{LOGS}", "/*.html", "*_desc-sigma_dwi.nii.gz")
"""``.bidsignore`` lines: the parts of ``OUT_DIR`` that BIDS does not cover (the noise map, 3D,
is not a diffusion series)."""
SHARED_METADATA = {"SkullStripped": False}
"""``OUT_DIR/dwi.json``: metadata of every derivative series (by inheritance); the voxels outside the
mask are kept as measured."""


@dataclass(frozen=True)
class Scan:
    """One diffusion series of the dataset.

    Attributes
    ----------
    dwi : Path
        The image.
    bval, bvec : Path or None
        Its gradient files (found by BIDS inheritance; None where there is none).
    relative : Path
        The image's path below the dataset root (``sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz``).
    subject, session : str
        Labels without their prefixes (``session`` is "" for a dataset without sessions).
    """

    dwi: Path
    bval: Path | None
    bvec: Path | None
    relative: Path
    subject: str
    session: str

    @property
    def name(self) -> str:
        """The image's name without ``_dwi`` and extension: ``sub-01_ses-1_acq-b1000``."""
        return self.relative.name.split(".")[0].removesuffix("_dwi")

    def _base(self, out_dir: str | PathLike[str]) -> Path:
        return Path(out_dir) / self.relative.parent / self.name

    def outputs(self, out_dir: str | PathLike[str]) -> dict[str, Path]:
        """The denoised series, its residual, noise map and sidecar, by the roles of
        :func:`dwivae.apply.denoise_file.output_paths` (the sidecar last)."""
        base = self._base(out_dir)
        return {"denoised": Path(f"{base}_desc-denoised_dwi.nii.gz"),
                "residual": Path(f"{base}_desc-residual_dwi.nii.gz"),
                "sigma": Path(f"{base}_desc-sigma_dwi.nii.gz"),
                "sidecar": Path(f"{base}_desc-denoised_dwi.json")}

    def gradient_copies(self, out_dir: str | PathLike[str]) -> tuple[Path, Path]:
        """The ``.bval`` and ``.bvec`` beside the denoised series and its residual, named as the
        input's (``sub-01_ses-1_dwi.bval``): by BIDS inheritance they apply to both."""
        base = self._base(out_dir)
        return Path(f"{base}_dwi.bval"), Path(f"{base}_dwi.bvec")

    def qc_path(self, out_dir: str | PathLike[str]) -> Path:
        """The scan's QC record, written once its outputs are."""
        return Path(out_dir) / QC / f"{self.name}.json"

    def log_path(self, out_dir: str | PathLike[str]) -> Path:
        """Where the reason of the scan's failure is written."""
        return Path(out_dir) / LOGS / f"{self.name}.log"

    def complete(self, out_dir: str | PathLike[str]) -> bool:
        """Whether an earlier run wrote every output and the QC record (the two written last)."""
        written = [*self.outputs(out_dir).values(), *self.gradient_copies(out_dir), self.qc_path(out_dir)]
        return all(path.is_file() for path in written)


def _labels(values: list[str] | None, prefix: str) -> list[str] | None:
    """BIDS Apps labels, with or without their prefix (``01`` or ``sub-01``)."""
    return None if not values else [v.removeprefix(prefix) for v in values]


def find_scans(bids_dir: str | PathLike[str], *, participants: list[str] | None = None,
               sessions: list[str] | None = None) -> list[Scan]:
    """Every ``*_dwi.nii[.gz]`` of a BIDS dataset with its gradient files, sorted by path.

    Parameters
    ----------
    bids_dir : path
        The dataset's root (with ``dataset_description.json``).
    participants, sessions : list of str, optional
        Labels to keep (``01`` or ``sub-01``; ``1`` or ``ses-1``); default: all.

    Raises
    ------
    InputError
        If ``bids_dir`` is not a BIDS dataset, a label matches nothing, or no scan is found.
    """
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    root = Path(bids_dir).resolve()
    if not (root / "dataset_description.json").is_file():
        raise InputError(f"{root} has no dataset_description.json: give the root folder of a BIDS dataset")
    try:
        layout = BIDSLayout(root, validate=True)
    except BIDSValidationError as err:
        raise InputError(f"{root} is not a BIDS dataset pybids can read ({err}): check dataset_description.json")
    query: dict = {"suffix": "dwi", "extension": [".nii", ".nii.gz"]}
    for key, labels, known in (("subject", _labels(participants, "sub-"), layout.get_subjects()),
                               ("session", _labels(sessions, "ses-"), layout.get_sessions())):
        if labels:
            unknown = sorted(set(labels) - set(known))
            if unknown:
                raise InputError(f"no {key} {', '.join(unknown)} in {root} "
                                 f"(it has {', '.join(sorted(known)) or 'none'})")
            query[key] = labels
    scans = []
    for file in layout.get(**query):
        path = Path(file.path)
        entities = file.get_entities()
        scans.append(Scan(dwi=path, bval=_nearest(layout, file.path, "bval"), bvec=_nearest(layout, file.path, "bvec"),
                          relative=path.resolve().relative_to(root), subject=str(entities["subject"]),
                          session=str(entities.get("session", ""))))
    if not scans:
        raise InputError(f"no *_dwi.nii or *_dwi.nii.gz in {root} for the labels given: check the dataset and "
                         "--participant-label / --session")
    return sorted(scans, key=lambda scan: str(scan.relative))


def _nearest(layout, path: str, extension: str) -> Path | None:
    """The gradient file that applies to ``path`` by BIDS inheritance, or None."""
    try:
        found = layout.get_nearest(path, extension=extension, suffix="dwi", all_=False)
    except (ValueError, KeyError):
        return None
    return Path(found) if found else None


README = """Denoised by dwivae (https://pypi.org/project/dwivae/) from {source}.

Command: {command}

Each series sub-*/[ses-*/]dwi/*_desc-denoised_dwi.nii.gz has its JSON sidecar (the model, the noise
level and what was done), its residual (*_desc-residual_dwi.nii.gz, input minus output) and its
noise map (*_desc-sigma_dwi.nii.gz, the sigma used in the mask); the gradient files beside them
are the input's. models/ holds the model of each protocol, logs/ the run's summary, one log per
failed scan and each scan's QC record; group_report.html is the QC page over the participants.
"""
"""``OUT_DIR/README``."""


def write_description(out_dir: str | PathLike[str], bids_dir: str | PathLike[str], *, command: str) -> None:
    """``OUT_DIR/dataset_description.json`` (a derivative, generated by dwivae), ``dwi.json``,
    ``README`` and ``.bidsignore``."""
    out_dir, bids_dir = Path(out_dir), Path(bids_dir)
    source = json.loads((bids_dir / "dataset_description.json").read_text(encoding="utf-8"))
    description = {
        "Name": f"{source.get('Name', bids_dir.name)}: denoised by dwivae",
        "BIDSVersion": source.get("BIDSVersion", "1.9.0"),
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "dwivae", "Version": __version__, "Description": command}],
        "SourceDatasets": [{"URL": bids_dir.resolve().as_uri()}],
    }
    write_json_atomic(out_dir / "dataset_description.json", description, force=True)
    write_json_atomic(out_dir / "dwi.json", SHARED_METADATA, force=True)
    write_text_atomic(out_dir / ".bidsignore", "\n".join(IGNORED) + "\n", force=True)
    write_text_atomic(out_dir / "README", README.format(source=bids_dir.resolve(), command=command), force=True)
