"""Denoise a NIfTI file: read, estimate the noise, apply the model, write the outputs atomically.

Files are processed slab by slab (the grouped estimate reads the masked volume whole), so memory
follows the slab size, not the number of slices; the outputs keep the input's header and get a
JSON sidecar with provenance.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from dwivae import io
from dwivae._version import __version__
from dwivae.apply.estimate import (
    Model,
    check_options,
    denoise_signals,
    learned_context_codes,
    nonlocal_signals,
    spatial_codes,
)
from dwivae.apply.grouping import BLOCK as GROUPING_BLOCK
from dwivae.apply.grouping import PASSES as GROUPING_PASSES
from dwivae.apply.mask import auto_mask
from dwivae.apply.outputs import OutputSet, check_outputs
from dwivae.errors import InputError
from dwivae.learn.checkpoint import model_fingerprint
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.noise import SIGMA_METHODS, estimate_sigma, floor_in_data
from dwivae.physics.signals import b0_means


@dataclass
class DenoiseStats:
    """What a denoising run did: voxel counts and time."""

    denoised: int = 0
    skipped: int = 0
    outside_mask: int = 0
    non_finite: int = 0
    seconds: float = 0.0
    engine: str = "torch"
    floor_in_data: bool = True

    def line(self) -> str:
        """One log line for the user."""
        return (f"denoised {self.denoised} voxels, left {self.skipped} with S0 <= 0 or non-finite values "
                f"and {self.outside_mask} outside the mask unchanged ({self.non_finite} voxels of the image hold "
                f"non-finite values), in {self.seconds:.2f} s ({self.engine} forward pass)"
                + ("" if self.floor_in_data else "; the diffusion-weighted signal shows no noise floor at this sigma "
                   "(negative values, or voxels below the floor): it was kept, not removed"))


def output_paths(out: str | PathLike[str], *, uncertainty: int = 0, sigma: bool = False) -> dict[str, Path]:
    """Every file a run of :func:`denoise_file` writes, by role, the sidecar last: ``denoised``
    (``out``), ``residual`` (``<out>_residual``), ``sigma`` (``<out>_sigma``, the noise level it
    used, where it used one), ``uncertainty`` (with ``uncertainty > 0``) and ``sidecar``
    (``<out>.json``)."""
    paths = {"denoised": Path(out), "residual": io.output_paths(out, "_residual")}
    if sigma:
        paths["sigma"] = io.output_paths(out, "_sigma")
    if uncertainty:
        paths["uncertainty"] = io.output_paths(out, "_uncertainty")
    paths["sidecar"] = io.sidecar_path(out)
    return paths


def denoise_file(
    dwi: str | PathLike[str],
    acq: Acquisition,
    model: Model | None,
    out: str | PathLike[str],
    *,
    mask: str | PathLike[str] | None = "auto",
    denoise_b0: bool = False,
    uncertainty: int = 0,
    seed: int = 0,
    slab: int = 8,
    batch_size: int = 1 << 16,
    force: bool = False,
    progress: bool = False,
    provenance: dict | None = None,
    bias_correct: bool = False,
    sigma: float | None = None,
    coils: int = 1,
    spatial: float | None = None,
    context: bool = True,
    threads: int | None = None,
    inputs: Iterable[str | PathLike[str]] = (),
    pooling: int | None = None,
    keep_floor: bool = False,
    names: Mapping[str, str | PathLike[str]] | None = None,
    arch: str = "vae",
    log: Callable[[str], None] = lambda line: None,
) -> tuple[dict[str, Path], DenoiseStats]:
    """Denoise a NIfTI file slab by slab and write the denoised series and its residual.

    Parameters
    ----------
    dwi : path
        4D NIfTI (.nii or .nii.gz).
    acq : Acquisition
        Its protocol.
    model : TrainedModel, FrozenModel or None
        None: the plain command's model for the data's protocol and noise, trained or read from
        the cache (:func:`dwivae.apply.plain.matched_model`, of architecture ``arch``, logging to
        ``log``), with the noise level and mask of this run; its directory goes into the sidecar.
    out : path
        The denoised series; ``<out>_residual`` (input minus output) is written beside it, and
        ``<out>_uncertainty`` with ``uncertainty > 0``.
    mask : path, "auto" or None
        A mask file on the image's grid, ``"auto"`` for DIPY ``median_otsu`` on the mean b0, or
        None for every voxel.
    denoise_b0, uncertainty, seed, slab, batch_size, force, progress
        Also denoise b0 volumes; number of posterior samples for the uncertainty map; the seed of
        its samples and of the grouping; slices per slab; voxels per forward pass; overwrite
        outputs; show a progress bar.
    provenance : dict, optional
        Extra entries for the JSON sidecar (e.g. the command line); a ``Model`` dict is merged.
    bias_correct : bool
        Remove the Rician / noncentral-chi noise floor from the denoised volumes (for models
        trained on Gaussian noise), with noise level ``sigma`` (default: estimated inside the mask,
        or the automatic mask with ``mask=None``, by the MP-PCA noise estimate; see
        :func:`dwivae.physics.noise.estimate_sigma`) and
        ``coils`` (1: Rician).
    spatial : float, optional
        Decode latent means averaged over each voxel's neighbourhood with this strength
        (:func:`spatial_codes`; one more pass over the file to encode it first).
    context : bool
        Use the model's learned context network, if it has one (one more pass over the file to
        encode it first); False denoises voxel by voxel.
    threads : int, optional
        Threads of the compiled forward pass (default: the CPUs this process may use).
    inputs : iterable of path
        Other files the run reads (gradient files, the model directory), which no output may
        replace; the image, its own JSON sidecar and the mask file are always protected.
    pooling : int, optional
        Estimate each voxel as the low-rank part of a group of about this many voxels of like
        latent codes, noise floor removed (:func:`nonlocal_signals`; the series is read whole, and
        held in memory with its latent codes).
    keep_floor : bool
        With ``pooling``: keep the noise floor in the output, as MP-PCA does. It is kept in any case
        where the data show no floor at ``sigma`` (:func:`dwivae.physics.noise.floor_in_data`).
    names : mapping of str to path, optional
        Other paths for the outputs, by role (:func:`output_paths`; e.g. BIDS derivative names);
        the roles are those of :func:`output_paths`, whose order (the sidecar last) is kept.

    Notes
    -----
    The sidecar ``<out>.json`` records, as BIDS derivatives do, the tool and version, the source,
    the model (architecture, latent size, fingerprint), the protocol fingerprint, the settings
    and what was done.

    Returns
    -------
    paths : dict of str to Path
        See :func:`output_paths`; all of them are written, or none (:class:`dwivae.apply.outputs.OutputSet`).
    stats : DenoiseStats
    """
    started = time.perf_counter()
    img = io.load_dwi(dwi)
    if img.shape[3] != acq.n_volumes:
        raise InputError(f"{Path(dwi).name} has {img.shape[3]} volumes but the gradient files have "
                         f"{acq.n_volumes}: give the .bval/.bvec of this image")
    options = {"spatial": spatial, "uncertainty": uncertainty, "pooling": pooling, "context": context,
               "bias_correct": bias_correct, "sigma": sigma, "coils": coils}
    if model is not None:
        context = check_options(model, acq, **options)
    uses_sigma = bias_correct or spatial is not None or pooling is not None
    paths = check_outputs(_renamed(output_paths(out, uncertainty=uncertainty, sigma=uses_sigma), names),
                          inputs=[dwi, io.sidecar_path(dwi), *inputs, *([mask] if mask not in ("auto", None) else [])],
                          force=force)
    inside = (auto_mask(img, acq) if mask == "auto" else
              np.ones(img.shape[:3], bool) if mask is None else io.load_mask(mask, img))
    needs_brain = model is None or (sigma is None and uses_sigma)  # where the noise is measured
    brain = (inside if mask is not None else auto_mask(img, acq)) if needs_brain else None
    sigma, sigma_from = _noise_level(img, acq, brain) if sigma is None and needs_brain else (sigma, "given")
    if model is None:
        from dwivae.apply.plain import matched_model

        model, model_dir = matched_model(acq, img.dataobj, brain, coils=coils, arch=arch, seed=seed, sigma=sigma,
                                         sigma_from="given" if sigma_from == "given" else f"the {sigma_from}",
                                         log=log)
        context = check_options(model, acq, **options)
        provenance = {**(provenance or {}), "Model": {**(provenance or {}).get("Model", {}),
                                                      "path": str(model_dir.resolve())}}
    codes = h = None
    if spatial is not None:
        codes, h = spatial_codes(io.iter_slabs(img, slab=slab), inside, acq, model, sigma=sigma, strength=spatial,
                                 coils=coils)
    elif context:
        codes = learned_context_codes(io.iter_slabs(img, slab=slab), inside, acq, model)
    pooled, floor_seen = None, True
    if pooling is not None:
        pooled, floor_seen = _grouped(img, inside, acq, model, sigma=sigma, group=pooling, coils=coils,
                                      denoise_b0=denoise_b0, seed=seed, keep_floor=keep_floor, slab=slab)
        keep_floor = keep_floor or not floor_seen
        rows = np.full(inside.shape, -1, np.int64)  # each mask voxel's row of ``pooled``
        rows[inside] = np.arange(len(pooled))
    stats = DenoiseStats(outside_mask=int((~inside).sum()),
                         engine="torch" if model.compiled() is None else "compiled",
                         floor_in_data=floor_seen)

    def estimate(signals: np.ndarray, z0: int, z1: int, generator) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sel = inside[:, :, z0:z1]
        if pooled is not None:
            return pooled[rows[:, :, z0:z1][sel]], b0_means(signals, acq)[1], None
        return denoise_signals(signals, acq, model, denoise_b0=denoise_b0, batch_size=batch_size,
                               posterior_samples=uncertainty, generator=generator,
                               bias_sigma=sigma if bias_correct else None, coils=coils,
                               codes=codes[:, :, z0:z1][sel] if codes is not None else None, threads=threads)

    with OutputSet(paths, force=force) as staged:
        _write_slabs(img, inside, paths, staged, estimate, sigma=sigma, uncertainty=uncertainty, seed=seed,
                     slab=slab, stats=stats, progress=progress)
        stats.seconds = time.perf_counter() - started
        description = (", low-rank over groups of voxels of like latent codes"
                       + (", noise floor kept" if keep_floor else ", noise floor removed") if pooling is not None
                       else " and a learned network over each voxel's neighbourhood" if context
                       else ", voxel by voxel")
        settings = {
            "Mask": str(mask),
            "DenoiseB0": denoise_b0,
            "PosteriorSamples": uncertainty,
            "Spatial": ({"Strength": spatial, "LatentScale": h, "Radius": 1, "NoiseSigma": sigma,
                         "SigmaFrom": sigma_from} if spatial is not None else None),
            "Context": ({"Radius": model.context.config.radius, "Learned": True} if context else None),
            "NonLocal": ({"GroupSize": pooling, "Block": GROUPING_BLOCK, "Passes": GROUPING_PASSES,
                          "NoiseFloorRemoved": not keep_floor, "NoiseFloorInData": floor_seen,
                          "NoiseSigma": sigma, "SigmaFrom": sigma_from, "Coils": coils}
                         if pooling is not None else None),
            "BiasCorrection": ({"NoiseSigma": sigma, "SigmaFrom": sigma_from, "Coils": coils} if bias_correct
                               else None),
        }
        sidecar = _sidecar(dwi, acq, model, paths, stats, description=description, settings=settings,
                           provenance=provenance)
        staged.temp("sidecar").write_text(io.json_text(sidecar), encoding="utf-8")
    return paths, stats


def _renamed(paths: dict[str, Path], names: Mapping[str, str | PathLike[str]] | None) -> dict[str, Path]:
    """``paths`` with the paths of ``names`` instead, which must name the same roles."""
    if names is None:
        return paths
    if set(names) != set(paths):
        raise ValueError(f"names must give the outputs {sorted(paths)}, not {sorted(names)}")
    return {role: Path(names[role]) for role in paths}


def _noise_level(img, acq: Acquisition, brain: np.ndarray) -> tuple[float, str]:
    """The noise level of the series (per real channel) and how it was measured: the MP-PCA
    estimate in the brain (background voxels have Rayleigh noise, whose spread is 0.43 sigma²),
    read from the central slices it uses only."""
    return estimate_sigma(img.dataobj, acq, brain), SIGMA_METHODS["mppca"]


def _grouped(img, inside: np.ndarray, acq: Acquisition, model: Model, *, sigma: float, group: int, coils: int,
             denoise_b0: bool, seed: int, keep_floor: bool, slab: int) -> tuple[np.ndarray, bool]:
    """The grouped estimate (:func:`dwivae.apply.estimate.nonlocal_signals`) of the mask's voxels
    (M, N), in the order of ``inside``'s boolean indexing, and whether their diffusion-weighted
    signal shows the noise floor (kept where it does not)."""
    signals = np.concatenate([data for _, _, data in io.iter_slabs(img, slab=slab)], axis=2)[inside]
    floor_seen = floor_in_data(signals, sigma, coils=coils, volumes=~acq.b0_mask)
    pooled = nonlocal_signals(signals, np.argwhere(inside), acq, model, sigma=sigma, group=group, coils=coils,
                              denoise_b0=denoise_b0, seed=seed, keep_floor=keep_floor or not floor_seen)
    return pooled, floor_seen


def _write_slabs(img, inside: np.ndarray, paths: dict[str, Path], staged: OutputSet, estimate, *,
                 sigma: float | None, uncertainty: int, seed: int, slab: int, stats: DenoiseStats,
                 progress: bool) -> None:
    """Read the series slab by slab, estimate its masked voxels (``estimate(signals, z0, z1,
    generator)`` -> denoised, valid, std) and write every NIfTI output, counting into ``stats``."""
    from tqdm import tqdm

    generator = None
    if uncertainty:
        import torch

        generator = torch.Generator().manual_seed(seed)
    any_signal = False
    with ExitStack() as stack:
        writers = {name: stack.enter_context(io.NiftiWriter(path, img.shape[:3] if name == "sigma" else img.shape,
                                                            img, temp=staged.temp(name)))
                   for name, path in paths.items() if name != "sidecar"}
        for z0, z1, data in tqdm(io.iter_slabs(img, slab=slab), total=-(-img.shape[2] // slab),
                                 desc="denoise", unit="slab", disable=not progress):
            sel = inside[:, :, z0:z1]
            stats.non_finite += int((~np.isfinite(data)).any(axis=-1).sum())
            signals = data[sel]
            any_signal = any_signal or bool(np.any(signals[np.isfinite(signals)] != 0))
            denoised, valid, std = estimate(signals, z0, z1, generator)
            stats.denoised += int(valid.sum())
            stats.skipped += int((~valid).sum())
            result = data.copy(order="K")  # the file's (Fortran) order: slabs are written without a transpose
            result[sel] = denoised
            writers["denoised"].write_slab(z0, z1, result)
            writers["residual"].write_slab(z0, z1, data - result)
            if "sigma" in writers:  # one noise level for the series, as dwidenoise -noise maps it in the mask
                writers["sigma"].write_slab(z0, z1, np.where(sel, np.float32(sigma), np.float32(0)))
            if uncertainty:
                slab_std = np.zeros_like(data)
                slab_std[sel] = std
                writers["uncertainty"].write_slab(z0, z1, slab_std)
        if not any_signal:
            raise InputError(f"{Path(img.get_filename() or 'the image').name} is all zero inside the mask: "
                             "check the image and the mask")


def _sidecar(dwi: str | PathLike[str], acq: Acquisition, model: Model, paths: dict[str, Path], stats: DenoiseStats,
             *, description: str, settings: dict, provenance: dict | None) -> dict:
    """The JSON sidecar of a run, as BIDS derivatives describe theirs."""
    extra = dict(provenance or {})
    return {
        "Description": "Denoised with an autoencoder trained on simulated q-space signals" + description,
        "GeneratedBy": [{"Name": "dwivae", "Version": __version__}],
        "Sources": [str(Path(dwi).resolve())],
        "Model": {"arch": model.model_config.arch, "latent": model.model_config.latent,
                  "fingerprint": model_fingerprint(model), **extra.pop("Model", {})},
        "ProtocolFingerprint": acq.fingerprint(),
        **settings,
        "VoxelsDenoised": stats.denoised,
        "VoxelsSkipped": stats.skipped,
        "VoxelsOutsideMask": stats.outside_mask,
        "VoxelsNonFinite": stats.non_finite,
        "Seconds": round(stats.seconds, 3),
        "ForwardPass": stats.engine,
        "Outputs": {name: path.name for name, path in paths.items() if name != "sidecar"},
        **extra,
    }
