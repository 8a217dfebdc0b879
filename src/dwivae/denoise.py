"""Denoise diffusion-weighted volumes voxel by voxel with a trained model.

Per voxel: divide by S0 (the mean of the b0 volumes), run the network on the normalised signal
(``z = mu``: deterministic), multiply back by S0. b0 volumes are kept as measured unless asked
otherwise. Voxels outside the mask, with S0 <= 0 or with non-finite values are left as they were.
Files are processed slab by slab, so memory follows the slab size, not the number of slices.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np

from dwivae._version import __version__
from dwivae.acquisition import Acquisition, b0_means, normalise_by_b0
from dwivae.checkpoint import model_fingerprint
from dwivae.errors import InputError
from dwivae.grouping import BLOCK as GROUPING_BLOCK
from dwivae.grouping import DEFAULT_GROUP, grouped_estimate
from dwivae.grouping import PASSES as GROUPING_PASSES
from dwivae.kernel import default_threads
from dwivae.mask import median_otsu_mask
from dwivae.noise import SIGMA_METHODS, check_noise_model, estimate_sigma, floor_in_data, remove_noise_floor
from dwivae.outputs import OutputSet, check_outputs
from dwivae.simulate import add_noncentral_chi_noise
from dwivae.spatial import smooth_codes

from dwivae.frozen import FrozenModel

if TYPE_CHECKING:
    import torch

    from dwivae.training import TrainedModel

Model = Union["TrainedModel", "FrozenModel"]
"""A model with torch modules, or one loaded for the compiled forward pass only (:mod:`dwivae.frozen`)."""


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


def check_protocol(model: Model, acq: Acquisition, *, model_name: str = "the model") -> None:
    """Refuse data whose protocol is not the model's, saying how to get a matching model."""
    problem = model.acquisition.mismatch(acq, names=(f"the model's protocol ({model.acquisition.name})",
                                                     f"the data's ({acq.name})"))
    if problem is not None:
        raise InputError(f"{model_name} was trained for another protocol ({problem}): train one for this "
                         "data with `dwivae train --bvals ... --bvecs ... --out DIR`, or pass --train")


def check_bias_correction(model: Model) -> None:
    """Refuse to remove a noise floor that the model has already learned to remove."""
    if model.train_config.noise != "gaussian":
        raise InputError(f"this model was trained on {model.train_config.noise} noise, so its output has no "
                         "noise floor left: drop --bias-correct")


def denoise_signals(
    signals: np.ndarray,
    acq: Acquisition,
    model: Model,
    *,
    denoise_b0: bool = False,
    batch_size: int = 1 << 16,
    posterior_samples: int = 0,
    generator: torch.Generator | None = None,
    bias_sigma: float | None = None,
    coils: int = 1,
    codes: np.ndarray | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Denoise a stack of voxel signals.

    The forward pass runs in the compiled kernel of :mod:`dwivae.kernel` where it can be built
    (torch otherwise, imported only then); the posterior samples are drawn with torch.

    Parameters
    ----------
    signals : (M, N) ndarray
        Measured signals, in the scanner's units.
    acq : Acquisition
        Their protocol (must match the model's).
    model : TrainedModel or FrozenModel
    denoise_b0 : bool
        Replace the b0 volumes by the model's output too (default: keep them as measured).
    batch_size : int
        Voxels per forward pass.
    posterior_samples : int
        With K > 0 (a VAE only), also return the standard deviation over K decodings of
        ``z = mu + sigma * eps``, in the scanner's units.
    generator : torch.Generator, optional
        Source of ``eps`` for the posterior samples.
    bias_sigma : float, optional
        With the data's noise level (per real channel, scanner units), the denoised volumes get
        their Rician / noncentral-chi noise floor removed (:func:`dwivae.noise.remove_noise_floor`).
    coils : int
        N of the noncentral chi noise for ``bias_sigma`` (1: Rician).
    codes : (M, L) ndarray, optional
        Latent codes to decode instead of each signal's own latent mean (e.g. averaged over a
        neighbourhood by :func:`spatial_codes`); the output is still scaled by each row's S0.
    threads : int, optional
        Threads of the compiled forward pass (default: the CPUs this process may use).

    Returns
    -------
    denoised : (M, N) ndarray, float32
        Denoised signals; rows that could not be denoised are returned unchanged.
    valid : (M,) bool ndarray
        Rows that were denoised (finite values and S0 > 0).
    std : (M, N) ndarray, float32, or None
        Posterior standard deviation (0 for rows not denoised), when ``posterior_samples > 0``.
    """
    if posterior_samples and model.model_config.arch != "vae":
        raise InputError("posterior samples (--uncertainty) need a VAE; this model is a DAE")
    x = np.asarray(signals, dtype=np.float32)
    b0 = acq.b0_mask
    s0, valid = b0_means(x, acq)
    out = x.copy()
    std = np.zeros_like(x) if posterior_samples else None
    rows = np.flatnonzero(valid)
    compiled = model.compiled("all" if codes is None else "decoder")
    threads = threads or default_threads()
    for start in range(0, len(rows), batch_size):
        idx = rows[start:start + batch_size]
        block_codes = None if codes is None else np.ascontiguousarray(codes[idx], dtype=np.float32)
        if compiled is None:
            denoised = _torch_pass(model, x[idx] / s0[idx, None], block_codes) * s0[idx, None]
        elif codes is None:
            denoised = compiled(x[idx], s0[idx], threads=threads)
        else:
            denoised = compiled(block_codes, threads=threads) * s0[idx, None]
        if bias_sigma is not None:
            denoised = remove_noise_floor(denoised, bias_sigma, coils=coils)
        if not denoise_b0:
            denoised[:, b0] = x[idx][:, b0]
        out[idx] = denoised
        if posterior_samples:
            draws = _torch_pass(model, x[idx] / s0[idx, None], block_codes, posterior_samples, generator)
            std[idx] = draws.std(axis=0, ddof=1) * s0[idx, None]
    return out, valid, std


def _torch_pass(model: TrainedModel, normalised: np.ndarray, codes: np.ndarray | None, posterior_samples: int = 0,
                generator: torch.Generator | None = None) -> np.ndarray:
    """The network in torch on S0-normalised signals (M, N), decoding ``codes`` (M, L) instead of
    their latent means if given: its output (M, N), or with K posterior samples the K decodings of
    ``z = mu + sigma * eps`` (K, M, N), sigma from each signal's own encoding."""
    import torch

    network = model.network.eval()
    with torch.inference_mode():
        mu, logvar = network.encode(torch.from_numpy(np.ascontiguousarray(normalised, dtype=np.float32)))
        if codes is not None:
            mu = torch.from_numpy(codes)
        if not posterior_samples:
            return network.decode(mu).numpy()
        sigma = torch.exp(0.5 * logvar)
        return torch.stack([network.decode(mu + sigma * torch.randn(mu.shape, generator=generator))
                            for _ in range(posterior_samples)]).numpy()


def encode_signals(signals: np.ndarray, acq: Acquisition, model: TrainedModel, *,
                   batch_size: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent means of measured signals (M, N): ``(codes (M, L) float32, s0 (M,), valid (M,) bool)``;
    rows that are not valid (non-finite values, S0 <= 0) get zeros."""
    import torch

    normalised, s0, valid = normalise_by_b0(np.asarray(signals, dtype=np.float32), acq)
    network = model.network.eval()
    compiled = model.compiled("encoder")
    codes = np.zeros((len(normalised), model.model_config.latent), np.float32)
    rows = np.flatnonzero(valid)
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            codes[idx] = (compiled(normalised[idx], threads=torch.get_num_threads()) if compiled is not None
                          else network.encode(torch.from_numpy(normalised[idx]))[0].numpy())
    return codes, s0, valid


def code_noise_scale(codes: np.ndarray, s0: np.ndarray, model: TrainedModel, sigma: float, *, coils: int = 1,
                     max_voxels: int = 20_000, seed: int = 0) -> float:
    """The distance that noise alone puts between two latent codes of one voxel's signal.

    A parametric bootstrap: each voxel's decoded signal (its estimate of the clean signal) gets
    magnitude noise of level ``sigma / S0`` twice (noncentral chi over ``coils``; 1: Rician), both
    copies are encoded, and the median distance between the two codes is returned.

    Parameters
    ----------
    codes : (M, L) ndarray
        Latent means of the voxels.
    s0 : (M,) ndarray
        Their S0, in the units of ``sigma``.
    model : TrainedModel
    sigma : float
        The data's noise level.
    coils : int
    max_voxels : int
        At most this many voxels, drawn at random (seeded), are used.
    seed : int

    Returns
    -------
    float
    """
    import torch

    rng = np.random.default_rng(seed)
    if len(codes) > max_voxels:
        pick = rng.choice(len(codes), max_voxels, replace=False)
        codes, s0 = codes[pick], s0[pick]
    network = model.network.eval()
    relative = (sigma / np.asarray(s0, dtype=np.float32))[:, None]
    with torch.inference_mode():
        clean = network.decode(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.float32))).numpy()
        a, b = (network.encode(torch.from_numpy(add_noncentral_chi_noise(clean, relative, coils=coils, rng=rng)))[0]
                .numpy() for _ in range(2))
    return float(np.median(np.linalg.norm(a - b, axis=1)))


def encode_volume(slabs: Iterable[tuple[int, int, np.ndarray]], inside: np.ndarray, acq: Acquisition,
                  model: TrainedModel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent means of the mask's voxels, slab by slab.

    Parameters
    ----------
    slabs : iterable of (z0, z1, (X, Y, z1 - z0, N) ndarray)
        The series, slab by slab (one slab for data in memory).
    inside : (X, Y, Z) bool ndarray
        The mask: only its voxels are encoded.

    Returns
    -------
    latent : (X, Y, Z, L) ndarray, float32
    s0 : (X, Y, Z) ndarray, float32
    valid : (X, Y, Z) bool ndarray
        Voxels in the mask with S0 > 0 and finite values (the others have zero codes).
    """
    latent = np.zeros((*inside.shape, model.model_config.latent), np.float32)
    s0 = np.zeros(inside.shape, np.float32)
    valid = np.zeros(inside.shape, bool)
    for z0, z1, data in slabs:
        sel = inside[:, :, z0:z1]
        codes, slab_s0, ok = encode_signals(data[sel], acq, model)
        for volume, values in ((latent, codes), (s0, slab_s0), (valid, ok)):
            part = volume[:, :, z0:z1]
            part[sel] = values
    if not valid.any():
        raise InputError("no voxel with S0 > 0 and finite values in the mask: nothing to combine over "
                         "neighbourhoods")
    return latent, s0, valid


def spatial_codes(slabs: Iterable[tuple[int, int, np.ndarray]], inside: np.ndarray, acq: Acquisition,
                  model: TrainedModel, *, sigma: float, strength: float = 2.0,
                  coils: int = 1) -> tuple[np.ndarray, float]:
    """Each voxel's latent mean averaged over its 3x3x3 neighbourhood, edge-aware (:mod:`dwivae.spatial`).

    Parameters
    ----------
    slabs, inside
        See :func:`encode_volume`.
    sigma : float
        The data's noise level, for the codes' noise scale (:func:`code_noise_scale`).
    strength : float
        Distance scale of the weights in units of the codes' noise scale (tuned on a phantom of
        another seed than the benchmark's).
    coils : int
        Receive coils of the data's magnitude noise (1: Rician).

    Returns
    -------
    codes : (X, Y, Z, L) ndarray, float32
    h : float
        The distance scale used.
    """
    latent, s0, valid = encode_volume(slabs, inside, acq, model)
    scale = code_noise_scale(latent[valid], s0[valid], model, sigma, coils=coils)
    return smooth_codes(latent, valid, scale=scale, strength=strength)


def learned_context_codes(slabs: Iterable[tuple[int, int, np.ndarray]], inside: np.ndarray, acq: Acquisition,
                          model: TrainedModel) -> np.ndarray:
    """Each voxel's code from its neighbourhood's latent means by the model's context network
    (:mod:`dwivae.context`); ``slabs`` and ``inside`` as in :func:`encode_volume`. Returns
    (X, Y, Z, L) float32 codes."""
    from dwivae.context import context_codes

    latent, _, valid = encode_volume(slabs, inside, acq, model)
    return context_codes(latent, valid, model.context)


def nonlocal_volume(data: np.ndarray, inside: np.ndarray, acq: Acquisition, model: TrainedModel, *, sigma: float,
                    group: int = DEFAULT_GROUP, coils: int = 1, denoise_b0: bool = False, seed: int = 0,
                    keep_floor: bool = False) -> np.ndarray:
    """Every voxel of the mask estimated by :func:`dwivae.grouping.grouped_estimate`.

    The encoder's latent means, in units of their noise scale at ``sigma``
    (:func:`code_noise_scale`), decide which voxels are grouped; the estimate is the low-rank
    part of the measured series of each group, noise floor removed.

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
    inside : (X, Y, Z) bool ndarray
    acq, model
    sigma : float
        The data's noise level per real channel.
    group : int
        Voxels per group.
    coils : int
        Receive coils of the magnitude noise (1: Rician).
    denoise_b0 : bool
        Replace the b0 volumes too (default: kept as measured).
    seed : int
        Seed of the grouping.
    keep_floor : bool
        Keep the noise floor in the estimate (the expected magnitude, as MP-PCA keeps it).

    Returns
    -------
    (X, Y, Z, N) ndarray, float32
    """
    data = np.asarray(data, dtype=np.float32)
    codes, s0, valid = encode_signals(data[inside], acq, model)
    if not valid.any():
        raise InputError("no voxel with S0 > 0 and finite values in the mask: nothing to denoise")
    scale = code_noise_scale(codes[valid], s0[valid], model, sigma, coils=coils)
    where = np.zeros(inside.shape, bool)
    where[inside] = valid
    code_volume = np.zeros((*inside.shape, codes.shape[1]), np.float32)
    code_volume[inside] = codes / np.float32(scale)
    out = grouped_estimate(data, code_volume, where, sigma=sigma, coils=coils, group=group, seed=seed,
                           remove_floor=not keep_floor, shells=acq.shell_labels())
    if not denoise_b0:
        out[..., acq.b0_mask] = data[..., acq.b0_mask]
    return out


def check_frozen(model: Model, *, spatial: float | None = None, uncertainty: int = 0,
                 pooling: int | None = None) -> None:
    """Refuse what a model read for the compiled forward pass alone cannot do."""
    if not isinstance(model, FrozenModel):
        return
    if spatial is not None or uncertainty or pooling is not None:
        raise InputError("--spatial, --nonlocal and --uncertainty run the network in torch: load the model with "
                         "dwivae.load_model, not dwivae.load_frozen")
    if model.compiled() is None:
        raise InputError("the compiled kernel cannot run here (no C compiler, or DWIVAE_KERNEL=torch): load the "
                         "model with dwivae.load_model")


def check_context(model: Model, *, spatial: float | None) -> None:
    """Refuse a learned and a hand-set neighbourhood at once."""
    if spatial is not None and model.context is not None:
        raise InputError("this model has a learned context network, which already combines each voxel's "
                         "neighbourhood: drop --spatial, or pass --no-context to use --spatial instead")


def denoise(
    data: np.ndarray,
    acq: Acquisition,
    model: Model,
    *,
    mask: np.ndarray | None = None,
    denoise_b0: bool = False,
    batch_size: int = 1 << 16,
    bias_correct: bool = False,
    sigma: float | None = None,
    coils: int = 1,
    spatial: float | None = None,
    context: bool = True,
    threads: int | None = None,
    pooling: int | None = None,
    seed: int = 0,
    keep_floor: bool = False,
) -> np.ndarray:
    """Denoise a 4D diffusion series held in memory.

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
        The diffusion series, volumes on the last axis in the protocol's order.
    acq : Acquisition
        The data's protocol; it must match the model's.
    model : TrainedModel
    mask : (X, Y, Z) bool ndarray, optional
        Voxels to denoise (default: every voxel with S0 > 0).
    denoise_b0 : bool
        Also replace the b0 volumes by the model's output.
    batch_size : int
    bias_correct : bool
        Remove the noise floor of the output (see :func:`denoise_signals`).
    sigma : float, optional
        The data's noise level, for ``bias_correct`` and ``spatial`` (default: measured in the
        mask, :func:`dwivae.noise.estimate_sigma`).
    coils : int
        Receive coils of the magnitude noise (1: Rician).
    spatial : float, optional
        Decode each voxel's latent mean averaged over its neighbourhood with this strength
        (:func:`spatial_codes`) instead of its own.
    context : bool
        Use the model's learned context network (:func:`learned_context_codes`), if it has one;
        False denoises voxel by voxel.
    threads : int, optional
        Threads of the compiled forward pass (default: the CPUs this process may use).
    pooling : int, optional
        Estimate each voxel as the low-rank part of a group of about this many voxels of like
        latent codes (:func:`nonlocal_volume`), noise floor removed, instead of decoding it alone.
    seed : int
        Seed of the grouping.
    keep_floor : bool
        With ``pooling``: keep the noise floor in the output, as MP-PCA does. It is kept in any case
        where the data show no floor at ``sigma`` (:func:`dwivae.noise.floor_in_data`).

    Returns
    -------
    denoised : (X, Y, Z, N) ndarray, float32
    """
    data = np.asarray(data)
    if data.ndim != 4 or data.shape[-1] != acq.n_volumes:
        raise InputError(f"data of shape {data.shape} does not hold {acq.n_volumes} volumes on a 4th axis")
    check_protocol(model, acq)
    check_frozen(model, spatial=spatial, pooling=pooling)
    if pooling is not None and spatial is not None:
        raise InputError("--nonlocal and --spatial both combine each voxel's neighbourhood: choose one")
    if context:
        check_context(model, spatial=spatial)
    if bias_correct:
        check_bias_correction(model)
    check_noise_model(sigma, coils)
    if mask is not None and mask.shape != data.shape[:3]:
        raise InputError(f"mask has shape {mask.shape} but the data has {data.shape[:3]}")
    out = data.astype(np.float32, copy=True)
    inside = np.ones(data.shape[:3], bool) if mask is None else mask.astype(bool)
    if sigma is None and (bias_correct or spatial is not None or pooling is not None):
        sigma = estimate_sigma(data, acq, inside)
    if pooling is not None:
        keep_floor = keep_floor or not floor_in_data(data[inside][:, ~acq.b0_mask], sigma, coils=coils)
        out[inside] = nonlocal_volume(data, inside, acq, model, sigma=sigma, group=pooling, coils=coils,
                                      denoise_b0=denoise_b0, seed=seed, keep_floor=keep_floor)[inside]
        return out
    codes = None
    if spatial is not None:
        codes = spatial_codes([(0, data.shape[2], data)], inside, acq, model, sigma=sigma, strength=spatial,
                              coils=coils)[0][inside]
    elif context and model.context is not None:
        codes = learned_context_codes([(0, data.shape[2], data)], inside, acq, model)[inside]
    out[inside], _, _ = denoise_signals(data[inside], acq, model, denoise_b0=denoise_b0, batch_size=batch_size,
                                        bias_sigma=sigma if bias_correct else None, coils=coils, codes=codes,
                                        threads=threads)
    return out


def auto_mask(img, acq: Acquisition) -> np.ndarray:
    """Brain mask from the mean b0 volume: DIPY's ``median_otsu`` (radius 2, one pass), as
    :func:`dwivae.mask.median_otsu_mask` computes it; non-finite values count as 0 (background),
    so that a few NaN voxels neither move Otsu's threshold nor spread through the median."""
    with np.errstate(invalid="ignore", over="ignore"):
        mean_b0 = b0_volumes(img, acq).mean(axis=-1)
    return median_otsu_mask(np.where(np.isfinite(mean_b0), mean_b0, 0.0))


def b0_volumes(img, acq: Acquisition) -> np.ndarray:
    """The image's b0 volumes, (X, Y, Z, K) float32, read one by one from its data object."""
    return np.stack([np.asarray(img.dataobj[..., int(k)], dtype=np.float32)
                     for k in np.flatnonzero(acq.b0_mask)], axis=-1)


def output_paths(out: str | PathLike[str], *, uncertainty: int = 0, sigma: bool = False) -> dict[str, Path]:
    """Every file a run of :func:`denoise_file` writes, by role, the sidecar last: ``denoised``
    (``out``), ``residual`` (``<out>_residual``), ``sigma`` (``<out>_sigma``, the noise level it
    used, where it used one), ``uncertainty`` (with ``uncertainty > 0``) and ``sidecar``
    (``<out>.json``)."""
    from dwivae import io

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
    model: Model,
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
) -> tuple[dict[str, Path], DenoiseStats]:
    """Denoise a NIfTI file slab by slab and write the denoised series and its residual.

    Parameters
    ----------
    dwi : path
        4D NIfTI (.nii or .nii.gz).
    acq : Acquisition
        Its protocol.
    model : TrainedModel
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
        :func:`dwivae.noise.estimate_sigma`) and
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
        latent codes, noise floor removed (:func:`nonlocal_volume`; the series is read whole, and
        held in memory with its latent codes).
    keep_floor : bool
        With ``pooling``: keep the noise floor in the output, as MP-PCA does. It is kept in any case
        where the data show no floor at ``sigma`` (:func:`dwivae.noise.floor_in_data`).

    Notes
    -----
    The sidecar ``<out>.json`` records, as BIDS derivatives do, the tool and version, the source,
    the model (architecture, latent size, fingerprint), the protocol fingerprint, the settings
    and what was done.

    Returns
    -------
    paths : dict of str to Path
        See :func:`output_paths`; all of them are written, or none (:class:`dwivae.outputs.OutputSet`).
    stats : DenoiseStats
    """
    from tqdm import tqdm

    from dwivae import io

    started = time.perf_counter()
    img = io.load_dwi(dwi)
    if img.shape[3] != acq.n_volumes:
        raise InputError(f"{Path(dwi).name} has {img.shape[3]} volumes but the gradient files have "
                         f"{acq.n_volumes}: give the .bval/.bvec of this image")
    check_protocol(model, acq)
    check_frozen(model, spatial=spatial, uncertainty=uncertainty, pooling=pooling)
    if pooling is not None and (spatial is not None or uncertainty):
        raise InputError("--nonlocal pools each voxel's neighbourhood itself: drop --spatial and --uncertainty")
    context = context and model.context is not None and pooling is None
    if context:
        check_context(model, spatial=spatial)
    uses_sigma = bias_correct or spatial is not None or pooling is not None
    paths = check_outputs(output_paths(out, uncertainty=uncertainty, sigma=uses_sigma),
                          inputs=[dwi, io.sidecar_path(dwi), *inputs, *([mask] if mask not in ("auto", None) else [])],
                          force=force)
    inside = (auto_mask(img, acq) if mask == "auto" else
              np.ones(img.shape[:3], bool) if mask is None else io.load_mask(mask, img))
    check_noise_model(sigma, coils)
    if bias_correct:
        check_bias_correction(model)
    sigma_from = "given"
    if sigma is None and uses_sigma:
        # in the brain: background voxels have Rayleigh noise, whose spread is 0.43 sigma²
        brain = inside if mask is not None else auto_mask(img, acq)
        sigma_from = SIGMA_METHODS["mppca"]
        sigma = estimate_sigma(img.dataobj, acq, brain)  # reads only the central slices it uses
    codes = h = None
    if spatial is not None:
        codes, h = spatial_codes(io.iter_slabs(img, slab=slab), inside, acq, model, sigma=sigma, strength=spatial,
                                 coils=coils)
    elif context:
        codes = learned_context_codes(io.iter_slabs(img, slab=slab), inside, acq, model)
    pooled, floor_seen = None, True
    if pooling is not None:
        whole = np.concatenate([data for _, _, data in io.iter_slabs(img, slab=slab)], axis=2)
        floor_seen = floor_in_data(whole[inside][:, ~acq.b0_mask], sigma, coils=coils)
        keep_floor = keep_floor or not floor_seen
        pooled = nonlocal_volume(whole, inside, acq, model, sigma=sigma, group=pooling, coils=coils,
                                 denoise_b0=denoise_b0, seed=seed, keep_floor=keep_floor)
        del whole
    generator = None
    if uncertainty:
        import torch

        generator = torch.Generator().manual_seed(seed)
    stats = DenoiseStats(outside_mask=int((~inside).sum()),
                         engine="torch" if pooled is not None or model.compiled() is None else "compiled",
                         floor_in_data=floor_seen)
    any_signal = False
    with OutputSet(paths, force=force) as staged, ExitStack() as stack:
        writers = {name: stack.enter_context(io.NiftiWriter(path, img.shape[:3] if name == "sigma" else img.shape,
                                                            img, temp=staged.temp(name)))
                   for name, path in paths.items() if name != "sidecar"}
        for z0, z1, data in tqdm(io.iter_slabs(img, slab=slab), total=-(-img.shape[2] // slab),
                                 desc="denoise", unit="slab", disable=not progress):
            sel = inside[:, :, z0:z1]
            stats.non_finite += int((~np.isfinite(data)).any(axis=-1).sum())
            signals = data[sel]
            any_signal = any_signal or bool(np.any(signals[np.isfinite(signals)] != 0))
            if pooled is not None:
                denoised, valid, std = pooled[:, :, z0:z1][sel], b0_means(signals, acq)[1], None
            else:
                denoised, valid, std = denoise_signals(
                    signals, acq, model, denoise_b0=denoise_b0, batch_size=batch_size,
                    posterior_samples=uncertainty, generator=generator,
                    bias_sigma=sigma if bias_correct else None, coils=coils,
                    codes=codes[:, :, z0:z1][sel] if codes is not None else None, threads=threads)
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
            raise InputError(f"{Path(dwi).name} is all zero inside the mask: check the image and the mask")
        stats.seconds = time.perf_counter() - started
        extra = dict(provenance or {})
        sidecar = {
            "Description": ("Denoised with an autoencoder trained on simulated q-space signals"
                            + (", low-rank over groups of voxels of like latent codes"
                               + (", noise floor kept" if keep_floor else ", noise floor removed") if pooling is not None
                               else " and a learned network over each voxel's neighbourhood" if context
                               else ", voxel by voxel")),
            "GeneratedBy": [{"Name": "dwivae", "Version": __version__}],
            "Sources": [str(Path(dwi).resolve())],
            "Model": {"arch": model.model_config.arch, "latent": model.model_config.latent,
                      "fingerprint": model_fingerprint(model), **extra.pop("Model", {})},
            "ProtocolFingerprint": acq.fingerprint(),
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
            "VoxelsDenoised": stats.denoised,
            "VoxelsSkipped": stats.skipped,
            "VoxelsOutsideMask": stats.outside_mask,
            "VoxelsNonFinite": stats.non_finite,
            "Seconds": round(stats.seconds, 3),
            "ForwardPass": stats.engine,
            "Outputs": {name: path.name for name, path in paths.items() if name != "sidecar"},
            **extra,
        }
        staged.temp("sidecar").write_text(io.json_text(sidecar), encoding="utf-8")
    return paths, stats
