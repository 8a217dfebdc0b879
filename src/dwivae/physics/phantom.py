"""A brain-like diffusion phantom with ground truth, for benchmarks that in-vivo data cannot give.

A head-shaped ellipsoid holds an outer layer of CSF, a grey-matter band, white matter whose single
fibre bends smoothly through space, two CSF ventricles and a sphere where a second fibre crosses
the first at 90 degrees (two equal tensors). Every voxel's clean signal follows from its tensors;
noise is Gaussian, Rician or noncentral chi at a signal-to-noise ratio defined in white matter.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np

from dwivae import io
from dwivae._version import __version__
from dwivae.errors import InputError
from dwivae.physics.acquisition import Acquisition, save_acquisition
from dwivae.physics.simulate import NOISE_KINDS, add_gaussian_noise, add_noncentral_chi_noise, tensor_signals
from dwivae.physics.tissue import RANGES, csf, grey_matter, white_matter

LABELS = {0: "background", 1: "CSF", 2: "GM", 3: "WM", 4: "crossing"}
"""Tissue label values of the label map."""
EIGENVALUES = {"CSF": (3.0e-3, 3.0e-3, 3.0e-3), "GM": (0.9e-3, 0.75e-3, 0.75e-3), "WM": (1.6e-3, 0.4e-3, 0.4e-3)}
"""Tensor eigenvalues per tissue, mm²/s: MD 3e-3 (CSF), 0.8e-3 (GM, FA 0.11), 0.8e-3 (WM, FA 0.71)."""
S0 = {"CSF": 2500.0, "GM": 1300.0, "WM": 1000.0, "crossing": 1000.0}
"""Signal without diffusion weighting per tissue (CSF is bright on T2-weighted b0 images)."""
VOXEL_SIZE = 2.0
"""mm, isotropic."""


@dataclass(frozen=True)
class Phantom:
    """A phantom and its ground truth.

    Attributes
    ----------
    clean, noisy : (X, Y, Z, N) ndarray, float32
    labels : (X, Y, Z) uint8 ndarray
        See ``LABELS``.
    tensors : (X, Y, Z, 6) ndarray, float32, mm²/s
        The tensor of single-tensor voxels (Dxx, Dyy, Dzz, Dxy, Dxz, Dyz); zero in background
        and crossing voxels.
    fibres : (X, Y, Z, 2, 3) ndarray, float32
        Unit fibre directions: the first in white matter and crossing voxels, the second in
        crossing voxels only; zero elsewhere.
    sigma : float
        Per-channel noise standard deviation (``S0`` of white matter / SNR).
    """

    clean: np.ndarray
    noisy: np.ndarray
    labels: np.ndarray
    tensors: np.ndarray
    fibres: np.ndarray
    sigma: float


def _tensor_along(direction: np.ndarray, evals: tuple[float, float, float]) -> np.ndarray:
    """Axially symmetric tensors (M, 6) with principal axes ``direction`` (M, 3)."""
    axial, radial = evals[0], evals[1]
    d = direction / np.linalg.norm(direction, axis=-1, keepdims=True)
    M = radial * np.eye(3) + (axial - radial) * d[:, :, None] * d[:, None, :]
    return np.stack([M[:, 0, 0], M[:, 1, 1], M[:, 2, 2], M[:, 0, 1], M[:, 0, 2], M[:, 1, 2]], axis=1)


def _geometry(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Tissue labels (X, Y, Z) and the white-matter fibre field (X, Y, Z, 3)."""
    u, v, w = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (n / 2) for n in shape], indexing="ij")
    r = np.sqrt((u / 0.9) ** 2 + (v / 0.95) ** 2 + (w / 0.9) ** 2)  # ellipsoidal radius of the head
    labels = np.zeros(shape, dtype=np.uint8)
    labels[r <= 1.0] = 1
    labels[r <= 0.9] = 2
    labels[r <= 0.75] = 3
    for side in (-1, 1):
        ventricle = ((u - 0.15 * side) / 0.08) ** 2 + ((v - 0.05) / 0.25) ** 2 + ((w - 0.1) / 0.2) ** 2 <= 1
        labels[ventricle & (labels == 3)] = 1
    crossing = (u / 0.2) ** 2 + ((v + 0.4) / 0.2) ** 2 + (w / 0.25) ** 2 <= 1
    labels[crossing & (labels == 3)] = 4
    # Fibres circle the z axis and tilt up with height: smooth, never zero inside the white matter.
    field = np.stack([-v, u, 0.5 + 0.4 * w], axis=-1)
    return labels, field / np.linalg.norm(field, axis=-1, keepdims=True)


def make_phantom(acq: Acquisition, *, shape: tuple[int, int, int] = (96, 96, 50), snr: float = 20.0,
                 noise: str = "rician", coils: int = 1, seed: int = 0) -> Phantom:
    """Simulate the phantom for a protocol.

    Parameters
    ----------
    acq : Acquisition
    shape : (int, int, int)
        Grid size (each at least 8).
    snr : float
        ``S0`` of white matter over the per-channel noise standard deviation.
    noise : {"gaussian", "rician", "nc-chi"}
        Gaussian (clipped at 0, as in the study), Rician (one channel) or noncentral chi
        (sum of squares over ``coils`` channels).
    coils : int
        Receiver channels of ``nc-chi`` noise.
    seed : int
        Fixes the noise.

    Returns
    -------
    Phantom
    """
    _check_settings(shape, snr, noise, coils)
    labels, field = _geometry(tuple(shape))
    n = acq.n_volumes
    clean = np.zeros((*shape, n), dtype=np.float32)
    tensors = np.zeros((*shape, 6), dtype=np.float32)
    fibres = np.zeros((*shape, 2, 3), dtype=np.float32)
    for value, tissue in ((1, "CSF"), (2, "GM"), (3, "WM")):
        sel = labels == value
        D = _tensor_along(field[sel], EIGENVALUES[tissue])
        tensors[sel] = D
        clean[sel] = tensor_signals(D, acq, S0=S0[tissue])
    fibres[labels == 3, 0] = field[labels == 3]
    sel = labels == 4
    first = field[sel]
    second = np.cross(first, [0.0, 1.0, 0.0])
    second /= np.linalg.norm(second, axis=-1, keepdims=True)
    clean[sel] = 0.5 * (tensor_signals(_tensor_along(first, EIGENVALUES["WM"]), acq, S0=S0["crossing"])
                        + tensor_signals(_tensor_along(second, EIGENVALUES["WM"]), acq, S0=S0["crossing"]))
    fibres[sel, 0], fibres[sel, 1] = first, second
    return _with_noise(clean, labels, tensors, fibres, snr=snr, noise=noise, coils=coils,
                       rng=np.random.default_rng(seed))


TISSUES = ("simple", "realistic")
"""Phantom kinds: piecewise-constant tensors (:func:`make_phantom`) or multi-compartment tissue
with partial volume (:func:`make_realistic_phantom`)."""
CROSSING_ANGLES = (90.0, 60.0)
"""Angles (degrees) of the realistic phantom's two crossing regions."""
PARTIAL_VOLUME_SMOOTHING = 0.8
"""Voxels: the tissue fractions of the realistic phantom are its label maps blurred by a Gaussian of
this width, so every boundary voxel mixes two tissues."""


def _rotate_about_perpendicular(first: np.ndarray, degrees: float) -> np.ndarray:
    """Unit directions at ``degrees`` from each of ``first`` (M, 3), in a plane that holds it."""
    helper = np.where(np.abs(first[:, 1:2]) < 0.9, [[0, 1.0, 0]], [[1.0, 0, 0]])
    perp = np.cross(first, helper)
    perp /= np.linalg.norm(perp, axis=-1, keepdims=True)
    angle = np.radians(degrees)
    return np.cos(angle) * first + np.sin(angle) * perp


def make_realistic_phantom(acq: Acquisition, *, shape: tuple[int, int, int] = (96, 96, 50), snr: float = 20.0,
                           noise: str = "rician", coils: int = 1, seed: int = 0) -> Phantom:
    """A phantom of multi-compartment tissue with partial volume (:mod:`dwivae.physics.tissue`).

    The head of :func:`make_phantom` (CSF rim and ventricles, a grey-matter band, white matter
    whose fibre bends through space), with a second fibre crossing at 90 degrees in one sphere and
    at 60 in another; every voxel draws its own tissue parameters (fibre dispersion, intra-axonal
    fraction, diffusivities, free water, grey matter's two pools), and the tissue fractions are
    the label maps blurred by :data:`PARTIAL_VOLUME_SMOOTHING` voxels, each tissue with its own
    S0. Labels give each voxel's dominant tissue (crossing where white matter dominates in a
    crossing sphere). ``tensors`` is zero: the truth is the fit of the clean series.

    Parameters are those of :func:`make_phantom`; ``seed`` fixes the tissue and the noise.
    """
    from scipy.ndimage import gaussian_filter

    _check_settings(shape, snr, noise, coils)
    shape = tuple(shape)
    labels, field = _geometry(shape)
    head = labels > 0
    u, v, w = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) / (n / 2) for n in shape], indexing="ij")
    sixty = (u / 0.2) ** 2 + ((v - 0.45) / 0.18) ** 2 + (w / 0.25) ** 2 <= 1
    ninety = labels == 4
    hard = {"CSF": labels == 1, "GM": labels == 2, "WM": (labels >= 3)}
    fractions = {name: np.where(head, gaussian_filter(mask.astype(np.float64), PARTIAL_VOLUME_SMOOTHING), 0.0)
                 for name, mask in hard.items()}
    total = sum(fractions.values())
    fractions = {name: np.divide(f, total, out=np.zeros_like(f), where=total > 0) for name, f in fractions.items()}
    rng = np.random.default_rng(seed)
    n = acq.n_volumes
    clean = np.zeros((*shape, n), dtype=np.float32)
    fibres = np.zeros((*shape, 2, 3), dtype=np.float32)
    sel = fractions["WM"] > 0
    first = field[sel]
    wm = white_matter(acq, first, rng=rng)
    fibres[sel, 0] = first
    for region, angle in ((ninety, CROSSING_ANGLES[0]), (sixty & hard["WM"], CROSSING_ANGLES[1])):
        inside = region[sel]
        second = _rotate_about_perpendicular(first[inside], angle)
        wm[inside] = 0.5 * wm[inside] + 0.5 * white_matter(acq, second, rng=rng)
        where = np.zeros(shape, bool)
        where[sel] = inside
        fibres[where, 1] = second
    clean[sel] += (fractions["WM"][sel] * S0["WM"])[:, None] * wm
    sel = fractions["GM"] > 0
    clean[sel] += (fractions["GM"][sel] * S0["GM"])[:, None] * grey_matter(acq, int(sel.sum()), rng=rng)
    sel = fractions["CSF"] > 0
    clean[sel] += (fractions["CSF"][sel] * S0["CSF"])[:, None] * csf(acq, int(sel.sum()), rng=rng)
    dominant = np.argmax(np.stack([fractions["CSF"], fractions["GM"], fractions["WM"]]), axis=0) + 1
    labels = np.where(head, dominant, 0).astype(np.uint8)
    labels[(labels == 3) & (ninety | sixty)] = 4
    return _with_noise(clean, labels, np.zeros((*shape, 6), np.float32), fibres, snr=snr, noise=noise, coils=coils,
                       rng=rng)


def _check_settings(shape: tuple[int, ...], snr: float, noise: str, coils: int) -> None:
    if len(shape) != 3 or min(shape) < 8:
        raise InputError(f"the phantom needs three dimensions of at least 8 voxels; got {tuple(shape)}")
    if not snr > 0:
        raise InputError(f"SNR must be positive; got {snr}")
    if noise not in NOISE_KINDS:
        raise InputError(f"unknown noise {noise!r}: choose one of {', '.join(NOISE_KINDS)}")
    if coils < 1 or (noise != "nc-chi" and coils != 1):
        raise InputError(f"--coils {coils}: use 1, or more with --noise nc-chi")


def _with_noise(clean: np.ndarray, labels: np.ndarray, tensors: np.ndarray, fibres: np.ndarray, *, snr: float,
                noise: str, coils: int, rng: np.random.Generator) -> Phantom:
    """The phantom with noise of per-channel sigma ``S0 of white matter / snr`` added to ``clean``."""
    sigma = S0["WM"] / snr
    if noise == "gaussian":
        noisy = add_gaussian_noise(clean.reshape(-1, clean.shape[-1]), sigma, rng=rng).reshape(clean.shape)
    else:
        noisy = add_noncentral_chi_noise(clean, sigma, coils=coils, rng=rng)
    return Phantom(clean, noisy, labels, tensors, fibres, float(sigma))


def write_phantom(phantom: Phantom, acq: Acquisition, out: str | PathLike[str], *, settings: dict,
                  force: bool = False) -> dict[str, Path]:
    """Write a phantom directory: ``dwi.nii.gz`` (noisy) with ``dwi.bval``/``dwi.bvec``,
    ``clean.nii.gz``, ``labels.nii.gz``, ``tensors.nii.gz``, ``fibres.nii.gz`` (X, Y, Z, 6: two
    directions) and ``phantom.json`` (settings, noise sigma, label names, tissue parameters).

    Returns
    -------
    dict of str to Path
    """
    out = Path(out)
    if (out / "phantom.json").exists() and not force:
        raise InputError(f"{out} already holds a phantom; pass --force to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    affine = np.diag([VOXEL_SIZE, VOXEL_SIZE, VOXEL_SIZE, 1.0])
    affine[:3, 3] = -VOXEL_SIZE * (np.asarray(phantom.labels.shape) - 1) / 2
    like = nib.Nifti1Image(np.zeros(phantom.labels.shape, np.uint8), affine)
    like.header.set_xyzt_units("mm", "sec")
    arrays = {"dwi": phantom.noisy, "clean": phantom.clean, "labels": phantom.labels,
              "tensors": phantom.tensors, "fibres": phantom.fibres.reshape(*phantom.labels.shape, 6)}
    paths = {name: io.write_nifti_atomic(out / f"{name}.nii.gz", array, like, force=True)
             for name, array in arrays.items()}
    paths["bval"], paths["bvec"] = out / "dwi.bval", out / "dwi.bvec"
    save_acquisition(acq, paths["bval"], paths["bvec"])
    counts = {LABELS[v]: int((phantom.labels == v).sum()) for v in LABELS if v}
    info = {**settings, "sigma": phantom.sigma, "shape": list(phantom.labels.shape), "labels": LABELS,
            "voxels": counts, "S0": S0,
            **({"eigenvalues": EIGENVALUES} if settings.get("tissue", "simple") == "simple" else
               {"tissue_ranges": asdict(RANGES), "crossing_angles": CROSSING_ANGLES}), "protocol": acq.to_json(),
            "tensor_order": "Dxx Dyy Dzz Dxy Dxz Dyz", "GeneratedBy": [{"Name": "dwivae", "Version": __version__}]}
    paths["json"] = io.write_json_atomic(out / "phantom.json", info, force=True)
    return paths
