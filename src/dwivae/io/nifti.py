"""Reading NIfTI diffusion series lazily, slab by slab, and the names of their companion files.

Images are opened lazily (memory-mapped when uncompressed) and read slab by slab along the third
axis, so that peak memory follows the slab size rather than the number of slices. Reading a
``.nii.gz`` slab by slab decompresses the stream again for each slab unless the optional
``indexed_gzip`` package is installed (nibabel then seeks in the compressed stream); uncompressed
``.nii`` files have no such cost.
"""
from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from dwivae.errors import InputError

AFFINE_TOLERANCE = 1e-3
"""Two affines (mm) describe the same grid when every element agrees within this."""

_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def split_nifti(path: str | PathLike[str]) -> tuple[Path, str]:
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
    stem, _ = split_nifti(nifti_path)
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
    stem, ext = split_nifti(out)
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
    stem, _ = split_nifti(dwi_path)
    bval, bvec = stem.with_name(stem.name + ".bval"), stem.with_name(stem.name + ".bvec")
    missing = [p.name for p in (bval, bvec) if not p.is_file()]
    if missing:
        raise InputError(f"no {' or '.join(missing)} next to {dwi_path.name} in {dwi_path.parent}: "
                         "pass --bvals and --bvecs")
    return bval, bvec
