"""Which figures to draw for models, denoised volumes and benchmark runs, and what they show.

``model_figures`` and ``volume_figures`` compute what the study's figures show and draw them with
:mod:`dwivae.show.figures`; ``draw_figures`` does both for the outputs of ``dwivae denoise`` (their JSON
sidecars name the input, its gradient files and the model) and ``save_figures`` writes them with a
``figures.json`` listing (``dwivae figures``).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from dwivae import io
from dwivae.errors import InputError
from dwivae.learn.checkpoint import load_model, model_fingerprint
from dwivae.learn.dataset import noisy_copies
from dwivae.learn.latent import latent_influence, latent_statistics, latent_traversal
from dwivae.learn.training import TrainedModel, model_output
from dwivae.physics.acquisition import Acquisition, load_acquisition
from dwivae.physics.signals import normalise_by_b0
from dwivae.physics.simulate import STUDY_NOISE_LEVELS, add_gaussian_noise, random_tensors, tensor_signals
from dwivae.physics.tensorfit import fa, fit_tensor, md
from dwivae.show import figures

FORMATS = ("png", "svg")
TRAVERSAL_STEPS = np.linspace(-2.0, 2.0, 5)
EXAMPLE_FA = (0.1, 0.5, 0.85)
"""The simulated examples are tensors with FA near these values (CSF/grey matter to white matter)."""


@dataclass(frozen=True)
class Figure:
    """A drawn figure and what it shows."""

    path: Path
    title: str
    caption: str


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown figure format {fmt!r}: choose one of {', '.join(FORMATS)}")


def _simulated_examples(acq: Acquisition, *, sigma: float, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Clean and noisy signals of tensors with FA near ``EXAMPLE_FA``, and a label for each."""
    rng = np.random.default_rng(seed)
    D = random_tensors(4000, rng=rng)
    fas = fa(D)
    pick = [int(np.argmin(np.abs(fas - target))) for target in EXAMPLE_FA]
    clean = tensor_signals(D[pick], acq)
    noisy = add_gaussian_noise(clean, sigma, rng=rng)
    return clean, noisy, [f"FA {fas[i]:.2f}, MD {md(D[i]) * 1e3:.2f}e-3" for i in pick]


def _simulated_signals(acq: Acquisition, *, seed: int, n_atoms: int = 1000) -> np.ndarray:
    """Random tensors' signals at every study noise level: the data a model was trained on."""
    rng = np.random.default_rng(seed)
    clean = tensor_signals(random_tensors(n_atoms, rng=rng), acq)
    return noisy_copies(clean, STUDY_NOISE_LEVELS, rng=rng)[0]


def model_figures(models: Mapping[str, TrainedModel], out_dir: str | PathLike[str], *, fmt: str = "png",
                  sigma: float = 0.2, signals: np.ndarray | None = None, seed: int = 0) -> tuple[list[Figure], dict]:
    """Draw the model figures of the study: loss curves, reconstructions, latent space.

    Parameters
    ----------
    models : mapping of str to TrainedModel
        By name; all for one protocol.
    out_dir : path
        Existing directory for the figure files.
    fmt : {"png", "svg"}
    sigma : float
        Noise standard deviation (fraction of S0) of the reconstruction examples.
    signals : (M, N) ndarray, optional
        Normalised signals whose latent codes are analysed (e.g. in-vivo voxels); default:
        simulated signals at every study noise level.
    seed : int
        Fixes the simulated examples.

    Returns
    -------
    figures : list of Figure
    numbers : dict
        Per model: test MSE, training time and the latent statistics.
    """
    check_format(fmt)
    out_dir = Path(out_dir)
    names = list(models)
    acq = models[names[0]].acquisition
    for name in names[1:]:
        problem = models[name].acquisition.mismatch(acq)
        if problem is not None:
            raise InputError(f"models {names[0]} and {name} are for different protocols ({problem}): "
                             "draw their figures separately")
    drawn = [Figure(figures.loss_curves({k: m.history for k, m in models.items()}, out_dir / f"loss_curves.{fmt}"),
                    "Training curves",
                    "Reconstruction (Huber), KL and total loss per epoch, and the MSE on held-out "
                    "simulated signals every few epochs (the study's Figure 3).")]
    clean, noisy, labels = _simulated_examples(acq, sigma=sigma, seed=seed)
    recon = {k: model_output(m, noisy) for k, m in models.items()}
    drawn.append(Figure(figures.reconstruction_examples(clean, noisy, recon, out_dir / f"reconstructions.{fmt}",
                                                        sigma=sigma, labels=labels),
                        "Simulated reconstructions",
                        f"Clean, noisy (Gaussian, sigma = {sigma:g} of S0) and reconstructed signals of three "
                        "random tensors (the study's Figures 2 and 4)."))
    if signals is None:
        signals = _simulated_signals(acq, seed=seed)
    numbers: dict = {}
    vaes: dict = {}
    for name, model in models.items():
        stats = latent_statistics(model, signals)
        influence = latent_influence(model, signals)
        numbers[name] = {"arch": model.model_config.arch, "latent": model.model_config.latent,
                         "test_mse": model.summary.get("test_mse"), "train_seconds": model.summary.get("train_seconds"),
                         "beta_max": model.train_config.beta_max, "latent_statistics": stats.to_json(),
                         "latent_influence": [float(v) for v in influence]}
        if model.model_config.arch == "vae":
            vaes[name] = stats
        path = figures.latent_influence(latent_traversal(model, signals, steps=TRAVERSAL_STEPS), influence,
                                        out_dir / f"latent_influence_{name}.{fmt}", name=name, steps=TRAVERSAL_STEPS)
        drawn.append(Figure(path, f"Latent influence: {name}",
                            "Decoded signal as each latent moves from the mean code (in standard deviations "
                            "of its posterior mean over the data), and the RMS change of the reconstruction "
                            "when the latent is held at its mean (the study's Figure 8)."))
    if vaes:
        drawn.append(Figure(figures.latent_gaussians(vaes, out_dir / f"latent_gaussians.{fmt}"),
                            "Latent distributions",
                            "Each latent's typical posterior N(mean mu, mean sigma) and its KL divergence "
                            "from the prior; dashed: inactive (posterior mean varies by less than 0.1 sd "
                            "over the data). Compare latent 7 with 10, and a model trained without KL "
                            "(--beta-max 0; the study's Figures 7 and 9)."))
    return drawn, numbers


def benchmark_figures(results_dir: str | PathLike[str], out_dir: str | PathLike[str], *,
                      fmt: str = "png") -> tuple[list[Figure], dict]:
    """Figures of a ``dwivae benchmark`` run: errors per tissue and method, and its FA maps.

    Returns
    -------
    figures : list of Figure
    results : dict
        The run's ``results.json``.
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not (results_dir / "results.json").is_file():
        raise InputError(f"{results_dir} holds no results.json: give the --out directory of `dwivae benchmark`")
    results = json.loads((results_dir / "results.json").read_text())
    drawn = []
    for name, entry in results["phantoms"].items():
        s = entry["settings"]
        title = f"{name}: {s['protocol']}, {s['noise']} noise, SNR {s['snr']:g}"
        drawn.append(Figure(figures.benchmark_errors(entry["methods"], out_dir / f"benchmark_{name}.{fmt}", title=title),
                            f"Benchmark: {name}", "FA and MD errors against the clean phantom's DTI fit, per "
                                                  "tissue class, and each method's wall time."))
        maps = results_dir / f"fa_maps_{name}.png"
        if maps.is_file():
            drawn.append(Figure(maps, f"FA maps: {name}", "FA of the clean phantom, the noisy one and each method."))
        errors = results_dir / f"fa_errors_{name}.png"
        if errors.is_file():
            drawn.append(Figure(errors, f"FA errors: {name}", "Absolute FA error of the noisy phantom and of each "
                                                             "method against the clean phantom's FA."))
    return drawn, results


def changed_voxels(noisy: np.ndarray, denoised: Mapping[str, np.ndarray], dw: np.ndarray) -> np.ndarray:
    """(X, Y, Z) bool: voxels that some method changed in some diffusion-weighted volume."""
    mask = np.zeros(noisy.shape[:3], dtype=bool)
    for volume in denoised.values():
        mask |= np.any(volume[..., dw] != noisy[..., dw], axis=-1)
    return mask


def volume_figures(noisy: np.ndarray, denoised: Mapping[str, np.ndarray], acq: Acquisition,
                   out_dir: str | PathLike[str], *, fmt: str = "png", slice_index: int | None = None,
                   volume: int | None = None, slices: tuple[int, int] | None = None) -> tuple[list[Figure], dict]:
    """Draw the in-vivo figures: images, residual maps and histograms, FA maps.

    Parameters
    ----------
    noisy : (X, Y, Z, N) ndarray
        The measured series.
    denoised : mapping of str to (X, Y, Z, N) ndarray
        Denoised series by method.
    acq : Acquisition
    out_dir : path
    fmt : {"png", "svg"}
    slice_index : int, optional
        Axial slice shown (default: the one with most denoised voxels).
    volume : int, optional
        Volume shown (default: the first diffusion-weighted one).
    slices : (int, int), optional
        First and last axial slice of the residual histograms (default: all; the study used
        22-94 to leave out the neck).

    Returns
    -------
    figures : list of Figure
    numbers : dict
        Per method (and ``noisy``): residual mean and standard deviation, mean FA and MD in the
        denoised voxels.
    """
    check_format(fmt)
    out_dir = Path(out_dir)
    dw = ~acq.b0_mask
    mask = changed_voxels(noisy, denoised, dw)
    if not mask.any():
        raise InputError("the denoised volumes equal the input in every voxel: nothing to show")
    if slice_index is None:
        counts = mask.sum(axis=(0, 1))
        fullest = np.flatnonzero(counts == counts.max())
        z = int(fullest[np.argmin(np.abs(fullest - noisy.shape[2] // 2))])  # ties: nearest the middle
    else:
        z = slice_index
    if not 0 <= z < noisy.shape[2]:
        raise InputError(f"slice {z} is outside the image's {noisy.shape[2]} axial slices")
    v = int(np.flatnonzero(dw)[0]) if volume is None else volume
    if not 0 <= v < noisy.shape[3]:
        raise InputError(f"volume {v} is outside the image's {noisy.shape[3]} volumes")
    lo, hi = (0, noisy.shape[2] - 1) if slices is None else slices
    if not 0 <= lo <= hi < noisy.shape[2]:
        raise InputError(f"slice range {lo}-{hi} is outside the image's {noisy.shape[2]} axial slices")
    b = float(acq.bvals[v])
    drawn = [Figure(figures.in_vivo_comparison(noisy, denoised, out_dir / f"in_vivo.{fmt}", slice_index=z,
                                               volume=v, bvalue=b),
                    "Denoised images",
                    "Measured and denoised images of one slice and volume, and the difference of the first "
                    "two methods (the study's Figure 5)."),
             Figure(figures.residual_maps(noisy, denoised, out_dir / f"residual_maps.{fmt}", dw=dw, slice_index=z,
                                          volume=v),
                    "Residual maps",
                    "Denoised minus measured in one volume, and its RMS over the diffusion-weighted volumes. "
                    "A denoiser that removes only noise leaves no anatomy here.")]
    band = np.zeros_like(mask)
    band[:, :, lo:hi + 1] = mask[:, :, lo:hi + 1]
    residuals = {k: (d[band][:, dw] - noisy[band][:, dw]).ravel() for k, d in denoised.items()}
    drawn.append(Figure(figures.residual_histograms(residuals, out_dir / f"residual_histograms.{fmt}",
                                                    description=f"slices {lo}-{hi}, all DW volumes"),
                        "Residual histograms",
                        "Denoised minus measured over the denoised voxels of a slab and every diffusion-"
                        "weighted volume, with a Gaussian of the same mean and sd (the study's Figure 6)."))
    fa_maps, numbers = {}, {}
    bvecs = np.where(np.isfinite(acq.bvecs), acq.bvecs, 0.0)
    for name, series in ({"noisy": noisy} | dict(denoised)).items():
        D, _ = fit_tensor(series[mask], acq.bvals, bvecs, method="wls")
        values = fa(D)
        fa_map = np.zeros(mask.shape)
        fa_map[mask] = values
        fa_maps[name] = fa_map[:, :, z]
        numbers[name] = {"fa_mean": float(values.mean()), "md_mean": float(md(D).mean())}
        if name != "noisy":
            r = residuals[name]
            numbers[name] |= {"residual_mean": float(r.mean()), "residual_sd": float(r.std())}
    drawn.append(Figure(figures.map_grid(fa_maps, out_dir / f"fa_maps.{fmt}", title=f"FA (WLS tensor fit), slice {z}",
                                         label="FA", vmin=0.0, vmax=1.0),
                        "FA maps", "Fractional anisotropy of a weighted least-squares tensor fit to each series, "
                                   "in the denoised voxels."))
    return drawn, numbers


@dataclass
class DenoisedOutputs:
    """Denoised series of one input, read back with what their sidecars say about them."""

    source: Path
    acq: Acquisition
    noisy: np.ndarray
    denoised: dict[str, np.ndarray]
    sidecars: dict[str, dict]
    paths: dict[str, Path]


def _read_sidecar(path: Path) -> dict:
    sidecar = io.sidecar_path(path)
    if not sidecar.is_file():
        raise InputError(f"{path} has no sidecar {sidecar.name}: figures and reports read outputs of "
                         "`dwivae denoise`")
    info = json.loads(sidecar.read_text())
    source = Path(info["Sources"][0])
    if not source.is_file():
        raise InputError(f"the input {source} named in {sidecar.name} is gone: it is needed to compare")
    return info


def load_outputs(outputs: Sequence[str | PathLike[str]]) -> DenoisedOutputs:
    """Read denoised NIfTI files of one input, their sidecars, the input and its protocol.

    Methods are named by architecture (``VAE``, ``DAE``), or by file name when two share one.
    """
    paths = [Path(p) for p in outputs]
    infos = [_read_sidecar(p) for p in paths]
    source = Path(infos[0]["Sources"][0])
    if any(Path(i["Sources"][0]) != source for i in infos):
        raise InputError("the outputs come from different inputs: compare the outputs of one input at a time")
    gradients = infos[0].get("GradientFiles")
    bval, bvec = (gradients["bval"], gradients["bvec"]) if gradients else io.find_gradient_files(source)
    acq = load_acquisition(bval, bvec)
    source_img = io.load_dwi(source)
    names = [i["Model"]["arch"].upper() for i in infos]
    if len(set(names)) < len(names):
        names = [io.sidecar_path(p).stem for p in paths]
    denoised = {}
    for name, path, info in zip(names, paths, infos):
        # a sidecar's paths are followed only to files that belong to this output
        img = io.load_dwi(path)
        if img.shape != source_img.shape or not np.allclose(img.affine, source_img.affine, atol=io.AFFINE_TOLERANCE):
            raise InputError(f"{io.sidecar_path(path).name} names {source} as the input of {path.name}, but they are "
                             "not on one grid: the sidecar does not belong to this output")
        if info.get("ProtocolFingerprint") != acq.fingerprint():
            raise InputError(f"the gradient files {bval} named in {io.sidecar_path(path).name} are not the protocol "
                             f"{path.name} was denoised with: the sidecar does not belong to this output")
        denoised[name] = np.asarray(img.dataobj, dtype=np.float32)
    noisy = np.asarray(source_img.dataobj, dtype=np.float32)
    return DenoisedOutputs(source, acq, noisy, denoised, dict(zip(names, infos)), dict(zip(names, paths)))


def draw_figures(out_dir: str | PathLike[str], *, outputs: DenoisedOutputs | None = None,
                 models: Mapping[str, TrainedModel] | None = None, benchmark: str | PathLike[str] | None = None,
                 fmt: str = "png", slices: tuple[int, int] | None = None,
                 seed: int = 0) -> tuple[dict[str, list[Figure]], dict]:
    """Every figure for denoised outputs and models: what ``dwivae figures`` and the report show.

    Parameters
    ----------
    out_dir : path
        Existing directory for the figure files.
    outputs : DenoisedOutputs, optional
        In-vivo figures are drawn for these; the models named in their sidecars are added to
        ``models`` (unless given there) when their directories exist, and the latents are
        analysed on the input's voxels.
    models : mapping of str to TrainedModel, optional
    benchmark : path, optional
        The output directory of ``dwivae benchmark``.
    fmt, slices, seed
        See :func:`volume_figures` and :func:`model_figures`.

    Returns
    -------
    figures : dict
        ``{"in_vivo": [...], "models": [...], "benchmark": [...]}``.
    numbers : dict
        The same keys: what the drawing functions returned (the benchmark's ``results.json``).
    """
    models = dict(models or {})
    drawn: dict[str, list[Figure]] = {"in_vivo": [], "models": [], "benchmark": []}
    numbers: dict = {"in_vivo": {}, "models": {}, "benchmark": {}}
    if benchmark is not None:
        drawn["benchmark"], numbers["benchmark"] = benchmark_figures(benchmark, out_dir, fmt=fmt)
    signals = None
    if outputs is not None:
        given = {model_fingerprint(m) for m in models.values()}
        for name, info in outputs.sidecars.items():
            model_dir = Path(info["Model"].get("path", ""))
            if info["Model"].get("fingerprint") not in given and (model_dir / "model.json").is_file():
                model = load_model(model_dir)
                if model_fingerprint(model) == info["Model"].get("fingerprint"):  # the model that denoised it
                    models.setdefault(name, model)
        drawn["in_vivo"], numbers["in_vivo"] = volume_figures(outputs.noisy, outputs.denoised, outputs.acq, out_dir,
                                                              fmt=fmt, slices=slices)
        mask = changed_voxels(outputs.noisy, outputs.denoised, ~outputs.acq.b0_mask)
        normalised, _, valid = normalise_by_b0(outputs.noisy[mask], outputs.acq)
        signals = normalised[valid][np.random.default_rng(seed).permutation(int(valid.sum()))[:20000]]
    if models:
        drawn["models"], numbers["models"] = model_figures(models, out_dir, fmt=fmt, signals=signals, seed=seed)
    return drawn, numbers


def save_figures(out_dir: str | PathLike[str], *, outputs: Sequence[str | PathLike[str]] = (),
                 models: Mapping[str, str | PathLike[str]] | None = None,
                 benchmark: str | PathLike[str] | None = None, fmt: str = "png",
                 slices: tuple[int, int] | None = None, seed: int = 0, force: bool = False) -> Path:
    """Draw every figure into ``out_dir`` and list them in ``figures.json`` with their numbers.

    Parameters
    ----------
    out_dir : path
        Created if missing; refused when it holds a ``figures.json`` unless ``force``.
    outputs : sequence of path
        Denoised NIfTI files of one input (see :func:`load_outputs`).
    models : mapping of str to path, optional
        Model directories by name.
    benchmark, fmt, slices, seed
        See :func:`draw_figures`.
    force : bool

    Returns
    -------
    Path
        The ``figures.json`` file.
    """
    if not outputs and not models and benchmark is None:
        raise InputError("nothing to draw: give model directories, denoised outputs (--denoised) or --benchmark")
    out_dir = Path(out_dir)
    listing = out_dir / "figures.json"
    if listing.exists() and not force:
        raise InputError(f"{listing} exists; pass --force to overwrite it")
    data = load_outputs(outputs) if outputs else None
    trained = {name: load_model(path) for name, path in (models or {}).items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn, numbers = draw_figures(out_dir, outputs=data, models=trained, benchmark=benchmark, fmt=fmt,
                                  slices=slices, seed=seed)
    for figure in drawn["benchmark"]:
        if figure.path.parent.resolve() != out_dir.resolve():
            shutil.copy(figure.path, out_dir / figure.path.name)
    entries = [{"group": group, "file": f.path.name, "title": f.title, "caption": f.caption}
               for group, figs in drawn.items() for f in figs]
    return io.write_json_atomic(listing, {"figures": entries, "numbers": numbers}, force=True)
