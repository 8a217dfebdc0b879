"""The compiled forward pass agrees with torch, and falls back to torch when it cannot be built."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from dwivae.kernels import bindings as kernel
from dwivae.learn.models import ModelConfig, build_model

HAS_COMPILER = bool(os.environ.get("CI")) or shutil.which("cc") is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler to build the kernel")


def torch_forward(net, x: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    s = np.ones(len(x), np.float32) if scale is None else scale
    with torch.inference_mode():
        mu, _ = net.encode(torch.from_numpy(x / s[:, None]))
        return (net.decode(mu) * torch.from_numpy(s)[:, None]).numpy()


@needs_compiler
@pytest.mark.parametrize("arch, activation, n_inputs, hidden", [
    ("vae", "elu", 32, ()), ("dae", "elu", 32, ()), ("vae", "relu", 65, ()),
    ("vae", "leaky_relu", 102, (80, 40, 20)),
])
@pytest.mark.parametrize("n", [1, 31, 33, 1000])
def test_compiled_forward_matches_torch(arch, activation, n_inputs, hidden, n):
    torch.manual_seed(1)
    net = build_model(ModelConfig(arch=arch, n_inputs=n_inputs, activation=activation, hidden=hidden)).eval()
    compiled = kernel.compiled_forward(net)
    assert compiled is not None
    rng = np.random.default_rng(0)
    x = rng.random((n, n_inputs), dtype=np.float32) * 3 - 1  # negative inputs drive ELU's exp branch
    scale = rng.random(n, dtype=np.float32) * 900 + 100
    for s in (scale, None):
        atol = 2e-6 if s is None else 2e-3  # outputs in [0, 1], or scaled by up to 1000
        np.testing.assert_allclose(compiled(x, s), torch_forward(net, x, s), rtol=2e-5, atol=atol)


@needs_compiler
@pytest.mark.parametrize("name, then_identity, codes", [
    ("ELU", False, [1]), ("ELU", True, [kernel.ELU_EIGHTHS, 0]), ("Sigmoid", False, [kernel.SIGMOID_EIGHTHS]),
])
def test_kernel_activations_match_torch_over_the_float_range(name, then_identity, codes):
    """Identity layers, so the kernel's activation sees x (times 8 log2 e in units of ln2 / 8): the
    exp down to its clamp and beyond, every entry of its table, the sigmoid through 0 and 1 at both
    ends. An ELU on the last layer stays in natural units, one with a layer after it goes to ln2 / 8."""
    x = np.concatenate([np.linspace(-200, 200, 40001), [-80, 80, -1e-6, 0, 1e-6, 1e30, -1e30]])
    x = x.astype(np.float32).reshape(-1, 8)
    eye, zero = np.eye(8, dtype=np.float32), np.zeros(8, np.float32)
    layers = [(eye, zero, kernel.ACTIVATION_CODES[name])] + [(eye, zero, 0)] * then_identity
    compiled = kernel.CompiledForward(kernel.library(), layers)
    assert list(compiled._acts) == codes
    expected = getattr(torch.nn, name)()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(compiled(x), expected, rtol=3e-7, atol=1.2e-7)


@needs_compiler
@pytest.mark.parametrize("chunk_rows", [kernel.CHUNK_ROWS, 64, 100])
def test_threads_sharing_the_rows_out_give_identical_results(chunk_rows, monkeypatch):
    """Threads take chunks of rows from one counter as they go: every row is done once, in any order."""
    monkeypatch.setattr(kernel, "CHUNK_ROWS", chunk_rows)
    torch.manual_seed(0)
    compiled = kernel.compiled_forward(build_model(ModelConfig()).eval())
    x = np.random.default_rng(0).random((20_011, 32), dtype=np.float32)
    expected = compiled(x, threads=1)
    for threads in (2, 3):
        out = np.full_like(x, np.nan)
        np.testing.assert_array_equal(compiled(x, threads=threads, out=out), expected)
    np.testing.assert_array_equal(compiled(x[:5_000], threads=3), expected[:5_000])


@needs_compiler
def test_compiled_forward_fills_a_given_output_even_in_place():
    torch.manual_seed(0)
    compiled = kernel.compiled_forward(build_model(ModelConfig()).eval())
    x = np.random.default_rng(0).random((5_000, 32), dtype=np.float32)
    scale = np.full(len(x), 200.0, np.float32)
    expected = compiled(x, scale, threads=2)
    out = np.full_like(x, np.nan)
    assert compiled(x, scale, threads=2, out=out) is out
    np.testing.assert_array_equal(out, expected)
    inplace = x * 1                                   # rows are read into a tile before it is written
    assert compiled(inplace, scale, threads=2, out=inplace) is inplace
    np.testing.assert_array_equal(inplace, expected)
    for bad in (np.zeros((4_999, 32), np.float32), np.zeros((5_000, 32)), np.zeros((32, 5_000), np.float32).T):
        with pytest.raises(ValueError, match="out must be a writeable C-contiguous float32 array"):
            compiled(x, out=bad)


@needs_compiler
def test_large_outputs_streamed_past_the_cache_equal_rows_stored_one_by_one():
    torch.manual_seed(0)
    compiled = kernel.compiled_forward(build_model(ModelConfig()).eval())
    n = (8 << 20) // (32 * 4) + 45                    # over forward.c's STREAM_BYTES, a partial last tile
    x = np.random.default_rng(1).random((n, 32), dtype=np.float32)
    streamed = compiled(x)                            # a fresh output starts on a cache line
    assert streamed.ctypes.data % 64 == 0
    unaligned = kernel.aligned_empty((n * 32 + 1,))[1:].reshape(n, 32)
    np.testing.assert_array_equal(compiled(x, out=unaligned), streamed)
    np.testing.assert_array_equal(compiled(x[:1000]), streamed[:1000])


@needs_compiler
def test_compiled_forward_checks_the_input_shape():
    compiled = kernel.compiled_forward(build_model(ModelConfig()).eval())
    with pytest.raises(ValueError, match=r"shape \(M, 32\)"):
        compiled(np.zeros((4, 30), np.float32))


def test_torch_is_used_when_asked_or_when_the_kernel_cannot_be_built(monkeypatch):
    net = build_model(ModelConfig()).eval()
    monkeypatch.setenv("DWIVAE_KERNEL", "torch")
    assert kernel.compiled_forward(net) is None
    monkeypatch.delenv("DWIVAE_KERNEL")
    monkeypatch.setenv("PATH", "/nonexistent")  # no cc, gcc or clang to be found
    kernel._library.cache_clear()
    try:
        assert kernel.compiled_forward(net) is None
    finally:
        monkeypatch.undo()
        kernel._library.cache_clear()


def test_layers_the_kernel_does_not_implement_are_refused():
    net = build_model(ModelConfig(n_inputs=1100, latent=7)).eval()
    assert kernel.compiled_forward(net) is None
    odd = build_model(ModelConfig()).eval()
    odd.encoder[1].alpha = 0.5  # an ELU the kernel does not compute
    assert kernel.compiled_forward(odd) is None


@pytest.fixture
def fresh_kernel_cache(tmp_path, monkeypatch):
    """An empty kernel cache under tmp_path/cache/kernels (``$DWIVAE_CACHE``), built anew by the test."""
    monkeypatch.setenv("DWIVAE_CACHE", str(tmp_path / "cache"))
    kernel._library.cache_clear()
    yield tmp_path / "cache" / "kernels"
    kernel._library.cache_clear()


@needs_compiler
def test_kernel_is_built_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("DWIVAE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel._library.cache_clear()
    try:
        assert kernel.compiled_forward(build_model(ModelConfig()).eval()) is not None
        built = list((tmp_path / "dwivae" / "kernels").glob("kernel-*.so"))
        assert len(built) == 1
        record = built[0].with_name(built[0].name + ".sha256")
        assert {p.name for p in built[0].parent.iterdir()} == {built[0].name, record.name}  # no leftovers
        assert record.read_text() == hashlib.sha256(built[0].read_bytes()).hexdigest()
    finally:
        kernel._library.cache_clear()


def _built_kernel(cache: Path) -> Path:
    assert kernel.library() is not None
    (path,) = cache.glob("kernel-*.so")
    return path


@needs_compiler
def test_a_kernel_replaced_in_the_cache_is_never_loaded(fresh_kernel_cache, tmp_path):
    path = _built_kernel(fresh_kernel_cache)
    marker = tmp_path / "constructor-ran"
    source = tmp_path / "evil.c"
    source.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                      f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\n')
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(tmp_path / "evil.so"), str(source)], check=True)
    os.replace(tmp_path / "evil.so", path)  # a new file: the loaded one stays mapped in this process
    kernel._library.cache_clear()
    lib = kernel.library()
    assert not marker.exists()
    assert lib is not None and hasattr(lib, "dwivae_forward")  # rebuilt from the package's sources


@needs_compiler
def test_a_truncated_kernel_is_rebuilt(fresh_kernel_cache):
    path = _built_kernel(fresh_kernel_cache)
    cut = path.with_name("cut.so")
    cut.write_bytes(path.read_bytes()[:4096])
    os.replace(cut, path)  # a new file: the loaded one stays mapped in this process
    kernel._library.cache_clear()
    assert kernel.compiled_forward(build_model(ModelConfig()).eval()) is not None
    assert kernel._verified(path)


@needs_compiler
def test_cc_from_the_environment_is_not_run(fresh_kernel_cache, tmp_path, monkeypatch):
    marker = tmp_path / "cc-ran"
    fake = tmp_path / "fake-cc"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    assert kernel.library() is not None
    assert not marker.exists()


@needs_compiler
def test_a_cache_others_may_write_in_is_not_used(fresh_kernel_cache):
    fresh_kernel_cache.mkdir(parents=True)
    fresh_kernel_cache.chmod(0o777)
    assert kernel.library() is not None
    assert not list(fresh_kernel_cache.iterdir())  # built in a private folder instead, kept nowhere


def test_compiled_forward_refuses_layers_whose_shapes_do_not_chain():
    lib = kernel.library()
    if lib is None:
        pytest.skip("no compiled kernel here")
    w = np.zeros((13, 32), np.float32)
    with pytest.raises(ValueError, match="do not chain"):
        kernel.CompiledForward(lib, [(w, np.zeros(1000, np.float32), 1)])
    with pytest.raises(ValueError, match="do not chain"):
        kernel.CompiledForward(lib, [(w, np.zeros(13, np.float32), 1), (np.zeros((7, 20), np.float32),
                                                                          np.zeros(7, np.float32), 0)])


def test_linear_layers_without_activation_between_are_folded_where_it_saves_weights():
    rng = np.random.default_rng(0)
    layers = [(rng.normal(size=(7, 13)), rng.normal(size=7), 0), (rng.normal(size=(13, 7)), rng.normal(size=13), 1),
              (rng.normal(size=(2, 13)), rng.normal(size=2), 0), (rng.normal(size=(40, 2)), rng.normal(size=40), 2)]
    merged = kernel.merge_linear(layers)
    # mu -> decoder (13 -> 7 -> 13) folds into 13 -> 13; 13 -> 2 -> 40 would grow from 106 to 520 weights
    assert [w.shape for w, _, _ in merged] == [(13, 13), (2, 13), (40, 2)]
    assert [code for _, _, code in merged] == [1, 0, 2]
    x = rng.normal(size=13)
    w1, b1, _ = layers[0]
    w2, b2, _ = layers[1]
    np.testing.assert_allclose(merged[0][0] @ x + merged[0][1], w2 @ (w1 @ x + b1) + b2)


@needs_compiler
def test_loading_the_kernel_keeps_subnormal_numbers(fresh_kernel_cache):
    # linked with -ffast-math, gcc's crtfastmath.o would set flush-to-zero for the whole process
    assert kernel.library() is not None
    tiny = np.finfo(np.float32).smallest_subnormal
    assert tiny * np.float32(2) > 0
