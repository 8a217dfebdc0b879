"""The noise of measured data: its level, to match the training noise to it, and its floor.

The default is the Marchenko-Pastur estimate of MP-PCA (Veraart et al. 2016, NeuroImage
142:394), the one ``dwidenoise`` and DIPY's ``mppca`` use: in a 5 x 5 x 5 patch the series is
redundant, and the eigenvalues of its covariance that follow the Marchenko-Pastur law are noise.
It sees the whole series, so motion or pulsation between the b0 volumes does not count as noise;
the spread of repeated b0 volumes (``"b0"``) does count it, and on real brain crops it reads 2 to
6 times the MP-PCA sigma. It is kept as an option for data without spatial redundancy.

Magnitude images have a noise floor: where the true signal nu is low, the expected magnitude is
above it (Rician with one coil, noncentral chi with N coils combined by root sum of squares).
:func:`remove_noise_floor` maps a denoised magnitude, taken as the expected magnitude, back to
the nu that has that expectation.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from dwivae.errors import InputError
from dwivae.kernels.floor import compiled_floor_removal
from dwivae.physics.acquisition import Acquisition

SNR_LIMITS = (2.0, 1000.0)
"""The SNR range handed to training is clipped to these bounds."""


SIGMA_METHODS = {"b0": "spread of the b0 volumes", "mppca": "MP-PCA noise estimate"}
"""How :func:`estimate_sigma` measures the noise, by name, with the words the logs use."""
MPPCA_SLICES = 9
"""The MP-PCA estimate reads at most this many slices around the middle of the mask."""
MPPCA_PATCHES = 600
"""Patches, spread evenly over the mask, whose Marchenko-Pastur estimates give the median."""


def sigma_method(method: str = "auto") -> str:
    """``method`` itself, or for ``"auto"``: ``"mppca"``."""
    if method == "auto":
        return "mppca"
    if method not in SIGMA_METHODS:
        raise InputError(f"unknown noise estimate {method!r}: choose auto, {', '.join(SIGMA_METHODS)}")
    return method


def estimate_sigma(data: np.ndarray, acq: Acquisition, mask: np.ndarray, *, method: str = "auto") -> float:
    """Noise standard deviation of the data, in its units.

    Parameters
    ----------
    data : (X, Y, Z, N) ndarray
        Or, for ``mppca``, a nibabel array proxy (``img.dataobj``): only the slices it uses are read.
    acq : Acquisition
    mask : (X, Y, Z) bool ndarray
        Voxels to pool (e.g. the brain).
    method : {"auto", "b0", "mppca"}
        ``mppca`` (and ``auto``): :func:`sigma_from_mppca` on :data:`MPPCA_SLICES` slices around
        the middle of the mask. ``b0``: the spread of the repeated b0 volumes (two or more).

    Returns
    -------
    float
        For ``b0``: ``sqrt`` of the mean over the mask of each voxel's unbiased b0 variance.
        Both are the per-channel sigma where the signal is well above the floor.
    """
    if sigma_method(method) == "b0":
        return sigma_from_b0(np.asarray(data[mask][:, acq.b0_mask]), acq.name)
    z = central_slices(mask)
    return sigma_from_mppca(np.asarray(data[:, :, z]), np.asarray(mask)[:, :, z])


def central_slices(mask: np.ndarray, count: int = MPPCA_SLICES) -> slice:
    """Up to ``count`` slices (z) around the middle of the mask's extent."""
    z = np.flatnonzero(np.asarray(mask).any(axis=(0, 1)))
    if z.size == 0:
        raise InputError("the mask is empty: no voxel to estimate the noise from")
    start = max(0, min(int(z[len(z) // 2]) - count // 2, mask.shape[2] - count))
    return slice(start, start + count)


def marchenko_pastur_variance(eigenvalues: np.ndarray, samples: int) -> np.ndarray:
    """Noise variance of each patch from its covariance eigenvalues (P, N), in ascending order.

    Veraart et al. 2016's criterion as DIPY's ``_pca_classifier`` writes it: the largest ``c``
    for which ``L[c] - L[0] <= 4 sqrt((c + 1) / samples) mean(L[:c + 1])`` marks the noise
    eigenvalues ``L[:c + 1]``, whose mean is the variance. Eigenvalues beyond ``samples - 1``
    (zero after the mean is removed) are left out first.
    """
    values = np.asarray(eigenvalues, dtype=np.float64)
    values = values[:, max(0, values.shape[1] - (samples - 1)):]
    count = np.arange(1, values.shape[1] + 1)
    means = np.cumsum(values, axis=1) / count
    inside = values - values[:, :1] - 4 * np.sqrt(count / samples) * means <= 0
    last = values.shape[1] - 1 - np.argmax(inside[:, ::-1], axis=1)
    return means[np.arange(len(values)), last]


def sigma_from_mppca(data: np.ndarray, mask: np.ndarray, *, patches: int = MPPCA_PATCHES) -> float:
    """Median Marchenko-Pastur noise level over ``patches`` patches centred in the mask.

    The patch is the smallest cube (5 x 5 x 5 or more) with more voxels than volumes, as in
    DIPY's ``mppca``; centres are taken where the whole patch lies in the image, evenly spread
    over the mask's voxels.
    """
    data = np.asarray(data, dtype=np.float32)
    mask = np.asarray(mask, bool)
    volumes = data.shape[-1]
    radius = 2
    while (2 * radius + 1) ** 3 <= volumes:
        radius += 1
    centres = np.argwhere(mask)
    inner = np.all((centres >= radius) & (centres < np.array(mask.shape) - radius), axis=1)
    centres = centres[inner]
    if len(centres) == 0:
        raise InputError(f"the mask has no voxel {radius} voxels inside the image: too small to estimate the noise "
                         "from; give the noise level (--sigma)")
    centres = centres[np.unique(np.linspace(0, len(centres) - 1, min(patches, len(centres))).round().astype(int))]
    offsets = np.arange(-radius, radius + 1)
    grid = np.stack(np.meshgrid(offsets, offsets, offsets, indexing="ij"), axis=-1).reshape(-1, 3)
    where = centres[:, None, :] + grid[None]
    patch = data[where[..., 0], where[..., 1], where[..., 2]].astype(np.float64)
    patch -= patch.mean(axis=1, keepdims=True)
    covariance = np.einsum("psi,psj->pij", patch, patch) / patch.shape[1]
    variance = marchenko_pastur_variance(np.linalg.eigvalsh(covariance), patch.shape[1])
    return float(np.sqrt(np.median(variance)))


def sigma_from_b0(b0: np.ndarray, protocol: str = "this protocol") -> float:
    """Noise standard deviation from repeated b0 measurements (M voxels, K >= 2 b0 volumes).

    See :func:`estimate_sigma`.
    """
    b0 = np.asarray(b0, dtype=np.float64)
    if b0.ndim != 2 or b0.shape[1] < 2:
        raise InputError(f"{protocol} has {b0.shape[-1]} b0 volume(s): estimating the noise needs at least two; "
                         "give the noise level instead (--snr-range for training, --sigma for denoising)")
    if len(b0) == 0:
        raise InputError("the mask is empty: no voxel to estimate the noise from")
    return float(np.sqrt(b0.var(axis=1, ddof=1).mean()))


def snr_range(data: np.ndarray, acq: Acquisition, mask: np.ndarray, *, widen: float = 2.0, method: str = "auto",
              sigma: float | None = None) -> tuple[float, tuple[float, float]]:
    """The SNR range (S0 / sigma) of the data's voxels, widened for training; ``data`` (X, Y, Z, N)
    is an array or an image's data object, of which only the b0 volumes and the slices of the
    noise estimate are read.

    Returns
    -------
    sigma : float
        ``sigma`` where given, else :func:`estimate_sigma` with ``method``.
    (low, high) : (float, float)
        The 5th and 95th percentiles of the voxels' mean b0 over sigma, divided and multiplied
        by ``widen``, within ``SNR_LIMITS``.
    """
    sigma = estimate_sigma(data, acq, mask, method=method) if sigma is None else sigma
    s0 = np.stack([np.asarray(data[..., int(k)], dtype=np.float64)[mask] for k in np.flatnonzero(acq.b0_mask)],
                  axis=-1).mean(axis=1)  # the b0 volumes alone: ``data`` may be an image's lazy data object
    low, high = np.percentile(s0 / sigma, [5, 95])
    clip = lambda v: float(np.clip(v, *SNR_LIMITS))  # noqa: E731
    return sigma, (clip(low / widen), clip(high * widen))


def noncentral_chi_mean(theta: np.ndarray, coils: int = 1) -> np.ndarray:
    """Expected magnitude over sigma, ``E[M] / sigma``, for a true signal ``nu = theta * sigma``.

    Notes
    -----
    ``E[M] = sigma sqrt(2) Gamma(N + 1/2) / Gamma(N) 1F1(-1/2; N; -nu² / (2 sigma²))`` for the
    root sum of squares of N coils, each with Gaussian noise of standard deviation sigma in its real
    and imaginary parts and the signal split evenly (Constantinides et al. 1997, MRM 38:852; N = 1
    is Rician: ``sigma sqrt(pi/2) L_1/2(-nu² / (2 sigma²))``).
    """
    from scipy.special import gammaln, hyp1f1

    theta = np.asarray(theta, dtype=np.float64)
    return np.sqrt(2.0) * np.exp(gammaln(coils + 0.5) - gammaln(coils)) * hyp1f1(-0.5, coils, -theta ** 2 / 2)


_THETA = np.linspace(0.0, 60.0, 12001)
"""Grid of nu / sigma on which :func:`noncentral_chi_mean` is inverted; above it,
``E[M]² = nu² + (2N - 1) sigma²`` holds to better than 1e-6 relative."""
FLOOR_STEP = 1 / 128
"""Step, in sigma, of the expected magnitudes at which :func:`remove_noise_floor` reads the inverse
(a lookup, not a search; in the compiled kernel of :mod:`dwivae.kernels.floor` where it runs)."""


def check_noise_model(sigma: float | None, coils: int) -> None:
    """Refuse a noise level that is not positive (None: to be estimated) or fewer than one coil."""
    if sigma is not None and not sigma > 0:
        raise InputError(f"the noise level must be positive, got sigma = {sigma}")
    if coils < 1:
        raise InputError(f"the number of coils must be at least 1, got {coils}")


def floor_in_data(signals: np.ndarray, sigma: float, *, coils: int = 1, volumes: np.ndarray | None = None) -> bool:
    """Whether the magnitudes (M, N) of the ``volumes`` (N,) bool, default all; the diffusion-weighted
    ones, say) show the noise floor that ``sigma`` implies.

    A magnitude never falls below its floor: a voxel's mean over those volumes stays above
    ``E[M | nu = 0]`` less three of its standard errors. Data with negative values (real-valued,
    phase-corrected), or whose lowest voxels (1st percentile) lie below that (a floor taken off
    before, or a sigma read too high), have no floor to remove at this sigma. Voxels with a
    non-finite value are left out.
    """
    signals = np.asarray(signals)
    chosen = np.ones(signals.shape[1], bool) if volumes is None else np.asarray(volumes, bool)
    if not chosen.any():
        return False
    means = signals @ (chosen / chosen.sum()).astype(signals.dtype)  # the volumes' mean, without a copy of them
    finite = np.isfinite(means) & np.isfinite(signals.sum(axis=1))
    if not finite.any() or (signals.min(axis=1)[finite] < 0).any():
        return False
    floor = float(noncentral_chi_mean(np.float64(0.0), coils))
    spread = np.sqrt(max(2 * coils - floor ** 2, 0.0) / chosen.sum())
    return bool(np.percentile(means[finite], 1) / sigma >= floor - 3 * spread)


@lru_cache(maxsize=16)
def _squared_inverse(coils: int) -> tuple[float, np.ndarray]:
    """The floor ``E[M | nu = 0] / sigma`` and ``(nu / sigma)²`` on the grid of expected magnitudes
    ``floor + k FLOOR_STEP`` up to the end of :data:`_THETA`: smooth in the magnitude (linear
    at the floor, ``E[M]² - (2N - 1)`` far above it), so linear interpolation in it is exact to
    ~1e-6 sigma."""
    means = noncentral_chi_mean(_THETA, coils)
    grid = means[0] + np.arange(int(np.ceil((means[-1] - means[0]) / FLOOR_STEP)) + 2) * FLOOR_STEP
    squares = np.interp(grid, means, _THETA) ** 2
    beyond = grid > means[-1]
    squares[beyond] = grid[beyond] ** 2 - (2 * coils - 1)
    return float(means[0]), squares


def remove_noise_floor(signal: np.ndarray, sigma: float, *, coils: int = 1) -> np.ndarray:
    """The true signal nu whose expected magnitude is ``signal`` (the noise floor removed).

    Parameters
    ----------
    signal : ndarray
        Expected magnitudes, e.g. a denoised series, in the data's units.
    sigma : float
        Noise standard deviation per real channel, same units.
    coils : int
        N of the noncentral chi distribution (1: Rician).

    Returns
    -------
    ndarray, float32
        nu, 0 where ``signal`` is at or below the floor ``E[M | nu = 0]``; non-finite values are
        kept as they are.
    """
    check_noise_model(sigma, coils)
    floor, squares = _squared_inverse(coils)
    compiled = compiled_floor_removal(signal, sigma, floor=floor, step=FLOOR_STEP, squares=squares, coils=coils)
    if compiled is not None:
        return compiled
    shape = np.shape(signal)
    ratio = np.asarray(signal, dtype=np.float64).reshape(-1) / sigma
    top = len(squares) - 2
    position = np.nan_to_num(np.clip((ratio - floor) / FLOOR_STEP, 0, top), nan=0.0)
    index = position.astype(np.intp)
    position -= index
    theta2 = squares[index]
    theta2 += (squares[index + 1] - theta2) * position
    theta = np.sqrt(theta2)
    beyond = ~(np.abs(ratio) < floor + top * FLOOR_STEP)  # far above the floor, or not finite
    far = ratio[beyond]
    above = np.where(far > 0, np.sqrt(np.maximum(far ** 2 - (2 * coils - 1), 0)), 0)
    theta[beyond] = np.where(np.isfinite(far), above, far)
    return np.asarray(theta * sigma, dtype=np.float32).reshape(shape)
