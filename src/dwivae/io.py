"""NIfTI input and output for 4D diffusion series: lazy reading, slab iteration and atomic writing.

Images are opened lazily (memory-mapped when uncompressed) and read slab by slab along the third
axis, so that peak memory follows the slab size rather than the number of slices. Outputs are
written to a temporary file next to the target and renamed onto it only once complete, so that an
interrupted run never leaves a truncated output behind and never replaces a good one with a bad one.

Reading a ``.nii.gz`` slab by slab decompresses the stream again for each slab unless the optional
``indexed_gzip`` package is installed (nibabel then seeks in the compressed stream); uncompressed
``.nii`` files have no such cost.
"""
from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from dwivae.errors import InputError

AFFINE_TOLERANCE = 1e-3
"""Two affines (mm) describe the same grid when every element agrees within this."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _split_nifti(path: str | PathLike[str]) -> tuple[Path, str]:
    """Split ``dir/name.nii.gz`` into (``dir/name``, ``.nii.gz``); raise for other suffixes."""
    path = Path(path)
    for suffix in _NIFTI_SUFFIXES:
        if path.name.lower().endswith(suffix) and len(path.name) > len(suffix):
            cut = len(path.name) - len(suffix)
            return path.with_name(path.name[:cut]), path.name[cut:]
    raise InputError(f"{path} is not named like a NIfTI file: give a name ending in .nii or .nii.gz")


def _open_nifti(path: str | PathLike[str]) -> nib.Nifti1Image:
    """Open a single-file NIfTI-1 or NIfTI-2 image lazily, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file: check the path")
    try:
        img = nib.load(path, mmap=True)
    except (OSError, EOFError, ValueError, OverflowError, ImageFileError, HeaderDataError) as err:
        raise InputError(f"{path} could not be read as NIfTI ({err}): give a .nii or .nii.gz image") from None
    if not isinstance(img, nib.Nifti1Image):  # NIfTI-2 images subclass it; .hdr/.img pairs do not
        raise InputError(f"{path} is a {type(img).__name__}, not a single-file NIfTI: "
                         "convert it to .nii or .nii.gz (e.g. with mrconvert or dcm2niix)")
    _check_size(path, img)
    return img


GZIP_MAX_RATIO = 1032
"""deflate expands at most ~1032-fold: a .nii.gz smaller than its data / this cannot hold it."""


def _check_size(path: Path, img: nib.Nifti1Image) -> None:
    """Refuse a header whose dimensions need more bytes than the file can hold, before anything
    is allocated for them (a corrupt or hostile header claiming 30000³ voxels)."""
    shape = img.shape
    if any(n < 1 for n in shape):
        raise InputError(f"{path} has a dimension of size 0 in its header {shape}: the file is corrupt, re-export it")
    needed = int(np.prod(shape, dtype=object)) * img.header.get_data_dtype().itemsize
    size = path.stat().st_size
    compressed = path.name.lower().endswith(".gz")
    offset = int(getattr(img.dataobj, "offset", 0))  # the loaded header's own offset is reset to 0
    if (needed > size * GZIP_MAX_RATIO) if compressed else (needed + offset > size):
        raise InputError(f"{path} is truncated or corrupt: its header claims {'x'.join(map(str, shape))} "
                         f"{img.header.get_data_dtype()} voxels, more than its {size} bytes can hold; re-export it")


def load_dwi(path: str | PathLike[str]) -> nib.Nifti1Image:
    """Open a 4D diffusion series without reading its voxels.

    Parameters
    ----------
    path : str or PathLike
        A ``.nii`` or ``.nii.gz`` file with volumes along the fourth axis.

    Returns
    -------
    nibabel.Nifti1Image
        The image; its ``dataobj`` is a lazy proxy (memory-mapped for uncompressed files).

    Raises
    ------
    InputError
        If the file is missing, unreadable, not a single-file NIfTI, or not 4D.
    """
    img = _open_nifti(path)
    if img.ndim != 4:
        raise InputError(f"{path} is {img.ndim}D {img.shape}; a diffusion series needs a 4th axis of volumes")
    return img


def iter_slabs(img: nib.Nifti1Image, *, slab: int = 8) -> Iterator[tuple[int, int, np.ndarray]]:
    """Read a 4D image slab by slab along its third axis.

    Only one slab is in memory at a time. The header's ``scl_slope``/``scl_inter`` are applied,
    as in ``img.get_fdata()``.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        A 4D image as returned by :func:`load_dwi`.
    slab : int
        Number of slices per slab; the last slab may be thinner.

    Yields
    ------
    z0, z1 : int
        The slab covers slices ``z0 <= z < z1``.
    data : (X, Y, z1 - z0, N) ndarray of float32
        The scaled voxel values of the slab.

    Raises
    ------
    InputError
        If ``slab`` is below 1, or the file is truncated or corrupt where a slab lies.
    """
    if slab < 1:
        raise InputError(f"the slab thickness must be at least 1 slice, got {slab}")
    n_slices = img.shape[2]
    for z0 in range(0, n_slices, slab):
        z1 = min(z0 + slab, n_slices)
        try:
            data = np.asarray(img.dataobj[:, :, z0:z1, :], dtype=np.float32)
        except (OSError, EOFError, ValueError, OverflowError) as err:
            raise InputError(f"{img.get_filename()} could not be read at slices {z0}-{z1 - 1} ({err}): "
                             "the file is truncated or corrupt, re-export it") from None
        yield z0, z1, data


def load_mask(path: str | PathLike[str], img: nib.Nifti1Image) -> np.ndarray:
    """Read a brain mask and check that it lies on the image's grid.

    Parameters
    ----------
    path : str or PathLike
        A 3D NIfTI mask (a 4D mask with one volume is accepted); voxels above 0 are inside.
    img : nibabel.Nifti1Image
        The image the mask belongs to.

    Returns
    -------
    (X, Y, Z) ndarray of bool
        True inside the mask.

    Raises
    ------
    InputError
        If the mask cannot be read, its shape or affine differ from the image's, or it is empty.
    """
    mask_img = _open_nifti(path)
    shape = mask_img.shape[:3] if mask_img.ndim == 4 and mask_img.shape[3] == 1 else mask_img.shape
    if shape != img.shape[:3]:
        raise InputError(f"{path} has shape {mask_img.shape} but the image has {img.shape[:3]}: "
                         "give a mask of the image's grid")
    if not np.allclose(mask_img.affine, img.affine, rtol=0, atol=AFFINE_TOLERANCE):
        worst = np.abs(mask_img.affine - img.affine).max()
        raise InputError(f"{path} has a different affine from the image (elements differ by up to {worst:.3g} mm): "
                         "give a mask of the image's grid")
    mask = np.asarray(mask_img.dataobj).reshape(shape) > 0
    if not mask.any():
        raise InputError(f"{path} has no voxel above 0: give a mask that covers the brain")
    return mask


def derived_header(img: nib.Nifti1Image, *, dtype: np.dtype | type = np.float32) -> nib.Nifti1Header:
    """Copy an image's header for an output of another data type.

    The copy keeps the affine, qform/sform codes, pixdim (voxel sizes and TR), xyzt_units,
    descrip and extensions; it sets the data type, and resets ``scl_slope``/``scl_inter``
    (so that values are stored as they are) and ``cal_min``/``cal_max`` (the display range of
    the input need not fit the output).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        The image the output derives from.
    dtype : numpy dtype
        Data type of the output.

    Returns
    -------
    nibabel.Nifti1Header
        A new header of the image's header class.
    """
    header = img.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    return header


def check_output(path: str | PathLike[str], *, like_img: nib.Nifti1Image | None = None,
                 force: bool = False) -> Path:
    """Check that an output may be written, before any work is spent on it.

    Parameters
    ----------
    path : str or PathLike
        The output file.
    like_img : nibabel.Nifti1Image, optional
        The input image, which the output must not overwrite even with ``force``.
    force : bool
        Allow replacing an existing file.

    Returns
    -------
    Path
        ``path`` as a Path.

    Raises
    ------
    InputError
        If the directory is missing, the output is the input, or it exists and ``force`` is False.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"the directory of {path} does not exist: create it or choose another --out")
    if path.exists():
        source = like_img.get_filename() if like_img is not None else None
        if source is not None and os.path.samefile(path, source):
            raise InputError(f"the output would overwrite the input {source}: choose another --out")
        if not force:
            raise InputError(f"{path} exists; pass --force to overwrite it")
    return path


def _temp_path(path: Path, suffix: str) -> Path:
    """A hidden, unused name next to ``path`` that ends in ``suffix``."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")


def _commit(temp: Path, path: Path, *, like_img: nib.Nifti1Image | None, force: bool) -> None:
    """Rename a finished temporary file onto ``path``, checking again that this is allowed."""
    check_output(path, like_img=like_img, force=force)  # the target may have appeared meanwhile
    os.replace(temp, path)


def _check_grid(shape: tuple[int, ...], like_img: nib.Nifti1Image) -> None:
    """Raise unless an output shape starts with the image's (X, Y, Z) grid (a programming error)."""
    if len(shape) < 3 or tuple(shape[:3]) != like_img.shape[:3]:
        raise ValueError(f"output shape {tuple(shape)} does not start with the image's grid {like_img.shape[:3]}")


def write_nifti_atomic(path: str | PathLike[str], data: np.ndarray, like_img: nib.Nifti1Image, *,
                       force: bool = False) -> Path:
    """Write an array as float32 NIfTI on the grid of ``like_img``, atomically.

    The image goes to a temporary file in the target's directory (same suffix, so ``.nii.gz``
    is compressed) that is renamed onto the target when complete and deleted on any error.

    Parameters
    ----------
    path : str or PathLike
        Output ``.nii`` or ``.nii.gz`` file.
    data : (X, Y, Z, ...) array_like
        Voxel values; the first three axes must be the image's grid.
    like_img : nibabel.Nifti1Image
        The input image whose header and affine the output keeps (see :func:`derived_header`).
    force : bool
        Replace an existing file (never the input itself).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        If the name is not NIfTI, or the output is the input or exists without ``force``.
    """
    path = check_output(path, like_img=like_img, force=force)
    _, suffix = _split_nifti(path)
    data = np.asarray(data, dtype=np.float32)
    _check_grid(data.shape, like_img)
    out = type(like_img)(data, like_img.affine, derived_header(like_img))
    temp = _temp_path(path, suffix)
    try:
        out.to_filename(temp)
        _commit(temp, path, like_img=like_img, force=force)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


class NiftiWriter:
    """Write a float32 NIfTI slab by slab along the third axis, committed atomically.

    Use as a context manager: the output is built on a temporary file next to the target and
    renamed onto it when the ``with`` block ends without error; on error the temporary file is
    deleted and the target is left as it was.

    For a ``.nii`` target the temporary file is preallocated and each slab is written in place
    (one contiguous run of bytes per volume), so memory stays at one slab. For a ``.nii.gz``
    target the whole output is held in memory as float32 (4 bytes per
    voxel and volume) and compressed at the end, since gzip cannot be written out of order.

    Parameters
    ----------
    path : str or PathLike
        Output ``.nii`` or ``.nii.gz`` file.
    shape : tuple of int
        Output shape ``(X, Y, Z, ...)``; the first three must be the grid of ``like_img``.
    like_img : nibabel.Nifti1Image
        The input image whose header and affine the output keeps (see :func:`derived_header`).
    force : bool
        Replace an existing file (never the input itself).
    temp : Path, optional
        Write to this temporary file and leave its rename to the caller (an
        :class:`dwivae.outputs.OutputSet`, which has checked the target already).

    Raises
    ------
    InputError
        If the name is not NIfTI, or the output is the input or exists without ``force``.
    """

    def __init__(self, path: str | PathLike[str], shape: tuple[int, ...], like_img: nib.Nifti1Image, *,
                 force: bool = False, temp: Path | None = None) -> None:
        self.path = Path(path) if temp is not None else check_output(path, like_img=like_img, force=force)
        self._staged = temp
        _, self._suffix = _split_nifti(self.path)
        _check_grid(shape, like_img)
        self.shape = tuple(int(n) for n in shape)
        self._like_img = like_img
        self._force = force
        self._header = derived_header(like_img)
        self._header.set_data_shape(self.shape)
        self._temp: Path | None = None
        self._data: np.ndarray | None = None
        self._file: BinaryIO | None = None
        self._offset = 0

    def __enter__(self) -> NiftiWriter:
        if self._suffix.lower() == ".nii":
            self._temp = self._staged or _temp_path(self.path, self._suffix)
            try:
                self._file = self._preallocate(self._temp, self._header)
            except BaseException:
                self._temp.unlink(missing_ok=True)
                self._temp = None
                raise
        else:
            self._data = np.zeros(self.shape, dtype=np.float32)
        return self

    def _preallocate(self, temp: Path, header: nib.Nifti1Header) -> BinaryIO:
        """Write the header to ``temp`` and extend the file to full size; returns it open for writing."""
        header["vox_offset"] = 0  # let nibabel place the data after the header and extensions
        f = open(temp, "w+b")  # noqa: SIM115 (closed in __exit__)
        try:
            header.write_to(f)
            self._offset = header.get_data_offset()
            f.truncate(self._offset + int(np.prod(self.shape)) * 4)
        except BaseException:
            f.close()
            raise
        return f

    def write_slab(self, z0: int, z1: int, data: np.ndarray) -> None:
        """Store the slices ``z0 <= z < z1``.

        Parameters
        ----------
        z0, z1 : int
            First slice and one past the last.
        data : (X, Y, z1 - z0, ...) array_like
            Values of the slab, cast to float32.
        """
        if self._data is None and self._file is None:
            raise RuntimeError("NiftiWriter.write_slab is only valid inside a `with NiftiWriter(...)` block")
        expected = (*self.shape[:2], z1 - z0, *self.shape[3:])
        data = np.asarray(data)
        if not 0 <= z0 < z1 <= self.shape[2] or data.shape != expected:
            raise ValueError(f"slab {z0}:{z1} of shape {data.shape} does not fit an output of shape {self.shape}")
        if self._data is not None:
            self._data[:, :, z0:z1] = data
            return
        # the file is in Fortran order: for each volume, slices z0..z1 are one run of bytes
        nx, ny, nz = self.shape[:3]
        volumes = np.asfortranarray(data.reshape((nx, ny, z1 - z0, -1), order="F"),
                                    dtype=self._header.get_data_dtype())
        for t in range(volumes.shape[3]):
            os.pwrite(self._file.fileno(), volumes[:, :, :, t].ravel(order="F"),
                      self._offset + 4 * nx * ny * (z0 + nz * t))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        data, self._data = self._data, None
        try:
            if self._file is not None:
                self._file.close()
                self._file = None
            if exc_type is None:
                if data is not None:
                    self._temp = self._staged or _temp_path(self.path, self._suffix)
                    type(self._like_img)(data, self._like_img.affine, self._header).to_filename(self._temp)
                del data
                if self._staged is not None:
                    self._temp = None  # finished: the OutputSet renames it
                    return
                _commit(self._temp, self.path, like_img=self._like_img, force=self._force)
        finally:
            if self._temp is not None:
                self._temp.unlink(missing_ok=True)  # only still there if something failed
                self._temp = None


def _json_default(obj: Any) -> Any:
    """Convert numpy scalars and arrays for :func:`json.dump`."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_text_atomic(path: str | PathLike[str], text: str, *, force: bool = False) -> Path:
    """Write a text file atomically (temporary file next to it, then rename).

    Parameters
    ----------
    path : str or PathLike
        Output file.
    text : str
        Content, written as UTF-8.
    force : bool
        Replace an existing file.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputError
        If the directory is missing, or the file exists and ``force`` is False.
    """
    path = check_output(path, force=force)
    temp = _temp_path(path, path.suffix)
    try:
        temp.write_text(text, encoding="utf-8")
        _commit(temp, path, like_img=None, force=force)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | PathLike[str], obj: Any, *, force: bool = False) -> Path:
    """Write a JSON file atomically; numpy scalars and arrays and paths are converted.

    See :func:`write_text_atomic` for the parameters and errors.
    """
    return write_text_atomic(path, json_text(obj), force=force)


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON text; numpy scalars and arrays and paths are converted."""
    return json.dumps(obj, indent=2, default=_json_default) + "\n"


def sidecar_path(nifti_path: str | PathLike[str]) -> Path:
    """The JSON sidecar of a NIfTI file: ``dir/name.nii.gz`` -> ``dir/name.json``.

    Parameters
    ----------
    nifti_path : str or PathLike
        A ``.nii`` or ``.nii.gz`` path.

    Returns
    -------
    Path
        The sidecar path.
    """
    stem, _ = _split_nifti(nifti_path)
    return stem.with_name(stem.name + ".json")


def output_paths(out: str | PathLike[str], suffix: str) -> Path:
    """A companion output named after ``out``: ``dwi_vae.nii.gz`` + ``_residual`` -> ``dwi_vae_residual.nii.gz``.

    Parameters
    ----------
    out : str or PathLike
        The main ``.nii`` or ``.nii.gz`` output.
    suffix : str
        Inserted before the extension.

    Returns
    -------
    Path
        The companion path, with the same extension as ``out``.
    """
    stem, ext = _split_nifti(out)
    return stem.with_name(stem.name + suffix + ext)


def find_gradient_files(dwi_path: str | PathLike[str]) -> tuple[Path, Path]:
    """Find the BIDS/FSL gradient files next to an image: ``sub-01_dwi.nii.gz`` -> ``sub-01_dwi.bval``/``.bvec``.

    Parameters
    ----------
    dwi_path : str or PathLike
        The diffusion series.

    Returns
    -------
    bval, bvec : Path
        The b-value and gradient direction files.

    Raises
    ------
    InputError
        If either file is absent, naming what was looked for.
    """
    dwi_path = Path(dwi_path)
    stem, _ = _split_nifti(dwi_path)
    bval, bvec = stem.with_name(stem.name + ".bval"), stem.with_name(stem.name + ".bvec")
    missing = [p.name for p in (bval, bvec) if not p.is_file()]
    if missing:
        raise InputError(f"no {' or '.join(missing)} next to {dwi_path.name} in {dwi_path.parent}: "
                         "pass --bvals and --bvecs")
    return bval, bvec
