"""Low-rank estimation over groups of voxels that the encoder says hold the same tissue.

MP-PCA (Veraart et al. 2016) denoises each 5 x 5 x 5 patch by keeping the principal components
of its series that stand above the Marchenko-Pastur edge of the noise. A cube mixes tissues at
every boundary, and 125 voxels put that edge far above sigma² (``(1 + sqrt(N / 125))²``), so
components that carry signal are lost with the noise. Here the voxels are grouped instead by
their latent codes: within a spatial block, k-means on the codes (in units of the distance that
noise alone puts between two codes of one signal) cuts the block into groups of similar tissue.
Each group's measured series is projected on the components above the edge at the known sigma;
the estimate is the measured data's own, the encoder only says which voxels belong together, so
what the model cannot explain (an oil phantom, a lesion) is kept, not replaced by the decoder.
Several passes with shifted blocks are averaged, as MP-PCA averages overlapping patches.

The projection estimates the expected magnitude, which keeps the noise floor; it is removed
last (:func:`dwivae.physics.noise.remove_noise_floor`, Rician or noncentral chi), which the peers do not.
Direction by direction only where a shell's signal stands clear of the floor: where it does not,
the differences between its directions are noise, and inverting each of them alone would turn
them into anisotropy, so the shell's volumes share one correction factor there
(:func:`remove_floor_by_shell`).
"""
from __future__ import annotations

import numpy as np
from scipy.cluster.vq import kmeans2

from dwivae.physics.noise import remove_noise_floor

DEFAULT_GROUP = 150
"""Voxels per group (chosen on the realistic phantoms: 100-300 score alike)."""
BLOCK = 12
"""Edge of the spatial blocks that bound a group, in voxels."""
PASSES = 8
"""Passes with the block grid shifted by ``BLOCK / PASSES`` along every axis, averaged."""
MIN_GROUP = 8
"""Groups with fewer voxels keep their measured signals."""
IDENTIFIABLE = (1.0, 3.0)
"""A shell's mean signal (nu / sigma) up to which its floor is removed as one factor, and from
which direction by direction; between them the two are blended linearly."""
LOWEST_SIGNAL = 0.1
"""The floor removal returns at least this times sigma, never 0: a log-linear tensor or kurtosis
fit takes a 0 as log 0 (DIPY clips it to 1e-4, an outlier of -9 in the log). Exact zeros at
b = 2800 along white-matter fibres made the fitted MD 2.5 % worse than the noisy data's on the
multi-shell phantom at SNR 30; 0.1 and 0.3 sigma score alike there, and nothing changes where the
signal stays above the floor."""


def remove_floor_by_shell(expected: np.ndarray, sigma: float, shells: np.ndarray, *, coils: int = 1) -> np.ndarray:
    """The noise floor removed from expected magnitudes (M, N), shell by shell (``shells``: (N,) labels).

    Per voxel and shell: each volume inverted on its own where the shell's mean signal is
    identifiable (nu >= 3 sigma), one factor ``nu(mean) / mean`` for all its volumes where it is
    not (nu <= sigma), blended in between (:data:`IDENTIFIABLE`); at least :data:`LOWEST_SIGNAL`
    sigma.
    """
    per_volume = remove_noise_floor(expected, sigma, coils=coils)
    out = np.empty_like(per_volume)
    low, high = IDENTIFIABLE
    for shell in np.unique(shells):
        sel = shells == shell
        mean = expected[:, sel].mean(axis=1, keepdims=True)
        nu = remove_noise_floor(mean, sigma, coils=coils)
        common = expected[:, sel] * np.divide(nu, mean, out=np.zeros_like(mean), where=mean > 0)
        weight = np.clip((nu / sigma - low) / (high - low), 0.0, 1.0)
        out[:, sel] = weight * per_volume[:, sel] + (1 - weight) * common
    return np.maximum(out, np.float32(LOWEST_SIGNAL * sigma))


def project_group(signals: np.ndarray, sigma: float) -> np.ndarray:
    """The series of one group (M, N) projected on its components above the noise edge.

    The edge is the Marchenko-Pastur upper limit ``sigma² (1 + sqrt(N / M))²`` of the
    eigenvalues of an (M, N) noise matrix's covariance.
    """
    signals = np.asarray(signals, dtype=np.float64)
    count, volumes = signals.shape
    if count < MIN_GROUP:
        return signals
    mean = signals.mean(axis=0)
    centred = signals - mean
    values, vectors = np.linalg.eigh(centred.T @ centred / count)
    kept = vectors[:, values >= sigma ** 2 * (1 + np.sqrt(volumes / count)) ** 2]
    return centred @ kept @ kept.T + mean


def _one_pass(signals: np.ndarray, codes: np.ndarray, voxels: np.ndarray, *, sigma: float, group: int,
              offset: int, rng: np.random.Generator) -> np.ndarray:
    """Estimates of ``voxels`` (M, 3), whose series are ``signals`` (M, N) and codes ``codes``
    (M, L), from one grid of blocks shifted by ``offset``."""
    blocks = (voxels + offset) // BLOCK
    order = np.lexsort(blocks.T[::-1])
    _, starts = np.unique(blocks[order], axis=0, return_index=True)
    estimate = np.empty(signals.shape, np.float64)
    for members in np.split(order, starts[1:]):
        k = max(1, round(len(members) / group))
        labels = (kmeans2(codes[members], k, seed=rng, minit="++")[1] if k > 1 else
                  np.zeros(len(members), int))
        for label in np.unique(labels):
            chosen = members[labels == label]
            estimate[chosen] = project_group(signals[chosen], sigma)
    return estimate


def grouped_estimate(data: np.ndarray, codes: np.ndarray, valid: np.ndarray, *, sigma: float, coils: int = 1,
                     group: int = DEFAULT_GROUP, seed: int = 0, remove_floor: bool = True,
                     shells: np.ndarray | None = None) -> np.ndarray:
    """The grouped low-rank estimate of every valid voxel (see the module's description).

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
        Measured magnitudes.
    codes : (X, Y, Z, L) ndarray
        Latent means, in units of the codes' noise scale.
    valid : (X, Y, Z) bool ndarray
        Voxels to estimate and to group.
    sigma : float
        Noise standard deviation per real channel, in the units of ``data``.
    coils : int
        Receive coils of the root-sum-of-squares magnitude (1: Rician).
    group : int
        Voxels per group.
    seed : int
        Seed of the k-means initialisation.
    remove_floor : bool
        Remove the noise floor from the estimate (False keeps the expected magnitude, as the
        peers do).
    shells : (N,) int ndarray, optional
        Shell label of every volume (:meth:`dwivae.physics.acquisition.Acquisition.shell_labels`) for
        :func:`remove_floor_by_shell`; default: one shell.

    Returns
    -------
    (X, Y, Z, N) ndarray, float32
        The estimate in valid voxels; ``data`` elsewhere.
    """
    out = np.array(data, dtype=np.float32, copy=True)
    voxels = np.argwhere(valid)
    if len(voxels) == 0:
        return out
    rng = np.random.default_rng(seed)
    flat = np.asarray(codes, np.float64)[tuple(voxels.T)]
    signals = out[tuple(voxels.T)]
    total = np.zeros(signals.shape, np.float64)
    for step in range(PASSES):
        total += _one_pass(signals, flat, voxels, sigma=sigma, group=group,
                           offset=step * BLOCK // PASSES, rng=rng)
    expected = np.maximum(total / PASSES, 0.0)
    if remove_floor:
        shells = np.zeros(data.shape[-1], int) if shells is None else np.asarray(shells)
        expected = remove_floor_by_shell(expected, sigma, shells, coils=coils)
    out[tuple(voxels.T)] = expected
    return out
