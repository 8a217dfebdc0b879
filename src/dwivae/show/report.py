"""The self-contained HTML report of ``dwivae denoise`` outputs.

``build_report`` gathers everything about one or more outputs of one input (what was run, the
key numbers, every figure of :mod:`dwivae.show.gallery`) into one HTML page with its images embedded,
so it opens anywhere with no network access, as fMRIPrep and MRIQC reports do.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae import io
from dwivae._version import __version__
from dwivae.errors import InputError
from dwivae.learn.checkpoint import load_model
from dwivae.show.gallery import Figure, check_format, draw_figures, load_outputs


@dataclass
class Section:
    """A part of the report: a heading, tables ``(caption, header, rows)`` and figures."""

    heading: str
    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    text: str = ""


def _image_tag(figure: Figure) -> str:
    mime = "image/svg+xml" if figure.path.suffix == ".svg" else "image/png"
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(figure.title)}">'
            f"<figcaption><b>{html.escape(figure.title)}.</b> {html.escape(figure.caption)}</figcaption></figure>")


def _table(caption: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
caption{text-align:left;font-weight:bold;padding:.3em 0}figure{margin:1.5em 0}img{max-width:100%}
figcaption{font-size:.9em;color:#444}code{background:#f4f4f4;padding:0 .2em}"""


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One HTML page with every image embedded as a data URI (no file or network access)."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<p>{html.escape(section.text)}</p>")
        parts += [_table(*t) for t in section.tables]
        parts += [_image_tag(f) for f in section.figures]
    parts.append("</body></html>")
    return "\n".join(parts)


def _versions() -> list[list[str]]:
    import dipy
    import torch
    return [["dwivae", __version__], ["python", platform.python_version()], ["torch", torch.__version__],
            ["numpy", np.__version__], ["nibabel", nib.__version__], ["dipy", dipy.__version__]]


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _options(sidecar: Mapping) -> str:
    """What a denoising run did besides the network, from its sidecar: neighbourhood, noise floor, b0."""
    parts = []
    if sidecar.get("Context"):
        size = 2 * sidecar["Context"]["Radius"] + 1
        parts.append(f"learned context ({size}x{size}x{size})")
    if sidecar.get("Spatial"):
        sp = sidecar["Spatial"]
        parts.append(f"spatial {_fmt(sp['Strength'])} (h {_fmt(sp['LatentScale'])}, sigma {_fmt(sp['NoiseSigma'])})")
    if sidecar.get("BiasCorrection"):
        bc = sidecar["BiasCorrection"]
        parts.append(f"noise floor removed (sigma {_fmt(bc['NoiseSigma'])}, {bc['Coils']} coil(s))")
    if sidecar.get("DenoiseB0"):
        parts.append("b0 denoised")
    return "; ".join(parts) or "-"


def _benchmark_tables(results: Mapping) -> list[tuple[str, list[str], list[list[str]]]]:
    tables = []
    for name, entry in results["phantoms"].items():
        rows = []
        for method, row in entry["methods"].items():
            if row["status"] != "ok":
                rows.append([method, row["status"], row["note"], "", "", "", "", ""])
                continue
            rows.append([method, _fmt(row["signal_rmse"]), _fmt(row["fa_mae"]["WM"]), _fmt(row["fa_mae"]["GM"]),
                         _fmt(row["fa_mae"]["crossing"]), _fmt(row["md_mae"]["all"]), _fmt(row["angle_wm_deg"]),
                         _fmt(row["seconds"])])
        s = entry["settings"]
        tables.append((f"{name}: {s['protocol']}, {s['noise']} noise, SNR {s['snr']:g}",
                       ["method", "RMSE", "FA err WM", "FA err GM", "FA err crossing", "MD err (mm²/s)",
                        "angle WM (deg)", "seconds"], rows))
    return tables


def build_report(outputs: Sequence[str | PathLike[str]], out: str | PathLike[str], *,
                 models: Mapping[str, str | PathLike[str]] | None = None,
                 benchmark: str | PathLike[str] | None = None, fmt: str = "png",
                 slices: tuple[int, int] | None = None, seed: int = 0, force: bool = False,
                 peers: Mapping[str, str | PathLike[str]] | None = None) -> Path:
    """Write the HTML report of one or more denoised outputs of the same input.

    Parameters
    ----------
    outputs : sequence of path
        Denoised NIfTI files written by ``dwivae denoise`` (each with its JSON sidecar).
    out : path
        The ``.html`` file to write (atomically).
    models : mapping of str to path, optional
        Extra model directories to show in the model figures (e.g. latent 10, no KL).
    benchmark : path, optional
        The output directory of ``dwivae benchmark``: its tables and figures are added.
    fmt : {"png", "svg"}
    slices : (int, int), optional
        Slice range of the residual histograms.
    seed : int
        Fixes the simulated examples.
    force : bool
        Replace an existing report.
    peers : mapping of str to path, optional
        Other denoisers' outputs of the same input (NIfTI on its grid, e.g. ``dwidenoise``'s), by
        name, drawn and measured beside ours.

    Returns
    -------
    Path
    """
    check_format(fmt)
    out = io.check_output(out, force=force)
    data = load_outputs(outputs)
    for name, path in (peers or {}).items():
        img = io.load_dwi(path)
        if img.shape != data.noisy.shape or not np.allclose(img.affine, io.load_dwi(data.source).affine,
                                                            atol=io.AFFINE_TOLERANCE):
            raise InputError(f"{path} is not on the grid of {data.source}: give another denoiser's output of that "
                             "input")
        data.denoised[name] = np.asarray(img.dataobj, dtype=np.float32)
    extra = {name: load_model(path) for name, path in (models or {}).items()}
    with tempfile.TemporaryDirectory(prefix="dwivae-report-") as tmp:
        drawn, numbers = draw_figures(tmp, outputs=data, models=extra, benchmark=benchmark, fmt=fmt,
                                      slices=slices, seed=seed)
        acq = data.acq
        run = [["input", str(data.source)], ["protocol", f"{acq.describe()} (fingerprint {acq.fingerprint()})"],
               ["report written", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")]]
        run += [[f"command ({n})", i.get("Command", "-")] for n, i in data.sidecars.items()]
        outputs_rows = [[n, str(data.paths[n]), i["Model"].get("path", "-"), _options(i), _fmt(i.get("VoxelsDenoised")),
                         _fmt(i.get("VoxelsSkipped")), _fmt(i.get("Seconds"))] for n, i in data.sidecars.items()]
        numbers_rows = [[n, _fmt(v.get("residual_mean")), _fmt(v.get("residual_sd")), _fmt(v["fa_mean"]),
                         _fmt(v["md_mean"])] for n, v in numbers["in_vivo"].items()]
        model_rows = [[n, v["arch"], str(v["latent"]), _fmt(v["beta_max"] if v["arch"] == "vae" else None),
                       _fmt(v["test_mse"]), _fmt(v["train_seconds"]),
                       f"{v['latent_statistics']['n_active']} of {v['latent']}"]
                      for n, v in numbers["models"].items()]
        sections = [
            Section("What was run", tables=[("Run", ["", ""], run), ("Software", ["package", "version"], _versions())]),
            Section("Key numbers", tables=[
                ("Outputs", ["method", "file", "model", "options", "voxels denoised", "voxels skipped", "seconds"],
                 outputs_rows),
                ("In the denoised voxels (scanner units; residual over DW volumes)",
                 ["series", "residual mean", "residual sd", "mean FA", "mean MD (mm²/s)"], numbers_rows),
                *([("Models (latents analysed on the input's voxels)",
                    ["model", "arch", "latent", "beta max", "test MSE", "training s", "active latents"], model_rows)]
                  if model_rows else [])]),
            Section("In-vivo results", figures=drawn["in_vivo"]),
        ]
        if drawn["models"]:
            sections.append(Section("Models", figures=drawn["models"]))
        if drawn["benchmark"]:
            sections.append(Section("Phantom benchmark", tables=_benchmark_tables(numbers["benchmark"]),
                                    figures=drawn["benchmark"],
                                    text=f"Command: {numbers['benchmark'].get('command', '-')}"))
        page = render_html(f"dwivae report: {data.source.name}", sections)
    return io.write_text_atomic(out, page, force=force)
