"""Acquisition protocols: b-values, gradient directions, shells, checks and fingerprints.

A protocol is what a model is trained for. This module reads FSL ``.bval``/``.bvec`` files,
checks them, groups b-values into shells with a tolerance (as MRtrix3 does, so that 2950 and
3000 s/mm² are one shell), gives a stable fingerprint, compares two protocols, and holds the
built-in protocols (``seed32``: the study's 2 volumes at b=50 and 30 directions at b=1000).
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import numpy as np

from dwivae.errors import InputError

B0_THRESHOLD = 50.0
"""b-values at or below this (s/mm²) are non-diffusion-weighted "b0" volumes (DIPY's default)."""

SHELL_TOLERANCE = 100.0
"""No two b-values (s/mm²) of one shell differ by more than this (see :class:`Acquisition`)."""

UNIT_NORM_TOLERANCE = 0.1
"""Directions at b > threshold must have a norm within this of 1; they are then renormalised."""

DIRECTION_TOLERANCE_DEG = 5.0
"""Two protocols match when each pair of directions agrees within this angle, up to sign."""

_SEED32_DIRECTIONS = np.array([
    (-0.212045, -0.750549, 0.625870), (-0.956844, 0.241435, 0.161737),
    (0.796980, 0.603093, 0.033185), (-0.411826, -0.900601, 0.138988),
    (-0.810116, 0.121910, 0.573455), (-0.115148, 0.468814, 0.875759),
    (-0.926951, -0.245779, 0.283469), (0.435330, -0.120189, 0.892212),
    (0.924924, -0.254174, 0.282686), (-0.429788, 0.084422, 0.898974),
    (-0.641500, -0.304793, 0.703973), (-0.398347, 0.916805, 0.028058),
    (-0.230781, -0.370283, 0.899795), (-0.722138, 0.634186, 0.276270),
    (-0.552058, 0.488635, 0.675624), (0.725588, -0.661991, 0.187856),
    (0.380872, 0.357833, 0.852580), (-0.639619, -0.640273, 0.425368),
    (0.962734, 0.196060, 0.186288), (0.358549, -0.793517, 0.491704),
    (0.016808, -0.961576, 0.274024), (0.044997, 0.976373, 0.211353),
    (0.646007, -0.441544, 0.622667), (0.698741, 0.484643, 0.526196),
    (-0.284899, 0.816746, 0.501756), (0.479414, 0.817855, 0.318239),
    (0.027691, 0.022059, 0.999373), (0.188312, -0.524603, 0.830259),
    (0.179068, 0.738177, 0.650407), (0.776766, 0.051098, 0.627713),
])
"""30 directions spread by electrostatic repulsion on the half sphere (min. angle 25.2°)."""


@dataclass(frozen=True, eq=False)
class Acquisition:
    """A diffusion acquisition protocol.

    Parameters
    ----------
    bvals : (N,) ndarray, s/mm²
        b-value of each volume.
    bvecs : (N, 3) ndarray
        Unit gradient direction of each volume; zero vectors are allowed for b0 volumes.
    b0_threshold : float, s/mm²
        Volumes with ``b <= b0_threshold`` are b0 volumes.
    shell_tolerance : float, s/mm²
        No two b-values of one shell differ by more than this: from the lowest b-value up, a
        shell takes every b-value within the tolerance of its first, and the next one starts a
        new shell (so a ramp of b-values never chains into one shell).
    name : str
        A label for messages and model files (the file name or the built-in protocol's name).
    """

    bvals: np.ndarray
    bvecs: np.ndarray
    b0_threshold: float = B0_THRESHOLD
    shell_tolerance: float = SHELL_TOLERANCE
    name: str = field(default="custom")

    def __post_init__(self) -> None:
        bvals, bvecs = _validate_gradients(
            np.asarray(self.bvals, dtype=np.float64),
            np.asarray(self.bvecs, dtype=np.float64),
            b0_threshold=self.b0_threshold,
            source=self.name,
        )
        bvals.setflags(write=False)
        bvecs.setflags(write=False)
        object.__setattr__(self, "bvals", bvals)
        object.__setattr__(self, "bvecs", bvecs)

    @property
    def n_volumes(self) -> int:
        """Number of volumes N."""
        return int(self.bvals.shape[0])

    @property
    def b0_mask(self) -> np.ndarray:
        """(N,) bool ndarray: True for b0 volumes."""
        return self.bvals <= self.b0_threshold

    def shell_labels(self) -> np.ndarray:
        """Label every volume with the index of its shell (0 is the lowest, b0s included).

        Returns
        -------
        labels : (N,) int ndarray
        """
        order = np.argsort(self.bvals, kind="stable")
        labels = np.empty(self.n_volumes, dtype=np.int64)
        shell, start = 0, self.bvals[order[0]]
        for k in order:  # a shell starts at its lowest b-value and takes what lies within the tolerance
            if self.bvals[k] - start > self.shell_tolerance:
                shell, start = shell + 1, self.bvals[k]
            labels[k] = shell
        return labels

    def shells(self) -> np.ndarray:
        """Nominal b-value of each shell: the median of its volumes, rounded to 1 s/mm².

        Returns
        -------
        shells : (n_shells,) ndarray, s/mm²
        """
        labels = self.shell_labels()
        return np.array([np.round(np.median(self.bvals[labels == s])) for s in range(labels.max() + 1)])

    def nominal_bvals(self) -> np.ndarray:
        """(N,) ndarray, s/mm²: every volume's shell b-value (b0 volumes give 0)."""
        nominal = self.shells()[self.shell_labels()]
        return np.where(self.b0_mask, 0.0, nominal)

    def canonical_bvecs(self) -> np.ndarray:
        """(N, 3) ndarray: directions with the sign fixed (first non-zero component positive)."""
        vecs = np.where(self.b0_mask[:, None], 0.0, self.bvecs)
        first = np.argmax(np.abs(vecs) > 1e-9, axis=1)
        sign = np.sign(vecs[np.arange(self.n_volumes), first])
        sign[sign == 0] = 1.0
        return vecs * sign[:, None]

    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of the protocol (shell b-values, directions up to sign).

        Shell b-values enter rounded to 100 s/mm², so two acquisitions of the same protocol that
        differ only in b-value jitter within a shell, in the sign of a direction or in rounding
        below 1e-3 give the same fingerprint.
        """
        bvals = np.round(self.nominal_bvals() / 100.0) * 100.0
        payload = np.concatenate([bvals[:, None], self.canonical_bvecs()], axis=1)
        text = ";".join(",".join(f"{v:.3f}" for v in row) for row in np.round(payload, 3) + 0.0)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> str:
        """One line: volume count, b0 count and shells."""
        shells = ", ".join(f"b={int(b)}" for b in self.shells() if b > self.b0_threshold)
        return f"{self.name}: {self.n_volumes} volumes, {int(self.b0_mask.sum())} b0, shells {shells}"

    def mismatch(self, other: Acquisition, *, names: tuple[str, str] | None = None) -> str | None:
        """Say how ``other`` differs from this protocol, or return None when they match.

        ``names`` label this protocol and ``other`` in the message (default: their names).

        They match when the volume counts are equal, each volume's b-value lies within the shell
        tolerance of the other's, and each direction agrees within
        ``DIRECTION_TOLERANCE_DEG`` up to sign (b0 volumes' directions are ignored).
        """
        mine, theirs = names or (self.name, other.name)
        if other.n_volumes != self.n_volumes:
            return f"{theirs} has {other.n_volumes} volumes but {mine} has {self.n_volumes}"
        db = np.abs(other.bvals - self.bvals)
        if np.any(db > self.shell_tolerance):
            k = int(np.argmax(db))
            return f"volume {k} has b={other.bvals[k]:g} in {theirs} but b={self.bvals[k]:g} in {mine}"
        weighted = ~self.b0_mask & ~other.b0_mask
        cosines = np.abs(np.sum(other.bvecs * self.bvecs, axis=1))
        bad = weighted & (cosines < np.cos(np.radians(DIRECTION_TOLERANCE_DEG)))
        if np.any(bad):
            k = int(np.argmax(bad))
            angle = np.degrees(np.arccos(np.clip(cosines[k], 0, 1)))
            return f"volume {k} direction differs by {angle:.1f} degrees between {theirs} and {mine}"
        return None

    def to_json(self) -> dict:
        """A JSON-serialisable description that :func:`from_json` reads back."""
        return {
            "name": self.name,
            "bvals": self.bvals.tolist(),
            "bvecs": self.bvecs.tolist(),
            "b0_threshold": self.b0_threshold,
            "shell_tolerance": self.shell_tolerance,
            "fingerprint": self.fingerprint(),
        }


def from_json(obj: dict) -> Acquisition:
    """Rebuild an :class:`Acquisition` from :meth:`Acquisition.to_json` output."""
    return Acquisition(
        np.asarray(obj["bvals"]),
        np.asarray(obj["bvecs"]),
        b0_threshold=float(obj["b0_threshold"]),
        shell_tolerance=float(obj["shell_tolerance"]),
        name=str(obj["name"]),
    )


def _validate_gradients(
    bvals: np.ndarray, bvecs: np.ndarray, *, b0_threshold: float, source: str, bvec_source: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes and values; return bvals (N,) and renormalised bvecs (N, 3). Messages about
    b-values name ``source``, those about directions ``bvec_source`` (default: ``source``)."""
    bvec_source = bvec_source or source
    if bvals.ndim != 1 or bvals.size == 0:
        raise InputError(f"{source}: b-values must be one non-empty row, got shape {bvals.shape}")
    if bvecs.ndim != 2 or 3 not in bvecs.shape:
        raise InputError(f"{bvec_source}: gradient directions must be 3 x N or N x 3, got shape {bvecs.shape}")
    if bvecs.shape[0] == 3 and bvecs.shape[1] == bvals.size:
        bvecs = bvecs.T  # FSL's layout: one row per axis
    elif bvecs.shape[1] != 3:
        bvecs = bvecs.T
    if bvecs.shape[0] != bvals.size:
        raise InputError(f"{bvec_source}: the bvec file has {bvecs.shape[0]} directions "
                         f"but the bval file has {bvals.size} b-values")
    if not np.all(np.isfinite(bvals)):
        raise InputError(f"{source}: b-values must be finite numbers (found NaN or inf)")
    if np.any(bvals < 0):
        raise InputError(f"{source}: b-values must be >= 0, found {bvals.min():g}")
    weighted = bvals > b0_threshold
    if not np.all(np.isfinite(bvecs[weighted])):
        k = int(np.argmax(weighted & ~np.isfinite(bvecs).all(axis=1)))
        raise InputError(f"{bvec_source}: volume {k} has b={bvals[k]:g} but a non-finite direction; "
                         "every diffusion-weighted volume needs a finite unit direction")
    bvecs = np.where(np.isfinite(bvecs), bvecs, 0.0)  # b0 volumes: NaN directions (as some tools write) mean none
    norms = np.linalg.norm(bvecs, axis=1)
    bad = weighted & (np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE)
    if np.any(bad):
        k = int(np.argmax(bad))
        raise InputError(f"{bvec_source}: volume {k} has b={bvals[k]:g} but a direction of length "
                         f"{norms[k]:.3g}; every volume above b={b0_threshold:g} needs a unit direction")
    unit = np.zeros_like(bvecs)
    nonzero = norms > 1e-6
    unit[nonzero] = bvecs[nonzero] / norms[nonzero, None]
    return bvals.copy(), unit


def _read_table(path: Path, what: str) -> np.ndarray:
    """Read a whitespace-separated numeric text file, naming it on failure."""
    if path.is_dir():
        raise InputError(f"{what} file {path} is a directory: give the .{what} file itself")
    if not path.is_file():
        raise InputError(f"{what} file {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file is reported below, not as numpy's warning
            table = np.atleast_1d(np.loadtxt(path, dtype=np.float64, ndmin=1))
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise InputError(f"{what} file {path} is not a table of numbers ({err})") from None
    if table.size == 0:
        raise InputError(f"{what} file {path} is empty: give the {what} file written with the image")
    return table


def load_acquisition(
    bvals: str | PathLike[str],
    bvecs: str | PathLike[str],
    *,
    b0_threshold: float = B0_THRESHOLD,
    shell_tolerance: float = SHELL_TOLERANCE,
) -> Acquisition:
    """Read FSL-style ``.bval`` and ``.bvec`` files.

    Parameters
    ----------
    bvals, bvecs : path
        The b-value file (one row or column, s/mm²) and the direction file (3 x N as FSL writes
        it, or N x 3).
    b0_threshold : float, s/mm²
        Volumes at or below this b-value are b0 volumes.
    shell_tolerance : float, s/mm²
        Tolerance for grouping b-values into shells.

    Returns
    -------
    Acquisition
    """
    bval_path, bvec_path = Path(bvals), Path(bvecs)
    values = _read_table(bval_path, "bval").ravel()
    vectors = _read_table(bvec_path, "bvec")
    if vectors.ndim == 1:
        vectors = vectors[None, :] if vectors.size == 3 else vectors
    vectors = np.atleast_2d(vectors)
    _validate_gradients(values, vectors, b0_threshold=b0_threshold, source=bval_path.name,
                        bvec_source=bvec_path.name)
    return Acquisition(values, vectors, b0_threshold=b0_threshold, shell_tolerance=shell_tolerance,
                       name=bval_path.name)


def save_acquisition(acq: Acquisition, bvals: str | PathLike[str], bvecs: str | PathLike[str]) -> None:
    """Write FSL-style files: one row of b-values, three rows of direction components."""
    np.savetxt(bvals, acq.bvals[None, :], fmt="%g")
    np.savetxt(bvecs, acq.bvecs.T, fmt="%.6f")


def seed32() -> Acquisition:
    """The study's protocol: b=50 first and last, 30 directions at b=1000 between them.

    The two b=50 volumes carry no direction: they are the b0 volumes of the protocol.
    """
    bvals = np.concatenate([[50.0], np.full(30, 1000.0), [50.0]])
    dirs = _SEED32_DIRECTIONS / np.linalg.norm(_SEED32_DIRECTIONS, axis=1, keepdims=True)
    bvecs = np.concatenate([np.zeros((1, 3)), dirs, np.zeros((1, 3))])
    return Acquisition(bvals, bvecs, name="seed32")


BUILTIN_PROTOCOLS = {"seed32": seed32}


def builtin_protocol(name: str) -> Acquisition:
    """Return a built-in protocol by name (see ``BUILTIN_PROTOCOLS``)."""
    if name not in BUILTIN_PROTOCOLS:
        known = ", ".join(sorted(BUILTIN_PROTOCOLS))
        raise InputError(f"unknown protocol {name!r}: choose one of {known}, or pass --bvals and --bvecs")
    return BUILTIN_PROTOCOLS[name]()
