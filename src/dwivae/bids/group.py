"""``dwivae bids ... group``: one HTML page over the participants, the QC a user scrolls through.

It reads what ``participant`` wrote (each scan's QC record and figure in ``OUT_DIR/logs/qc``, and
the log of each scan whose last run failed in ``OUT_DIR/logs``) and computes nothing again: a table with a row per
scan (voxels, seconds, sigma, residual mean and sd in sigma, the correlation of the residual's RMS
with the mean b0, mean FA and MD before and after), the
scans that failed with their reasons, then every scan's figure. Images are embedded, so the page
is one self-contained file.
"""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from dwivae.bids.layout import LOGS, QC, SUMMARY
from dwivae.errors import InputError
from dwivae.io.writing import write_text_atomic
from dwivae.show.gallery import Figure
from dwivae.show.report import Section, render_html

GROUP_PAGE = "group_report.html"
"""The page's name in ``OUT_DIR``."""
COLUMNS = ("scan", "protocol", "voxels", "seconds", "sigma", "residual mean (sigma)", "residual sd (sigma)",
           "residual RMS ~ mean b0 (r)", "FA before", "FA after", "MD before (1e-3 mm²/s)", "MD after (1e-3 mm²/s)")


def _row(qc: dict) -> list[str]:
    r = qc["ResidualB0Correlation"]
    return [qc["Scan"], qc["Protocol"], str(qc["Voxels"]), f"{qc['Seconds']:.1f}", f"{qc['Sigma']:.4g}",
            f"{qc['ResidualMean']:+.3f}", f"{qc['ResidualSD']:.3f}", "-" if r is None else f"{r:+.2f}",
            f"{qc['FABefore']:.3f}", f"{qc['FAAfter']:.3f}",
            f"{qc['MDBefore'] * 1e3:.3f}", f"{qc['MDAfter'] * 1e3:.3f}"]


def write_group_page(out_dir: str | PathLike[str], *, force: bool = False) -> Path:
    """Write ``OUT_DIR/group_report.html`` from a ``participant`` run's records; its path. An
    existing page is replaced only with ``force``.

    Raises
    ------
    InputError
        If ``out_dir`` holds no QC record and no summary (``participant`` has not run there).
    """
    out_dir = Path(out_dir)
    records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((out_dir / QC).glob("*.json"))]
    failures = [path.read_text(encoding="utf-8").splitlines()[0].split(": ", 1)
                for path in sorted((out_dir / LOGS).glob("*.log"))]
    if not records and not (out_dir / LOGS / SUMMARY).is_file():
        raise InputError(f"{out_dir} holds no QC records: run `dwivae bids BIDS_DIR {out_dir} participant` first")
    records.sort(key=lambda qc: qc["Scan"])
    sections = [Section("Scans", tables=[(f"{len(records)} denoised: residual of the diffusion-weighted "
                                          "volumes in the mask; FA and MD of a DTI (WLS) fit in the mask",
                                          list(COLUMNS), [_row(qc) for qc in records])])]
    if failures:
        sections.append(Section("Failed scans", tables=[(f"{len(failures)} failed (logs in {LOGS}/)",
                                                         ["scan", "reason"],
                                                         failures)]))
    figures = [Figure(out_dir / QC / qc["Figure"], qc["Scan"], f"sigma {qc['Sigma']:.4g}, residual "
                      f"{qc['ResidualMean']:+.2f} +/- {qc['ResidualSD']:.2f} sigma")
               for qc in records if qc.get("Figure") and (out_dir / QC / qc["Figure"]).is_file()]
    sections.append(Section("Middle slices", figures=figures,
                            text="FA before and after denoising, and the residual's RMS over the "
                                 "diffusion-weighted volumes in units of sigma (about 1 where only noise was removed; "
                                 "anatomy in it is signal that was lost)."))
    return write_text_atomic(out_dir / GROUP_PAGE, render_html(f"dwivae: {out_dir.name}", sections), force=force)
