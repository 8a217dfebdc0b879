"""The model applied to signals: voxel by voxel, with codes pooled over a neighbourhood, or grouped.

Per voxel: divide by S0 (the mean of the b0 volumes), run the network on the normalised signal
(``z = mu``: deterministic), multiply back by S0. Voxels with S0 <= 0 or non-finite values are left
as they were. The grouped estimate (:func:`nonlocal_signals`) uses the encoder only to say which
voxels go together (:mod:`dwivae.apply.grouping`). Also the checks that a model fits the data and
the options asked of it.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Union

import numpy as np

from dwivae.apply.grouping import DEFAULT_GROUP, grouped_signals
from dwivae.apply.spatial import smooth_codes
from dwivae.errors import InputError
from dwivae.kernels.bindings import default_threads
from dwivae.learn.frozen import FrozenModel
from dwivae.physics.acquisition import Acquisition
from dwivae.physics.noise import check_noise_model, remove_noise_floor
from dwivae.physics.signals import b0_means, normalise_by_b0
from dwivae.physics.simulate import add_noncentral_chi_noise

if TYPE_CHECKING:
    import torch

    from dwivae.learn.training import TrainedModel



Model = Union["TrainedModel", "FrozenModel"]
"""A model with torch modules, or one loaded for the compiled forward pass only (:mod:`dwivae.learn.frozen`)."""



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



def check_frozen(model: Model, *, spatial: float | None = None, uncertainty: int = 0) -> None:
    """Refuse what a model read for the compiled forward pass alone cannot do."""
    if not isinstance(model, FrozenModel):
        return
    if spatial is not None or uncertainty:
        raise InputError("--spatial and --uncertainty run the network in torch: load the model with "
                         "dwivae.load_model, not dwivae.load_frozen")
    if model.compiled() is None:
        raise InputError("the compiled kernel cannot run here (no C compiler, or DWIVAE_KERNEL=torch): load the "
                         "model with dwivae.load_model")



def check_context(model: Model, *, spatial: float | None) -> None:
    """Refuse a learned and a hand-set neighbourhood at once."""
    if spatial is not None and model.context is not None:
        raise InputError("this model has a learned context network, which already combines each voxel's "
                         "neighbourhood: drop --spatial, or pass --no-context to use --spatial instead")



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

    The forward pass runs in the compiled kernel of :mod:`dwivae.kernels.bindings` where it can be built
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
        their Rician / noncentral-chi noise floor removed (:func:`dwivae.physics.noise.remove_noise_floor`).
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



def network_part(model: Model, part: str, x: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """The model's ``encoder`` (S0-normalised signals (M, N) -> latent means (M, L)) or ``decoder``
    (codes (M, L) -> signals (M, N)) on the rows of ``x``: in the compiled kernel where it runs
    (``threads``: default the CPUs this process may use), else in torch."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    compiled = model.compiled(part)
    if compiled is not None:
        return compiled(x, threads=threads or default_threads())
    import torch

    network = model.network.eval()
    with torch.inference_mode():
        rows = torch.from_numpy(x)
        return (network.encode(rows)[0] if part == "encoder" else network.decode(rows)).numpy()



def encode_signals(signals: np.ndarray, acq: Acquisition, model: Model, *,
                   batch_size: int = 1 << 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent means of measured signals (M, N): ``(codes (M, L) float32, s0 (M,), valid (M,) bool)``;
    rows that are not valid (non-finite values, S0 <= 0) get zeros."""
    normalised, s0, valid = normalise_by_b0(np.asarray(signals, dtype=np.float32), acq)
    codes = np.zeros((len(normalised), model.model_config.latent), np.float32)
    rows = normalised if valid.all() else normalised[valid]
    found = np.empty((len(rows), codes.shape[1]), np.float32)
    for start in range(0, len(rows), batch_size):
        found[start:start + batch_size] = network_part(model, "encoder", rows[start:start + batch_size])
    codes[valid] = found
    return codes, s0, valid



def code_noise_scale(codes: np.ndarray, s0: np.ndarray, model: Model, sigma: float, *, coils: int = 1,
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
    model : TrainedModel or FrozenModel
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
    rng = np.random.default_rng(seed)
    if len(codes) > max_voxels:
        pick = rng.choice(len(codes), max_voxels, replace=False)
        codes, s0 = codes[pick], s0[pick]
    relative = (sigma / np.asarray(s0, dtype=np.float32))[:, None]
    clean = network_part(model, "decoder", codes)
    a, b = (network_part(model, "encoder", add_noncentral_chi_noise(clean, relative, coils=coils, rng=rng))
            for _ in range(2))
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
    """Each voxel's latent mean averaged over its 3x3x3 neighbourhood, edge-aware (:mod:`dwivae.apply.spatial`).

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
    (:mod:`dwivae.learn.context`); ``slabs`` and ``inside`` as in :func:`encode_volume`. Returns
    (X, Y, Z, L) float32 codes."""
    from dwivae.apply.spatial import context_codes

    latent, _, valid = encode_volume(slabs, inside, acq, model)
    return context_codes(latent, valid, model.context)



def nonlocal_signals(signals: np.ndarray, voxels: np.ndarray, acq: Acquisition, model: Model, *, sigma: float,
                     group: int = DEFAULT_GROUP, coils: int = 1, denoise_b0: bool = False, seed: int = 0,
                     keep_floor: bool = False) -> np.ndarray:
    """The voxels' series estimated by :func:`dwivae.apply.grouping.grouped_signals`.

    The encoder's latent means, in units of their noise scale at ``sigma``
    (:func:`code_noise_scale`), decide which voxels are grouped; the estimate is the low-rank
    part of the measured series of each group, noise floor removed. Voxels that cannot be
    normalised (S0 <= 0, non-finite values) keep their series.

    Parameters
    ----------
    signals : (M, N) ndarray
    voxels : (M, 3) int ndarray
        Where each voxel lies.
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
    (M, N) ndarray, float32
    """
    signals = np.asarray(signals, dtype=np.float32)
    codes, s0, valid = encode_signals(signals, acq, model)
    if not valid.any():
        raise InputError("no voxel with S0 > 0 and finite values in the mask: nothing to denoise")
    scale = code_noise_scale(codes[valid], s0[valid], model, sigma, coils=coils)
    out = signals.copy()
    out[valid] = grouped_signals(signals[valid], codes[valid] / np.float32(scale), np.asarray(voxels)[valid],
                                 sigma=sigma, coils=coils, group=group, seed=seed, remove_floor=not keep_floor,
                                 shells=acq.shell_labels())
    if not denoise_b0:
        out[:, acq.b0_mask] = signals[:, acq.b0_mask]
    return out


def check_options(model: Model, acq: Acquisition, *, spatial: float | None = None, uncertainty: int = 0,
                  pooling: int | None = None, context: bool = True, bias_correct: bool = False,
                  sigma: float | None = None, coils: int = 1) -> bool:
    """Refuse a model that does not fit ``acq``'s data, or options that cannot go together, with
    the fix; return whether the model's learned context network is used."""
    check_protocol(model, acq)
    check_frozen(model, spatial=spatial, uncertainty=uncertainty)
    if pooling is not None and (spatial is not None or uncertainty):
        raise InputError("--nonlocal pools each voxel's neighbourhood itself: drop --spatial and --uncertainty")
    context = context and model.context is not None and pooling is None
    if context:
        check_context(model, spatial=spatial)
    if bias_correct:
        check_bias_correction(model)
    check_noise_model(sigma, coils)
    return context
