"""Score denoisers on phantoms against their ground truth: signal error, DTI errors, time.

For each phantom and method: signal RMSE and PSNR against the clean series in the head mask; the
WLS DTI fit (:mod:`dwivae.physics.tensorfit`, as DIPY's ``TensorModel``) of the method's output
against the fit of the clean series: FA and MD mean absolute error per tissue class, principal-direction angular error in single-fibre
white matter; and the method's wall time. ``results.json`` holds the numbers ``results.md``
prints.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae import io
from dwivae._version import __version__
from dwivae.compare.baselines import METHODS, mean_shift, run_method
from dwivae.errors import InputError
from dwivae.learn.cache import load_or_train
from dwivae.learn.training import TrainedModel
from dwivae.physics import tensorfit
from dwivae.physics.acquisition import Acquisition, load_acquisition
from dwivae.physics.noise import remove_noise_floor
from dwivae.physics.phantom import LABELS

TISSUES = {name: value for value, name in LABELS.items() if value}


def load_phantom(path: str | PathLike[str]) -> dict:
    """A phantom directory written by ``dwivae phantom``: arrays, protocol and settings."""
    path = Path(path)
    if not (path / "phantom.json").is_file():
        raise InputError(f"{path} is not a phantom directory (no phantom.json): make one with `dwivae phantom`")
    info = json.loads((path / "phantom.json").read_text())
    arrays = {name: np.asarray(nib.load(path / f"{name}.nii.gz").dataobj, dtype=np.float32)
              for name in ("dwi", "clean", "labels")}
    acq = load_acquisition(path / "dwi.bval", path / "dwi.bvec")
    return {"name": path.name, "info": info, "acq": acq, "noisy": arrays["dwi"], "clean": arrays["clean"],
            "labels": np.rint(arrays["labels"]).astype(np.uint8)}


DIPY_MIN_SIGNAL = 1e-4
"""Signals are clipped below at this before the logarithm, in the data's units, as DIPY's tensor
fit clips them (``dipy.reconst.dti.MIN_POSITIVE_SIGNAL``): denoised data can hold zeros."""


def dti_fit(data: np.ndarray, acq: Acquisition, mask: np.ndarray) -> dict[str, np.ndarray]:
    """FA, MD (mm²/s) and principal eigenvector of the WLS tensor fit in ``mask``
    (:func:`dwivae.physics.tensorfit.fit_tensor`, the fit of the report and the evaluation), as
    DIPY's ``TensorModel(fit_method="WLS")`` gives them to 1e-6: signals clipped at its
    ``MIN_POSITIVE_SIGNAL`` (denoised data can hold zeros), MD the mean of the eigenvalues with
    negative ones set to 0 (its ``min_diffusivity``; it matters where diffusion is near 0, as in oil)."""
    bvecs = np.where(np.isfinite(acq.bvecs), acq.bvecs, 0.0)
    tensors, _ = tensorfit.fit_tensor(np.asarray(data[mask], dtype=np.float64), acq.bvals, bvecs, method="wls",
                                      min_signal=DIPY_MIN_SIGNAL)
    evals, evecs = tensorfit.eigen(tensors)
    return {"fa": np.nan_to_num(tensorfit.fa(tensors)), "md": np.maximum(evals, 0.0).mean(axis=-1),
            "v1": evecs[..., :, 0]}


def has_kurtosis(acq: Acquisition) -> bool:
    """Whether the protocol supports a kurtosis (DKI) fit: two diffusion-weighted shells or more,
    the highest at b >= 2000 s/mm²."""
    shells = acq.shells()[acq.shells() > acq.b0_threshold]
    return len(shells) >= 2 and shells.max() >= 2000


def mean_kurtosis(data: np.ndarray, acq: Acquisition, mask: np.ndarray) -> np.ndarray:
    """Mean kurtosis of DIPY's WLS kurtosis fit in ``mask`` (clipped to [0, 3], as DIPY's ``mk(0, 3)``)."""
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dki import DiffusionKurtosisModel

    gtab = gradient_table(acq.bvals, bvecs=np.where(np.isfinite(acq.bvecs), acq.bvecs, 0.0),
                          b0_threshold=acq.b0_threshold)
    fit = DiffusionKurtosisModel(gtab, fit_method="WLS").fit(data[mask])
    return np.nan_to_num(fit.mk(min_kurtosis=0, max_kurtosis=3))


def _per_tissue(values: np.ndarray, tissue: np.ndarray, reduce=np.mean) -> dict[str, float]:
    """``reduce`` of ``values`` in each tissue class, and over all of them (``all``)."""
    return {name: float(reduce(values[tissue == v])) if np.any(tissue == v) else float("nan")
            for name, v in TISSUES.items()} | {"all": float(reduce(values))}


def score(denoised: np.ndarray, clean: np.ndarray, labels: np.ndarray, reference: Mapping[str, np.ndarray],
          acq: Acquisition) -> dict:
    """Errors of one denoised series against the clean one and its DTI fit ``reference``.

    Besides the absolute errors: ``signal_bias_dw``, the mean signed error of the diffusion-weighted
    volumes in the mask (a noise floor makes it positive), and ``fa_bias`` and ``md_bias``, the mean
    signed errors per tissue. With ``reference["mk"]`` (multi-shell protocols), also ``mk_mae`` and
    ``mk_bias``: the mean kurtosis of a DKI fit.
    """
    mask = labels > 0
    err = denoised[mask] - clean[mask]
    rmse = float(np.sqrt(np.mean(err ** 2)))
    fit = dti_fit(denoised, acq, mask)
    tissue = labels[mask]
    fa_err = np.abs(fit["fa"] - reference["fa"])
    md_diff = fit["md"] - reference["md"]
    md_err = np.abs(md_diff)
    wm = tissue == TISSUES["WM"]
    cosine = np.abs(np.sum(fit["v1"][wm] * reference["v1"][wm], axis=-1)).clip(0, 1)
    scores = {
        "signal_rmse": rmse,
        "rmse": _per_tissue(np.mean(err ** 2, axis=1), tissue, lambda v: np.sqrt(np.mean(v))),
        "psnr_db": float(20 * np.log10(clean[mask].max() / rmse)) if rmse > 0 else float("inf"),
        "fa_mae": _per_tissue(fa_err, tissue),
        "fa_bias": _per_tissue(fit["fa"] - reference["fa"], tissue),
        "md_mae": _per_tissue(md_err, tissue),
        "md_bias": _per_tissue(md_diff, tissue),
        "signal_bias_dw": float(err[:, ~acq.b0_mask].mean()),
        "angle_wm_deg": float(np.degrees(np.arccos(cosine)).mean()),
    }
    if "mk" in reference:
        mk_diff = mean_kurtosis(denoised, acq, mask) - reference["mk"]
        scores["mk_mae"] = _per_tissue(np.abs(mk_diff), tissue)
        scores["mk_bias"] = _per_tissue(mk_diff, tissue)
    return scores


def _model_for(arch: str, acq: Acquisition, given: Sequence[TrainedModel], seed: int,
               log: Callable[[str], None]) -> TrainedModel:
    for model in given:
        if model.model_config.arch == arch and model.acquisition.mismatch(acq) is None:
            return model
    model, path = load_or_train(acq, arch=arch, seed=seed)
    log(f"{arch} for {acq.describe()}: {path}")
    return model


def run_benchmark(phantoms: Sequence[str | PathLike[str]], *, methods: Sequence[str] = METHODS,
                  models: Sequence[TrainedModel] = (), variants: Mapping[str, TrainedModel] | None = None,
                  threads: int = 1, seed: int = 0,
                  log: Callable[[str], None] = print, fa_maps: Path | None = None,
                  done: Callable[[dict], None] | None = None, bias_correct: bool = False,
                  spatial: float | None = None, pooling: int | None = None) -> dict:
    """Run and score every method on every phantom.

    Parameters
    ----------
    phantoms : sequence of path
        Phantom directories.
    methods : sequence of str
        From ``METHODS``; ``noisy`` is always scored (the floor).
    models : sequence of TrainedModel
        Networks to use for ``vae``/``dae`` when their protocol matches a phantom's; otherwise
        the cached model for the protocol is used, trained first if there is none.
    variants : mapping of str to TrainedModel, optional
        More networks, each scored as a method of its own name (e.g. a VAE trained with Rician
        noise); skipped on phantoms of another protocol.
    threads : int
        Threads for ``dwidenoise`` (the other methods run as they come).
    seed : int
        Seed of the models trained here.
    log : callable
    fa_maps : Path, optional
        Directory for figures of each phantom's FA maps and FA error maps, side by side.
    done : callable, optional
        Called with the results so far after each phantom (e.g. to save them as they come).
    bias_correct : bool
        On phantoms with Rician or noncentral-chi noise, also score each output with its noise
        floor removed (:func:`dwivae.physics.noise.remove_noise_floor`, the phantom's sigma and coils;
        b0 volumes kept) as ``<method>+bc``; not for networks trained on such noise.
    spatial : float, optional
        Also score each network (vae, dae, variants) with its latent means averaged over the
        neighbourhood at this strength (:func:`dwivae.apply.estimate.spatial_codes`), as ``<method>+spatial``
        (the voxel-wise codes, also for a network with a learned context). A network with a
        learned context network (``train --context``) is also scored without it, as
        ``<method>-voxelwise``.
    pooling : int, optional
        Also score each network with the grouped low-rank estimate, groups of about this many
        voxels (``denoise --nonlocal``; sigma measured on the data), as ``<method>+nonlocal``.

    Returns
    -------
    dict
        ``{"dwivae_version", "phantoms": {name: {"settings", "methods": {method: {...}}}}}``.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise InputError(f"unknown method {', '.join(unknown)}: choose from {', '.join(METHODS)}")
    methods = ["noisy", *[m for m in dict.fromkeys(methods) if m != "noisy"]]
    results: dict = {"dwivae_version": __version__, "threads": threads, "phantoms": {}}
    for path in phantoms:
        phantom = load_phantom(path)
        acq, labels, clean = phantom["acq"], phantom["labels"], phantom["clean"]
        mask = labels > 0
        reference = dti_fit(clean, acq, mask)
        if has_kurtosis(acq):
            reference["mk"] = mean_kurtosis(clean, acq, mask)
        entry = {"settings": {k: phantom["info"].get(k) for k in ("tissue", "snr", "noise", "coils", "seed", "shape",
                                                                  "sigma")}
                 | {"protocol": acq.describe()}, "methods": {}}
        maps = {"clean": _fa_slice(reference["fa"], mask)}
        runs = [(m, m, _model_for(m, acq, models, seed, log) if m in ("vae", "dae") else None) for m in methods]
        runs += [(name, model.model_config.arch, model) for name, model in (variants or {}).items()]
        for method, kind, model in runs:
            if model is not None and model.acquisition.mismatch(acq) is not None:
                entry["methods"][method] = {"status": "skipped", "seconds": 0.0,
                                            "note": f"model for another protocol ({model.acquisition.mismatch(acq)})"}
                continue
            result = run_method(kind, phantom["noisy"], acq, mask=mask, model=model, threads=threads,
                                coils=phantom["info"].get("coils") or 1)
            row = {"status": result.status, "note": result.note, "seconds": result.seconds}
            if result.status != "ok":
                log(f"{phantom['name']} {method}: {result.status} ({result.note})")
                entry["methods"][method] = row
                continue
            outputs = [(method, result.denoised, row)]
            info = phantom["info"]
            if model is not None and model.context is not None:
                from dwivae.apply.denoise import denoise
                started = time.perf_counter()
                voxelwise = denoise(phantom["noisy"], acq, model, mask=mask, context=False)
                outputs.append((f"{method}-voxelwise", voxelwise,
                                {"status": "ok", "note": f"{result.note} not used",
                                 "seconds": time.perf_counter() - started}))
            if spatial is not None and model is not None:
                from dwivae.apply.denoise import denoise
                started = time.perf_counter()  # sigma measured on the data, as `denoise --spatial` does
                smoothed = denoise(phantom["noisy"], acq, model, mask=mask, spatial=spatial,
                                   coils=info.get("coils") or 1, context=False)
                outputs.append((f"{method}+spatial", smoothed,
                                {"status": "ok", "note": f"{result.note}, spatial {spatial:g}",
                                 "seconds": time.perf_counter() - started}))
            if pooling is not None and model is not None:
                from dwivae.apply.denoise import denoise
                started = time.perf_counter()
                pooled = denoise(phantom["noisy"], acq, model, mask=mask, pooling=pooling,  # b0 too, as the plain
                                 coils=info.get("coils") or 1, context=False, denoise_b0=True)  # command does
                outputs.append((f"{method}+nonlocal", pooled,
                                {"status": "ok", "note": f"{result.note}, grouped by {pooling} voxels",
                                 "seconds": time.perf_counter() - started}))
            if (bias_correct and info.get("noise") != "gaussian"
                    and (model is None or model.train_config.noise == "gaussian")):
                started = time.perf_counter()
                corrected = result.denoised.copy()
                dw = ~acq.b0_mask
                corrected[..., dw] = np.where(mask[..., None], remove_noise_floor(
                    result.denoised[..., dw], info["sigma"], coils=info.get("coils") or 1), result.denoised[..., dw])
                outputs.append((f"{method}+bc", corrected,
                                dict(row, seconds=result.seconds + time.perf_counter() - started)))
            for name, denoised, scored in outputs:
                scored |= score(denoised, clean, labels, reference, acq)
                scored["mean_shift"] = mean_shift(denoised, phantom["noisy"], mask)
                maps[name] = _fa_slice(dti_fit(denoised, acq, mask)["fa"], mask)
                log(f"{phantom['name']} {name}: FA error {scored['fa_mae']['all']:.4f}, "
                    f"RMSE {scored['signal_rmse']:.2f}, {scored['seconds']:.1f} s")
                entry["methods"][name] = scored
        if fa_maps is not None:
            from dwivae.show.figures import map_grid
            map_grid(maps, fa_maps / f"fa_maps_{phantom['name']}.png", label="FA", vmin=0.0, vmax=1.0,
                     title=f"{phantom['name']}: FA, middle slice (WLS fit)")
            errors = {name: np.abs(fa - maps["clean"]) for name, fa in maps.items() if name != "clean"}
            map_grid(errors, fa_maps / f"fa_errors_{phantom['name']}.png", label="|FA - FA of the clean series|",
                     cmap="magma", vmin=0.0, vmax=0.1, title=f"{phantom['name']}: FA error, middle slice")
        results["phantoms"][phantom["name"]] = entry
        if done is not None:
            done(results)
    return results


def _fa_slice(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    volume = np.zeros(mask.shape)
    volume[mask] = values
    return volume[:, :, mask.shape[2] // 2]


def format_markdown(results: Mapping) -> str:
    """The results as Markdown tables, one per phantom (the numbers of ``results.json``): errors
    over all tissue first, then per tissue (WM, GM, CSF, crossing), MD in 1e-6 mm²/s."""
    lines = []
    for name, entry in results["phantoms"].items():
        s = entry["settings"]
        kurtosis = any("mk_mae" in row for row in entry["methods"].values())
        head = ["method", "RMSE", "FA err", "MD err", *(["MK err"] if kurtosis else []),
                "RMSE WM / GM / CSF / X", "FA err WM / GM / CSF / X", "MD err WM / GM / CSF / X",
                "MD bias WM / GM / CSF / X", *(["MK err WM / GM / CSF / X"] if kurtosis else []), "angle WM (deg)",
                "seconds"]
        lines += [f"### {name}: {s['protocol']}, {s['noise']} noise" + (f" ({s['coils']} coils)" if (s.get('coils') or 1) > 1
                                                                         else "") + f", SNR {s['snr']:g}", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method, row in entry["methods"].items():
            if row["status"] != "ok":
                lines.append(f"| {method} | {row['status']}: {row['note']} |" + " |" * (len(head) - 2))
                continue

            def tissues(key: str, scale: float = 1.0, fmt: str = ".4f") -> str:
                return " / ".join(f"{row[key][t] * scale:{fmt}}" for t in ("WM", "GM", "CSF", "crossing"))

            cells = [method, f"{row['signal_rmse']:.2f}", f"{row['fa_mae']['all']:.4f}",
                     f"{row['md_mae']['all'] * 1e6:.1f}", *([f"{row['mk_mae']['all']:.3f}"] if kurtosis else []),
                     tissues("rmse", fmt=".1f"), tissues("fa_mae"), tissues("md_mae", 1e6, ".1f"),
                     tissues("md_bias", 1e6, ".1f"), *([tissues("mk_mae", fmt=".3f")] if kurtosis else []),
                     f"{row['angle_wm_deg']:.2f}", f"{row['seconds']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_results(results: Mapping, out: str | PathLike[str], *, force: bool = False) -> dict[str, Path]:
    """``results.json`` and ``results.md`` in ``out``."""
    out = Path(out)
    return {"json": io.write_json_atomic(out / "results.json", results, force=force),
            "md": io.write_text_atomic(out / "results.md", format_markdown(results), force=force)}
