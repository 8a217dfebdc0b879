"""End-to-end denoising speed and memory against MRtrix3 ``dwidenoise`` and DIPY ``mppca``.

A 96 x 96 x 60 x 32 volume of the seed32 protocol (simulated tensors in an ellipsoidal head,
Rician noise) is written as uncompressed ``.nii``; each method reads it, masks, denoises and writes
its output, in its own process, timed from outside: dwivae with a given model (voxel by voxel) and
as the plain command (``dwivae denoise IN --out OUT``: its first run, which trains the model, and
runs with the cached model), with peak memory (maximum resident set size)
from ``/usr/bin/time -v``. A volume 4x larger (240 slices) shows that dwivae's memory stays bounded.
dwivae and dwidenoise run ``--repeats`` times (default 3), interleaved, and their median wall time
is reported. Also prints the network's inference rate (voxels/s) on in-memory signals: torch
against the compiled kernel (:mod:`dwivae.kernels.bindings`), 1 and 2 threads.

Usage: ``python benchmarks/bench_denoise.py [--model DIR] [--out benchmarks/results/denoise.json] [--skip-peers]
[--skip-mppca] [--repeats N]``
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from dwivae.kernels.bindings import aligned_empty, compiled_forward
from dwivae.learn.checkpoint import load_model, save_model
from dwivae.learn.training import PRESETS, train
from dwivae.physics.acquisition import save_acquisition, seed32
from dwivae.physics.simulate import random_tensors, tensor_signals


def make_volume(shape: tuple[int, int, int], path: Path, *, seed: int = 0) -> None:
    """Write a head-shaped volume of random tensors with Rician noise (S0 = 1000, SNR 20)."""
    rng = np.random.default_rng(seed)
    acq = seed32()
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"), axis=-1)
    inside = np.sum((grid / [0.9, 0.95, 0.9]) ** 2, axis=-1) < 1
    data = np.zeros((*shape, acq.n_volumes), np.float32)
    n = int(inside.sum())
    clean = 1000 * tensor_signals(random_tensors(n, rng=rng), acq)
    sigma = 50.0
    noisy = np.hypot(clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32),
                     sigma * rng.standard_normal(clean.shape, dtype=np.float32))
    data[inside] = noisy
    data[~inside] = np.abs(sigma * rng.standard_normal(((~inside).sum(), acq.n_volumes), dtype=np.float32))
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), path)


def timed(cmd: list[str], outputs: list[Path]) -> dict:
    """Run a command under /usr/bin/time -v, its outputs deleted first; return wall seconds and
    peak memory in MB."""
    for path in outputs:
        path.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {done.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1))
    return {"wall_seconds": round(wall, 3), "peak_memory_mb": round(rss_kb / 1024, 1)}


@torch.inference_mode()
def torch_forward(network, x: np.ndarray, out: np.ndarray, *, batch_size: int = 1 << 16) -> np.ndarray:
    """The deterministic forward pass in torch, batch by batch, into ``out`` (what the kernel replaces)."""
    for start in range(0, len(x), batch_size):
        out[start:start + batch_size] = network(torch.from_numpy(x[start:start + batch_size]))[0].numpy()
    return out


def inference_rates(model, *, voxels: int = 2_000_000, repeats: int = 5) -> dict[str, float]:
    """Voxels per second of the deterministic forward pass on in-memory signals, torch against the
    compiled kernel at 1 and 2 threads, interleaved (best of ``repeats``). Inputs and outputs are
    arrays made once, as a pipeline that reuses its buffers has them: a fresh 256 MB output per
    call would add the kernel's zeroing of its pages to every run."""
    x = np.random.default_rng(0).uniform(0, 1, (voxels, model.model_config.n_inputs)).astype(np.float32)
    out = aligned_empty(x.shape)
    compiled = compiled_forward(model.network)
    threads = torch.get_num_threads()
    runs = {}
    for n in (1, 2):
        runs[f"torch, {n} thread{'s' * (n > 1)}"] = (n, lambda a: torch_forward(model.network, a, out[:len(a)]))
        if compiled is not None:
            runs[f"compiled kernel, {n} thread{'s' * (n > 1)}"] = (
                n, lambda a, n=n: compiled(a, threads=n, out=out[:len(a)]))
    best = dict.fromkeys(runs, float("inf"))
    try:
        for _ in range(repeats):
            for name, (n, run) in runs.items():
                torch.set_num_threads(n)
                run(x[:1000])
                started = time.perf_counter()
                run(x)
                best[name] = min(best[name], time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    return {name: voxels / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/denoise.json"))
    parser.add_argument("--model", type=Path, help="a seed32 model directory (default: train one)")
    parser.add_argument("--skip-peers", action="store_true", help="time dwivae only")
    parser.add_argument("--skip-mppca", action="store_true", help="skip DIPY mppca (minutes)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of dwivae and dwidenoise, interleaved; the median is reported (mppca runs once)")
    args = parser.parse_args()
    results: dict = {"machine": f"{os.cpu_count()} CPU cores", "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        acq = seed32()
        save_acquisition(acq, tmp / "dwi.bval", tmp / "dwi.bvec")
        if args.model:
            model, model_dir = load_model(args.model), args.model
        else:
            model, model_dir = train(acq, arch="vae", seed=0, config=PRESETS["default"]), tmp / "vae"
            save_model(model, model_dir)
        rates = inference_rates(model)
        results["inference_voxels_per_second"] = {name: round(rate) for name, rate in rates.items()}
        for name, rate in rates.items():
            print(f"inference, {name:<28} {rate / 1e6:6.2f} M voxels/s (latent 7, in memory)")
        for label, shape in (("96x96x60x32", (96, 96, 60)), ("96x96x240x32 (4x)", (96, 96, 240))):
            dwi = tmp / f"dwi_{shape[2]}.nii"
            make_volume(shape, dwi)
            vae_out = tmp / f"vae_{shape[2]}.nii"
            runs = {"dwivae": ([sys.executable, "-m", "dwivae.cli", "denoise", str(dwi), "--bvals",
                                str(tmp / "dwi.bval"), "--bvecs", str(tmp / "dwi.bvec"), "--model",
                                str(model_dir), "--out", str(vae_out), "--quiet"],
                               [vae_out, tmp / f"vae_{shape[2]}_residual.nii", tmp / f"vae_{shape[2]}.json"])}
            if shape[2] == 60:  # every voxel, as dwidenoise and mppca take them
                none_out = tmp / "vae_nomask.nii"
                runs["dwivae --mask none"] = (
                    [*runs["dwivae"][0][:-2], str(none_out), "--quiet", "--mask", "none"],
                    [none_out, tmp / "vae_nomask_residual.nii", tmp / "vae_nomask.json"])
            if shape[2] == 60:  # the plain command: its first run trains the model, the next ones reuse it
                os.environ["DWIVAE_CACHE"] = str(tmp / "cache")
                plain_out = tmp / "plain.nii"
                plain = ([sys.executable, "-m", "dwivae.cli", "denoise", str(dwi), "--bvals", str(tmp / "dwi.bval"),
                          "--bvecs", str(tmp / "dwi.bvec"), "--out", str(plain_out), "--quiet", "--force"], [plain_out, tmp / "plain_residual.nii", tmp / "plain_sigma.nii",
                                       tmp / "plain.json"])
                first = timed(*plain)
                results[label + " plain first run"] = first
                print(f"{label:<20} {'dwivae plain, first run':<32} {first['wall_seconds']:8.2f} s "
                      f"{first['peak_memory_mb']:8.0f} MB (training included)")
                runs["dwivae plain (cached model)"] = plain
            if not args.skip_peers and shape[2] == 60:
                if shutil.which("dwidenoise"):
                    runs["mrtrix3 dwidenoise -nthreads 2"] = (
                        ["dwidenoise", "-nthreads", "2", "-quiet", str(dwi), str(tmp / "mrtrix.nii")],
                        [tmp / "mrtrix.nii"])
                if not args.skip_mppca:
                    runs["dipy mppca"] = ([sys.executable, "-c", (
                        "import nibabel as nib, numpy as np, sys; from dipy.denoise.localpca import mppca; "
                        "img = nib.load(sys.argv[1]); d = np.asarray(img.dataobj, dtype=np.float32); "
                        "nib.save(nib.Nifti1Image(mppca(d, patch_radius=2, suppress_warning=True)"
                        ".astype(np.float32), img.affine), sys.argv[2])"), str(dwi), str(tmp / "mppca.nii")],
                        [tmp / "mppca.nii"])
            trials: dict[str, list[dict]] = {name: [] for name in runs}
            for k in range(args.repeats):
                for name, (cmd, outputs) in runs.items():
                    if name != "dipy mppca" or k == 0:
                        trials[name].append(timed(cmd, outputs))
            results[label] = {name: {"wall_seconds": float(np.median([t["wall_seconds"] for t in ts])),
                                     "wall_seconds_runs": [t["wall_seconds"] for t in ts],
                                     "peak_memory_mb": max(t["peak_memory_mb"] for t in ts)}
                              for name, ts in trials.items()}
            for name, r in results[label].items():
                print(f"{label:<20} {name:<32} {r['wall_seconds']:8.2f} s {r['peak_memory_mb']:8.0f} MB")
            peer = results[label].get("mrtrix3 dwidenoise -nthreads 2")
            for ours, key in (("dwivae", "speedup_vs_dwidenoise"),
                              ("dwivae --mask none", "speedup_vs_dwidenoise_no_mask"),
                              ("dwivae plain (cached model)", "plain_speedup_vs_dwidenoise")):
                if peer and ours in results[label]:
                    ratio = peer["wall_seconds"] / results[label][ours]["wall_seconds"]
                    results[label][key] = round(ratio, 2)
                    print(f"{label:<20} {ours} is {ratio:.1f}x faster than dwidenoise "
                          "(whole command, imports included)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
