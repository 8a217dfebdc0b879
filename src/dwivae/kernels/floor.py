"""The noise floor's removal by table lookup in the compiled kernel (``floor.c``), shared over threads."""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from dwivae.kernels.bindings import default_threads, library

CHUNK = 1 << 20
"""Values a thread takes at a time."""


def compiled_floor_removal(signal: np.ndarray, sigma: float, *, floor: float, step: float, squares: np.ndarray,
                           coils: int, threads: int | None = None) -> np.ndarray | None:
    """``nu`` (float32, the shape of ``signal``) from the table of (nu / sigma)² at the expected
    magnitudes ``floor + k step`` (in sigma), as :func:`dwivae.physics.noise.remove_noise_floor`
    computes it; None where the kernel cannot be built."""
    lib = library()
    if lib is None:
        return None
    values = np.ascontiguousarray(signal, dtype=np.float64).reshape(-1)
    squares = np.ascontiguousarray(squares, dtype=np.float64)
    out = np.empty(values.shape, np.float32)
    f64 = ctypes.POINTER(ctypes.c_double)

    def run(start: int) -> None:
        part = values[start:start + CHUNK]
        lib.dwivae_remove_floor(part.ctypes.data_as(f64), out[start:].ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                len(part), sigma, floor, step, squares.ctypes.data_as(f64), len(squares), coils)

    starts = range(0, len(values), CHUNK)
    if len(starts) <= 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(min(threads or default_threads(), len(starts))) as pool:
            list(pool.map(run, starts))
    return out.reshape(np.shape(signal))
