"""The compiled kernels: a forward pass for denoising, the training steps, the 3D median
filter of the brain mask, the passes of the grouped estimate and the noise floor's removal, in C.

``forward.c``, ``train_step.c``, ``train_loop.c``, ``noisy_copies.c`` (with their headers),
``median.c``, ``grouping.c`` and ``floor.c`` are built with the system C compiler (``cc``, ``gcc`` or
``clang`` on PATH) on first use into :func:`kernel_dir` (``-O3 -march=native``, 0.3 s; keyed by
the sources, the compiler and the CPU's feature flags) and loaded with ctypes, which releases the
GIL, so chunks of voxels or samples run in parallel threads. A cached kernel is loaded only if
its SHA-256 is the one recorded when it was built and its folder is the user's own and writable
by no one else; otherwise it is built again.

The networks are small (32-26-20-13-7 and back for seed32), so a batched torch pass is bound by
skinny matrix products and by one pass over memory per layer and activation. The kernels instead
take 32 (forward) or 128 (training) samples at a time through every layer with the activations
kept in cache and vector registers, and a polynomial ``exp`` for ELU and the sigmoid (outputs
agree with torch to ~1e-6). :func:`compiled_forward` wraps the forward pass;
:class:`dwivae.learn.compiled_step.CompiledStep` the training steps (threads of its own in C).

Without a C compiler, or with ``DWIVAE_KERNEL=torch`` in the environment, :func:`library`
returns None and callers use torch: same results up to float32 rounding, slower.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

SOURCES = ("simd.h", "counter_random.h", "train_step.h", "forward.c", "train_step.c", "train_loop.c", "noisy_copies.c",
           "median.c", "grouping.c", "floor.c")
"""The kernel's C sources (package data); the .c files are compiled into one shared library."""
FLAGS = ("-O3", "-march=native", "-ffast-math", "-funroll-loops", "-std=gnu11", "-pthread", "-fPIC")
"""Compiler flags of each source file."""
LINK_FLAGS = ("-shared", "-pthread")
"""Flags of the link, without -ffast-math: linked with it, gcc adds crtfastmath.o, which on loading
the library sets flush-to-zero for the whole process, so numpy and DIPY would lose subnormal numbers."""
MAX_WIDTH = 1024
"""The widest layer the kernel takes (``MAXW`` in forward.c)."""
ACTIVATION_CODES = {"ELU": 1, "Sigmoid": 2, "ReLU": 3, "LeakyReLU": 4}
"""Codes of forward.c's activations by torch module name (this module does not import torch); a
Linear followed by none of these gets 0 (identity)."""
CHUNK_ROWS = 4096
"""Rows a thread of :class:`CompiledForward` takes at a time: threads take chunks as they finish
their last (0.5 MB of signals, ~0.5 ms), so that one held up by another job leaves the rest to the others."""
ELU_EIGHTHS, SIGMOID_EIGHTHS = 5, 6
"""forward.c's codes of ELU and the sigmoid on inputs in units of ln2 / 8 (see :func:`in_eighths_units`)."""
Layer = tuple[np.ndarray, np.ndarray, int]
"""A dense layer for the kernel: W (n_out, n_in), b (n_out,) and the code of its activation."""


def kernel_dir() -> Path:
    """Where the built kernel is kept: ``$DWIVAE_CACHE/kernels`` where that is set (the models'
    cache), else ``$XDG_CACHE_HOME/dwivae/kernels`` (default ``~/.cache/dwivae/kernels``)."""
    if os.environ.get("DWIVAE_CACHE"):
        return Path(os.environ["DWIVAE_CACHE"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dwivae" / "kernels"


def _private(directory: Path) -> bool:
    """Create ``directory`` (mode 700) if needed; whether it is this user's own and no one else may write in it."""
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = directory.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _build(compiler: str, sources: dict[str, bytes], path: Path) -> None:
    """Compile the sources into ``path`` (renamed into place when complete) and record its digest
    beside it, in ``<path>.sha256``."""
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        for name, text in sources.items():
            (Path(tmp) / name).write_bytes(text)
        built = Path(tmp) / path.name
        objects = []
        for name in SOURCES:
            if name.endswith(".c"):
                objects.append(str(Path(tmp) / f"{name}.o"))
                subprocess.run([compiler, *FLAGS, "-c", "-o", objects[-1], str(Path(tmp) / name)],
                               check=True, capture_output=True, timeout=120)
        subprocess.run([compiler, *LINK_FLAGS, "-o", str(built), *objects], check=True, capture_output=True,
                       timeout=120)
        record = Path(tmp) / "digest"
        record.write_text(_digest(built))
        os.replace(built, path)
        os.replace(record, path.with_name(path.name + ".sha256"))


def _verified(path: Path) -> bool:
    """Whether ``path`` is the file that was built there: its digest is the one recorded at the build."""
    record = path.with_name(path.name + ".sha256")
    try:
        return path.is_file() and record.read_text().strip() == _digest(path)
    except OSError:
        return False


def _cpu_signature() -> str:
    """The CPU's feature flags (what ``-march=native`` depends on), or its name where unreadable."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.processor())
    except OSError:
        return platform.processor()


class TrainData(ctypes.Structure):
    """train_step.h's ``TrainData``: the samples of :func:`dwivae_train_steps` and their order."""

    _fields_ = [("x", ctypes.POINTER(ctypes.c_float)), ("y", ctypes.POINTER(ctypes.c_float)),
                ("eps", ctypes.POINTER(ctypes.c_float)), ("x_rows", ctypes.c_int64), ("y_rows", ctypes.c_int64),
                ("first_sample", ctypes.c_int64), ("first_step", ctypes.c_int64), ("n_steps", ctypes.c_int64),
                ("batch", ctypes.c_int64), ("shuffle_key", ctypes.c_uint64), ("seed", ctypes.c_uint64),
                ("shuffled", ctypes.c_int), ("eps_mode", ctypes.c_int)]


class TrainNet(ctypes.Structure):
    """train_step.h's ``TrainNet``: the network and its loss."""

    _fields_ = [("n_in", ctypes.POINTER(ctypes.c_int)), ("n_out", ctypes.POINTER(ctypes.c_int)),
                ("n_layers", ctypes.c_int), ("n_enc", ctypes.c_int), ("vae", ctypes.c_int), ("act", ctypes.c_int),
                ("loss", ctypes.c_int), ("slope", ctypes.c_float), ("kscale", ctypes.c_float),
                ("divisor", ctypes.c_double)]


class TrainAdam(ctypes.Structure):
    """train_step.h's ``TrainAdam``: Adam's state, updated in place."""

    _fields_ = [("params", ctypes.POINTER(ctypes.c_float)), ("m", ctypes.POINTER(ctypes.c_float)),
                ("v", ctypes.POINTER(ctypes.c_float)), ("step", ctypes.c_int64), ("lr", ctypes.c_double),
                ("beta1", ctypes.c_double), ("beta2", ctypes.c_double), ("eps", ctypes.c_double)]


@lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    # The compiler is looked up on PATH, never taken from $CC: denoising a file must not run a
    # program named by the environment.
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        return None
    sources = {name: resources.files("dwivae.kernels").joinpath(name).read_bytes() for name in SOURCES}
    key = hashlib.sha256(b"\0".join([*sources.values(), compiler.encode(), " ".join(FLAGS + LINK_FLAGS).encode(),
                                     _cpu_signature().encode(), platform.platform().encode()]))
    name = f"kernel-{key.hexdigest()[:16]}.so"
    try:
        if _private(kernel_dir()):
            path = kernel_dir() / name
            if not _verified(path):  # missing, truncated, or replaced since it was built
                _build(compiler, sources, path)
            lib = ctypes.CDLL(str(path))
        else:  # a cache others may write in: build afresh in a private folder, and keep nothing
            with tempfile.TemporaryDirectory() as tmp:
                _build(compiler, sources, Path(tmp) / name)
                lib = ctypes.CDLL(str(Path(tmp) / name))
    except (OSError, subprocess.SubprocessError):
        return None
    f32, i32 = (ctypes.POINTER(t) for t in (ctypes.c_float, ctypes.c_int))
    lib.dwivae_forward.argtypes = [f32, f32, f32, ctypes.c_int64, ctypes.POINTER(ctypes.c_int64), ctypes.c_int64,
                                   ctypes.c_int, i32, f32, i32]
    lib.dwivae_forward.restype = ctypes.c_int
    f64 = ctypes.POINTER(ctypes.c_double)
    c_int, c_i64 = ctypes.c_int, ctypes.c_int64
    u64, u32p = ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint32)
    lib.dwivae_train_steps.argtypes = [ctypes.POINTER(TrainData), ctypes.POINTER(TrainNet), ctypes.POINTER(TrainAdam),
                                       c_int, f64]
    lib.dwivae_train_steps.restype = ctypes.c_int
    lib.dwivae_normals.argtypes = [u64, c_i64, c_i64, c_int, f32]
    lib.dwivae_normals.restype = None
    lib.dwivae_shuffled_rows.argtypes = [u64, ctypes.c_uint32, c_i64, c_i64, u32p]
    lib.dwivae_shuffled_rows.restype = None
    lib.dwivae_noisy_copies.argtypes = [f32, c_i64, c_int, f32, c_int, u64, f32, c_int]
    lib.dwivae_noisy_copies.restype = ctypes.c_int
    lib.dwivae_median3d.argtypes = [f32, f32, *([ctypes.c_int] * 6)]
    lib.dwivae_median3d.restype = ctypes.c_int
    i64p = ctypes.POINTER(ctypes.c_int64)
    lib.dwivae_group_pass.argtypes = [f32, c_int, f64, c_int, i64p, i64p, i64p, ctypes.POINTER(ctypes.c_uint64), c_i64,
                                      c_i64, i64p, ctypes.c_double, c_int, f64]
    lib.dwivae_group_pass.restype = ctypes.c_int
    lib.dwivae_remove_floor.argtypes = [f64, f32, c_i64, ctypes.c_double, ctypes.c_double, ctypes.c_double, f64, c_i64,
                                        c_int]
    lib.dwivae_remove_floor.restype = None
    return lib


def default_threads() -> int:
    """Threads of the kernels: the CPUs this process may run on, at most ``OMP_NUM_THREADS`` where
    that is set (as torch and BLAS take it; Dask's workers set it to their share of the machine)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return min(cpus, int(limit)) if limit.isdigit() and int(limit) > 0 else cpus


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (``DWIVAE_KERNEL=torch``, or no C compiler could build them)."""
    if os.environ.get("DWIVAE_KERNEL", "").lower() == "torch":
        return None
    return _library()


def merge_linear(stack: list[Layer]) -> list[Layer]:
    """Fold a linear layer with no activation into the next one where that takes fewer weights.

    The VAE's ``mu`` head (13 -> 7) and the decoder's first layer (7 -> 13) become one 13 -> 13
    layer: ``W2 (W1 x + b1) + b2 = (W2 W1) x + (W2 b1 + b2)``, one pass over the tile less.

    Parameters
    ----------
    stack : list of (W, b, activation code)
        ``W`` is (n_out, n_in); float64, so that the product rounds once to float32.
    """
    merged = [stack[0]]
    for w, b, code in stack[1:]:
        w1, b1, code1 = merged[-1]
        if code1 == 0 and w.shape[0] * w1.shape[1] <= w1.size + w.size:
            merged[-1] = (w @ w1, w @ b1 + b, code)
        else:
            merged.append((w, b, code))
    return merged


def in_eighths_units(stack: list[Layer]) -> list[Layer]:
    """ELU and sigmoid layers rewritten for forward.c's activations on inputs in units of ln2 / 8,
    where ``e^h = 2^(h / 8)`` takes a rounding and an 8-entry table (simd.h): an ELU layer's W and
    b times 8 log2 e, and the W of the layer after it times ln2 / 8, as its outputs come out in the
    same units; a sigmoid layer's W and b times -8 log2 e (the sigmoid is ``1 / (1 + 2^(h / 8))``).
    An ELU on the last layer is kept.

    Parameters
    ----------
    stack : list of (W, b, activation code)
        float64, so that each product rounds once to float32.
    """
    eighths, elu, sigmoid = 8.0 / math.log(2.0), ACTIVATION_CODES["ELU"], ACTIVATION_CODES["Sigmoid"]
    rewritten: list[Layer] = []
    for k, (w, b, code) in enumerate(stack):
        if rewritten and rewritten[-1][2] == ELU_EIGHTHS:
            w = w / eighths
        if code == elu and k < len(stack) - 1:
            w, b, code = w * eighths, b * eighths, ELU_EIGHTHS
        elif code == sigmoid:
            w, b, code = w * -eighths, b * -eighths, SIGMOID_EIGHTHS
        rewritten.append((w, b, code))
    return rewritten


def aligned_empty(shape: tuple[int, ...], dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """An uninitialised C-ordered array whose data starts on an ``alignment``-byte boundary: rows
    of 32 float32 then span two cache lines, not three (the compiled training step reads the
    study's 10.6 M noisy rows at random), and the forward pass can stream its output."""
    itemsize = np.dtype(dtype).itemsize
    buffer = np.empty(int(np.prod(shape)) * itemsize + alignment, dtype=np.uint8)
    start = -buffer.ctypes.data % alignment
    return buffer[start:start + int(np.prod(shape)) * itemsize].view(dtype).reshape(shape)


class CompiledForward:
    """A stack of dense layers (e.g. ``x -> decode(encode_mean(x))``) through the compiled kernel.

    Parameters
    ----------
    library : ctypes.CDLL
    layers : list of (W, b, activation code)
        See :data:`Layer`; consecutive layers are folded by :func:`merge_linear` where that pays,
        and ELU and sigmoid layers put in units of ln2 / 8 by :func:`in_eighths_units`.
    """

    def __init__(self, library: ctypes.CDLL, layers: list[Layer]) -> None:
        self._fn = library.dwivae_forward
        width = np.shape(layers[0][0])[1] if layers and np.ndim(layers[0][0]) == 2 else -1
        for w, b, _ in layers:  # forward.c reads with these widths: they must be the arrays' own
            if np.ndim(w) != 2 or np.shape(w)[1] != width or np.shape(b) != (np.shape(w)[0],):
                raise ValueError(f"layer shapes do not chain: W {np.shape(w)}, b {np.shape(b)} after width {width}")
            width = np.shape(w)[0]
        if not 1 <= max(max(np.shape(w)) for w, _, _ in layers) <= MAX_WIDTH:
            raise ValueError(f"a layer is wider than the kernel's {MAX_WIDTH}")
        stack = in_eighths_units(merge_linear([(np.asarray(w, np.float64), np.asarray(b, np.float64), code)
                                               for w, b, code in layers]))
        widths = [stack[0][0].shape[1]] + [len(b) for _, b, _ in stack]
        self.n_inputs, self.n_outputs = widths[0], widths[-1]
        self._widths = np.array(widths, dtype=np.int32)
        self._acts = np.array([code for _, _, code in stack], dtype=np.int32)
        self._params = np.concatenate([np.concatenate([w.ravel(), b]) for w, b, _ in stack]).astype(np.float32)

    def __call__(self, x: np.ndarray, scale: np.ndarray | None = None, *, threads: int = 1,
                 out: np.ndarray | None = None) -> np.ndarray:
        """``layers(x / scale) * scale``: denoised signals for the whole network.

        Parameters
        ----------
        x : (M, N) ndarray
            Inputs, one row per voxel (signals, or latent codes for the decoder).
        scale : (M,) ndarray, optional
            Per-row scale (S0): rows are divided by it on the way in and multiplied on the way out.
        threads : int
            Threads that share the rows out, :data:`CHUNK_ROWS` at a time.
        out : (M, n_outputs) ndarray, optional
            A writeable C-contiguous float32 array to fill (it may be ``x`` itself): saves
            allocating a fresh one, whose pages the kernel would fault in, on every call.

        Returns
        -------
        (M, n_outputs) ndarray, float32
            ``out`` where given.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise ValueError(f"expected signals of shape (M, {self.n_inputs}), got {x.shape}")
        if scale is not None:
            scale = np.ascontiguousarray(scale, dtype=np.float32)
        if out is None:
            y = aligned_empty((len(x), self.n_outputs))
        elif (out.shape != (len(x), self.n_outputs) or out.dtype != np.float32 or not out.flags.c_contiguous
              or not out.flags.writeable):
            raise ValueError(f"out must be a writeable C-contiguous float32 array of shape "
                             f"({len(x)}, {self.n_outputs}), got {out.dtype} {out.shape}")
        else:
            y = out
        next_row = ctypes.c_int64(0)
        workers = max(1, min(threads, -(-len(x) // CHUNK_ROWS)))
        if workers == 1:
            self._run(x, scale, y, next_row)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda _: self._run(x, scale, y, next_row), range(workers)))
        return y

    def _run(self, x: np.ndarray, scale: np.ndarray | None, y: np.ndarray, next_row: ctypes.c_int64) -> None:
        """Rows from ``next_row`` on, CHUNK_ROWS at a time, until none is left (one thread's share)."""
        f32 = ctypes.POINTER(ctypes.c_float)
        i32 = ctypes.POINTER(ctypes.c_int)
        status = self._fn(x.ctypes.data_as(f32), None if scale is None else scale.ctypes.data_as(f32),
                          y.ctypes.data_as(f32), len(x), ctypes.byref(next_row), CHUNK_ROWS, len(self._acts),
                          self._widths.ctypes.data_as(i32), self._params.ctypes.data_as(f32),
                          self._acts.ctypes.data_as(i32))
        if status == -2:
            raise MemoryError("the compiled forward pass could not allocate its tile buffers")
        if status != 0:
            raise RuntimeError("the compiled forward pass refused the network's layer widths")


PARTS = ("all", "encoder", "decoder")
"""What :func:`compiled_forward` runs: the whole deterministic path, ``x -> mu`` or ``z -> output``."""


def _layers(network, part: str = "all") -> list[Layer] | None:
    """The deterministic path of an :class:`~dwivae.learn.models.Autoencoder` (or its encoder to
    ``mu``, or its decoder) as kernel layers, or None if a module is not implemented."""
    modules = {"all": [*network.encoder, network.mu, *network.decoder],
               "encoder": [*network.encoder, network.mu], "decoder": [*network.decoder]}[part]
    layers: list[Layer] = []
    for module in modules:
        kind = type(module).__name__
        if kind == "Linear":
            if module.bias is None or max(module.in_features, module.out_features) > MAX_WIDTH:
                return None
            layers.append((module.weight.detach().numpy(), module.bias.detach().numpy(), 0))
        elif kind in ACTIVATION_CODES and layers and layers[-1][2] == 0:
            if kind == "ELU" and module.alpha != 1.0:
                return None
            if kind == "LeakyReLU" and module.negative_slope != 0.01:
                return None
            layers[-1] = (*layers[-1][:2], ACTIVATION_CODES[kind])
        else:
            return None
    return layers


def compiled_forward(network, part: str = "all") -> CompiledForward | None:
    """The compiled forward pass of ``network`` (an :class:`~dwivae.learn.models.Autoencoder`), or None.

    ``part`` is one of :data:`PARTS`. None when ``DWIVAE_KERNEL=torch`` is set, no C compiler
    builds the kernel, or the network has a layer the kernel does not implement; use torch then.
    """
    layers = _layers(network, part)
    lib = library() if layers else None
    return CompiledForward(lib, layers) if lib is not None else None
