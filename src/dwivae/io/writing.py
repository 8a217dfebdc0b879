"""Atomic writing of NIfTI, JSON and text outputs.

Outputs are written to a temporary file next to the target and renamed onto it only once complete,
so that an interrupted run never leaves a truncated output behind and never replaces a good one
with a bad one; an output is never the run's input, and an existing one is replaced only with force.
"""
from __future__ import annotations

import json
import os
import secrets
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import nibabel as nib
import numpy as np

from dwivae.errors import InputError
from dwivae.io.nifti import derived_header, split_nifti


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
    _, suffix = split_nifti(path)
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
        :class:`dwivae.apply.outputs.OutputSet`, which has checked the target already).

    Raises
    ------
    InputError
        If the name is not NIfTI, or the output is the input or exists without ``force``.
    """

    def __init__(self, path: str | PathLike[str], shape: tuple[int, ...], like_img: nib.Nifti1Image, *,
                 force: bool = False, temp: Path | None = None) -> None:
        self.path = Path(path) if temp is not None else check_output(path, like_img=like_img, force=force)
        self._staged = temp
        _, self._suffix = split_nifti(self.path)
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
