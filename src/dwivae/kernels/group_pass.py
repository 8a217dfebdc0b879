"""The compiled pass of the grouped estimate (``grouping.c``): k-means, covariance, eigenvectors and
projection of every group, the blocks shared out over threads."""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dwivae.kernels.bindings import library


def group_pass(signals: np.ndarray, codes: np.ndarray, order: np.ndarray, starts: np.ndarray, clusters: np.ndarray,
               keys: np.ndarray, *, sigma: float, min_group: int, total: np.ndarray, threads: int = 1) -> bool:
    """Add one pass of the grouped estimate to ``total`` in the compiled kernel; False (nothing
    done) where the kernel cannot be built.

    Parameters
    ----------
    signals : (M, N) ndarray, float32, C order
        The voxels' series.
    codes : (M, L) ndarray, float64, C order
        Their latent codes.
    order, starts : (M,), (B + 1,) int64 ndarrays
        Block ``b`` holds the voxels ``order[starts[b]:starts[b + 1]]``.
    clusters : (B,) int64 ndarray
        Groups to cut each block into by k-means.
    keys : (B,) uint64 ndarray
        Keys of each block's k-means seeding.
    sigma : float
        Noise level per real channel.
    min_group : int
        Groups with fewer voxels keep their series.
    total : (M, N) ndarray, float64, C order
        The estimates are added into it.
    threads : int
        Threads that share the blocks out.
    """
    lib = library()
    if lib is None:
        return False
    arrays = [signals, codes, order, starts, clusters, keys, total]
    dtypes = [np.float32, np.float64, np.int64, np.int64, np.int64, np.uint64, np.float64]
    if any(a.dtype != t or not a.flags.c_contiguous for a, t in zip(arrays, dtypes)):
        raise ValueError("group_pass takes C-ordered arrays of the dtypes its docstring gives")
    if len(starts) != len(clusters) + 1 or len(keys) != len(clusters) or total.shape != signals.shape:
        raise ValueError("group_pass: starts needs one entry more than clusters and keys, total the shape of signals")
    f32, f64, i64 = (ctypes.POINTER(t) for t in (ctypes.c_float, ctypes.c_double, ctypes.c_int64))
    next_block = ctypes.c_int64(0)
    max_block = int(np.diff(starts).max(initial=0))

    def run(_: int) -> int:
        return lib.dwivae_group_pass(signals.ctypes.data_as(f32), signals.shape[1], codes.ctypes.data_as(f64),
                                     codes.shape[1], order.ctypes.data_as(i64), starts.ctypes.data_as(i64),
                                     clusters.ctypes.data_as(i64), keys.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
                                     len(clusters), max_block, ctypes.byref(next_block), sigma, min_group,
                                     total.ctypes.data_as(f64))

    workers = max(1, min(threads, len(clusters)))
    with ThreadPoolExecutor(workers) as pool:
        statuses = list(pool.map(run, range(workers)))
    if -2 in statuses:
        raise MemoryError("the grouped estimate's kernel could not allocate its buffers")
    if any(statuses):
        raise RuntimeError("an eigendecomposition of the grouped estimate did not converge (non-finite signals?)")
    return True
