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
Several passes with shifted blocks are averaged, as MP-PCA averages overlapping patches. Each
pass runs in the compiled kernel (:mod:`dwivae.kernels.group_pass`, threads over blocks), or in
numpy where it cannot be built: the same k-means (:func:`kmeans_labels`, seeded by
:func:`block_keys`) and the same projection, so the two agree to rounding.

The projection estimates the expected magnitude, which keeps the noise floor; it is removed
last (:func:`dwivae.physics.noise.remove_noise_floor`, Rician or noncentral chi), which the peers do not.
Direction by direction only where a shell's signal stands clear of the floor: where it does not,
the differences between its directions are noise, and inverting each of them alone would turn
them into anisotropy, so the shell's volumes share one correction factor there
(:func:`remove_floor_by_shell`).
"""
from __future__ import annotations

import numpy as np
from dwivae.kernels.bindings import default_threads
from dwivae.kernels.group_pass import group_pass
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
    out = remove_noise_floor(expected, sigma, coils=coils)
    low, high = IDENTIFIABLE
    labels = np.unique(shells)
    members = (np.asarray(shells)[None, :] == labels[:, None]).astype(np.float64)  # (S, N)
    means = expected @ (members / members.sum(axis=1, keepdims=True)).T  # (M, S), without copying a shell out
    nus = remove_noise_floor(means, sigma, coils=coils)
    weights = np.clip((nus / sigma - low) / (high - low), 0.0, 1.0)
    for k, member in enumerate(members.astype(bool)):
        rows = np.flatnonzero(weights[:, k] < 1)  # elsewhere each volume's own inversion stands
        if len(rows):
            mean, nu, weight = means[rows, k, None], nus[rows, k, None], weights[rows, k, None]
            factor = np.divide(nu, mean, out=np.zeros_like(mean), where=mean > 0)
            block = np.ix_(rows, np.flatnonzero(member))
            out[block] = weight * out[block] + (1 - weight) * expected[block] * factor
    return np.maximum(out, np.float32(LOWEST_SIGNAL * sigma), out=out)


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


LLOYD_ITERATIONS = 10
"""Lloyd's iterations of each block's k-means at most (scipy's ``kmeans2`` default); they stop
once the labels repeat, which changes nothing (a fixed point)."""


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (``mix64`` in grouping.c)."""
    z = np.asarray(z, np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(key: np.uint64, count: int) -> np.ndarray:
    """Draws 0 .. count - 1 of ``key``'s uniforms in [0, 1) (``uniform`` in grouping.c)."""
    return (_mix64(key + np.arange(count, dtype=np.uint64)) >> np.uint64(11)) * 2.0 ** -53


def block_keys(seed: int, step: int, blocks: int) -> np.ndarray:
    """The keys (B,) uint64 of the k-means seeding of pass ``step``'s blocks."""
    base = _mix64(_mix64(np.array([seed % 2 ** 64], np.uint64)) + np.uint64(step))
    return _mix64(base + np.arange(blocks, dtype=np.uint64))


def kmeans_labels(codes: np.ndarray, k: int, key: np.uint64) -> np.ndarray:
    """k-means labels (M,) of ``codes`` (M, L), as grouping.c computes them.

    k-means++ seeding (Arthur and Vassilvitskii 2007): the first centre is the point
    ``floor(u0 M)``, each next one the first point whose cumulative squared distance to its nearest
    centre exceeds ``u_i`` times their sum (u from :func:`_uniforms`); then Lloyd's iterations
    (:data:`LLOYD_ITERATIONS`), an empty cluster keeping its centre.
    """
    codes = np.asarray(codes, np.float64)
    count = len(codes)
    u = _uniforms(key, k)
    centres = np.empty((k, codes.shape[1]))
    centres[0] = codes[min(int(u[0] * count), count - 1)]
    d2 = ((codes - centres[0]) ** 2).sum(axis=1)
    for c in range(1, k):
        cumulative = np.cumsum(d2)
        centres[c] = codes[min(int(np.searchsorted(cumulative, u[c] * cumulative[-1], side="right")), count - 1)]
        d2 = np.minimum(d2, ((codes - centres[c]) ** 2).sum(axis=1))
    labels = np.full(count, -1)
    for _ in range(LLOYD_ITERATIONS):
        nearest = ((codes[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)
        if np.array_equal(nearest, labels):
            break
        labels = nearest
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, codes)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return labels


def _blocks(voxels: np.ndarray, offset: int, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The blocks of the grid shifted by ``offset``: ``order`` (M,) and ``starts`` (B + 1,), block b
    holding the voxels ``order[starts[b]:starts[b + 1]]``, and the groups (B,) to cut each into."""
    blocks = (voxels + offset) // BLOCK
    ids = np.ravel_multi_index(tuple(blocks.T), tuple(blocks.max(axis=0) + 1))
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1], True]).astype(np.int64)
    clusters = np.maximum(1, np.round(np.diff(starts) / group)).astype(np.int64)
    return order.astype(np.int64), starts, clusters


def _pass_in_numpy(signals: np.ndarray, codes: np.ndarray, order: np.ndarray, starts: np.ndarray,
                   clusters: np.ndarray, keys: np.ndarray, *, sigma: float, total: np.ndarray) -> None:
    """One pass of :func:`dwivae.kernels.group_pass.group_pass` in numpy, where the kernel cannot run."""
    for b, k in enumerate(clusters):
        members = order[starts[b]:starts[b + 1]]
        labels = kmeans_labels(codes[members], int(k), keys[b]) if k > 1 else np.zeros(len(members), int)
        for label in np.unique(labels):
            chosen = members[labels == label]
            total[chosen] += project_group(signals[chosen], sigma)


def grouped_signals(signals: np.ndarray, codes: np.ndarray, voxels: np.ndarray, *, sigma: float, coils: int = 1,
                    group: int = DEFAULT_GROUP, seed: int = 0, remove_floor: bool = True,
                    shells: np.ndarray | None = None, threads: int | None = None) -> np.ndarray:
    """The grouped low-rank estimate of voxels' series (see the module's description).

    Parameters
    ----------
    signals : (M, N) ndarray
        Measured magnitudes.
    codes : (M, L) ndarray
        Latent means, in units of the codes' noise scale.
    voxels : (M, 3) int ndarray
        Where each voxel lies, for the spatial blocks.
    sigma : float
        Noise standard deviation per real channel, in the units of ``signals``.
    coils : int
        Receive coils of the root-sum-of-squares magnitude (1: Rician).
    group : int
        Voxels per group.
    seed : int
        Seed of the k-means seeding (:func:`block_keys`).
    remove_floor : bool
        Remove the noise floor from the estimate (False keeps the expected magnitude, as the
        peers do).
    shells : (N,) int ndarray, optional
        Shell label of every volume (:meth:`dwivae.physics.acquisition.Acquisition.shell_labels`) for
        :func:`remove_floor_by_shell`; default: one shell.
    threads : int, optional
        Threads of the compiled passes (:mod:`dwivae.kernels.group_pass`; default: the CPUs this
        process may use); numpy runs them where the kernel cannot.

    Returns
    -------
    (M, N) ndarray, float32
    """
    signals = np.ascontiguousarray(signals, dtype=np.float32)
    flat = np.ascontiguousarray(codes, dtype=np.float64)
    voxels = np.asarray(voxels)
    total = np.zeros(signals.shape, np.float64)
    for step in range(PASSES):
        order, starts, clusters = _blocks(voxels, step * BLOCK // PASSES, group)
        keys = block_keys(seed, step, len(clusters))
        if not group_pass(signals, flat, order, starts, clusters, keys, sigma=sigma, min_group=MIN_GROUP,
                          total=total, threads=threads or default_threads()):
            _pass_in_numpy(signals, flat, order, starts, clusters, keys, sigma=sigma, total=total)
    total /= PASSES
    expected = np.maximum(total, 0.0, out=total)
    if not remove_floor:
        return expected.astype(np.float32)
    shells = np.zeros(signals.shape[1], int) if shells is None else np.asarray(shells)
    return remove_floor_by_shell(expected, sigma, shells, coils=coils)


def grouped_estimate(data: np.ndarray, codes: np.ndarray, valid: np.ndarray, **options) -> np.ndarray:
    """:func:`grouped_signals` of every valid voxel of a volume.

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
        Measured magnitudes.
    codes : (X, Y, Z, L) ndarray
        Latent means, in units of the codes' noise scale.
    valid : (X, Y, Z) bool ndarray
        Voxels to estimate and to group.
    **options
        Those of :func:`grouped_signals`.

    Returns
    -------
    (X, Y, Z, N) ndarray, float32
        The estimate in valid voxels; ``data`` elsewhere.
    """
    out = np.array(data, dtype=np.float32, copy=True)
    valid = np.asarray(valid, bool)
    if valid.any():
        out[valid] = grouped_signals(out[valid], np.asarray(codes)[valid], np.argwhere(valid), **options)
    return out
