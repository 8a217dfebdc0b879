"""Training speed: the study preset and the default preset, and the compiled step against autograd.

Trains the seed32 VAE (``dwivae.learn.training.train(seed32(), arch="vae", seed=0, config=PRESETS[p])``)
for each preset and prints samples/s (sample passes over training time: the batch gather, the
noise and the optimisation steps), training and wall time (simulation and test evaluation included)
and test MSE, next to the study's 12 hours on a 32-core CPU. Then, in the same run, times
:class:`~dwivae.learn.training.AutogradStep` and :class:`~dwivae.learn.compiled_step.CompiledStep` on the same
batches, interleaved (the machine may be shared: the ratio, measured in one run, means more than
the absolute numbers).

Usage: ``python benchmarks/bench_train.py [--out benchmarks/results/train.json] [--skip-study] [--threads N]``
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from dwivae.learn.compiled_step import CompiledStep, UnsupportedNetwork
from dwivae.learn.models import ModelConfig, build_model
from dwivae.learn.training import PRESETS, AutogradStep, make_step, train
from dwivae.physics.acquisition import seed32

STUDY_SECONDS = 12 * 3600
"""The study's training time: 12 hours on a 32-core CPU."""
STUDY_CORES = 32


def train_preset(name: str) -> dict:
    acq = seed32()
    config = PRESETS[name]
    step = make_step(build_model(ModelConfig(arch="vae", n_inputs=acq.n_volumes)), lr=config.lr,
                     loss=config.loss)
    print(f"training preset {name!r} ({type(step).__name__}, torch threads {torch.get_num_threads()}) ...",
          flush=True)
    model = train(acq, arch="vae", seed=0, config=config)
    s = model.summary
    result = {
        "step": type(step).__name__,
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "sample_passes": s["sample_passes"],
        "samples_per_second": round(s["samples_per_second"]),
        "train_seconds": round(s["train_seconds"], 2),
        "wall_seconds": round(s["wall_seconds"], 2),
        "test_mse": s["test_mse"],
        "speedup_vs_study_12h_32_cores": round(STUDY_SECONDS / s["wall_seconds"], 1),
        "speedup_per_core_vs_study": round(
            STUDY_SECONDS * STUDY_CORES / (s["wall_seconds"] * (os.cpu_count() or 1)), 1),
    }
    print(f"  {name:<8} {result['samples_per_second'] / 1e6:6.2f} M samples/s  train {result['train_seconds']:8.1f} s"
          f"  wall {result['wall_seconds']:8.1f} s  test MSE {result['test_mse']:.3g}"
          f"  ({s['sample_passes'] / 1e6:.0f} M sample passes; the study: 12 h on 32 cores,"
          f" {result['speedup_vs_study_12h_32_cores']:.0f}x this wall time)", flush=True)
    return result


def micro_benchmark(*, batch: int = 3000, n_batches: int = 8, rounds: int = 7,
                    seconds_per_round: float = 0.3) -> dict:
    """Seconds per step of the autograd and compiled steps on the same batches, interleaved."""
    torch.manual_seed(0)
    net = build_model(ModelConfig(arch="vae"))
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(n_batches):
        y = torch.rand(batch, net.config.n_inputs, generator=g)
        x = (y + 0.05 * torch.randn(y.shape, generator=g)).clamp_(min=0.0)
        batches.append((x, y, torch.randn(batch, net.config.latent, generator=g)))
    threads = torch.get_num_threads()
    variants = {
        "autograd, 1 torch thread": (AutogradStep(copy.deepcopy(net), lr=4e-4, loss="huber"), 1),
        f"autograd, {threads} torch threads": (AutogradStep(copy.deepcopy(net), lr=4e-4, loss="huber"), threads),
    }
    try:
        for lanes in (1, 2):
            variants[f"compiled, {lanes} lane{'s' * (lanes > 1)}"] = (
                CompiledStep(copy.deepcopy(net), lr=4e-4, loss="huber", lanes=lanes), threads)
    except UnsupportedNetwork as err:
        print(f"  (no compiled step: {err})")
    if threads == 1:
        del variants["autograd, 1 torch threads"]
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(rounds):
            for name, (step, n_threads) in variants.items():
                torch.set_num_threads(n_threads)
                step(*batches[0], 0.001)
                started, n = time.perf_counter(), 0
                while time.perf_counter() - started < seconds_per_round or n < 2:
                    step(*batches[n % n_batches], 0.001)
                    n += 1
                times[name].append((time.perf_counter() - started) / n)
    finally:
        torch.set_num_threads(threads)
    result: dict = {"batch_size": batch, "torch_threads": threads, "steps": {}}
    for name, ts in times.items():
        best, median = min(ts), statistics.median(ts)
        result["steps"][name] = {"ms_per_step_best": round(best * 1e3, 3), "ms_per_step_median": round(median * 1e3, 3),
                                 "samples_per_second_best": round(batch / best),
                                 "samples_per_second_median": round(batch / median)}
        print(f"  {name:<30} {median * 1e3:8.2f} ms/step (best {best * 1e3:7.2f})"
              f"  {batch / median / 1e6:5.2f} M samples/s (best {batch / best / 1e6:5.2f})", flush=True)
    auto = result["steps"][f"autograd, {threads} torch threads" if threads > 1
                           else "autograd, 1 torch thread"]["ms_per_step_median"]
    auto1 = result["steps"]["autograd, 1 torch thread"]["ms_per_step_median"]
    for name in [k for k in result["steps"] if not k.startswith("autograd")]:
        step_ms = result["steps"][name]["ms_per_step_median"]
        result[f"speedup {name} vs autograd ({threads} threads)"] = round(auto / step_ms, 2)
        result[f"speedup {name} vs autograd (1 thread)"] = round(auto1 / step_ms, 2)
        print(f"  {name} is {auto / step_ms:.1f}x faster than autograd at {threads} threads,"
              f" {auto1 / step_ms:.1f}x than autograd at 1 thread (medians)")
    result["default_lanes"] = getattr(make_step(copy.deepcopy(net), lr=1e-3, loss="huber"), "lanes_wanted", 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    parser.add_argument("--skip-study", action="store_true", help="skip the study preset (minutes)")
    parser.add_argument("--skip-presets", action="store_true", help="only the step micro-benchmark")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, the core count); "
                        "on a shared machine 1 avoids OpenMP stalls in the training loop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict = {"machine": f"{os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                     "study_reference": "12 hours on a 32-core CPU", "presets": {}}
    print("step micro-benchmark (VAE, ELU, batch 3000, same batches, interleaved):", flush=True)
    results["micro_benchmark"] = micro_benchmark()
    if not args.skip_presets:
        for name in ("default", "study"):
            if name == "study" and args.skip_study:
                continue
            results["presets"][name] = train_preset(name)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
