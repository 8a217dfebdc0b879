"""``dwivae bids ... participant``: every scan of a dataset, denoised on Dask distributed.

The scans are looked at first (gradient files, volume count, SNR range; one task each), then one
model is trained per protocol fingerprint on the SNR range of all its scans, and each scan is
denoised with its protocol's model as soon as that model exists. Dask places the tasks: on a
``LocalCluster`` sized to the machine by default, or on the cluster of ``scheduler`` unchanged.
Scans whose outputs and QC record exist are skipped (unless ``force``); a scan that fails is
reported with its reason in ``OUT_DIR/logs/<scan>.log`` and the summary, and the others finish.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

from dwivae.apply.plain import matched_training
from dwivae.bids.layout import LOGS, MODELS, SUMMARY, Scan, find_scans, write_description
from dwivae.bids.scan_tasks import Outcome, denoise_scan, failed, inspect_scan, train_protocol
from dwivae.errors import InputError
from dwivae.io.writing import write_json_atomic, write_text_atomic
from dwivae.kernels.bindings import default_threads

@dataclass
class Summary:
    """What a run did: scans denoised, skipped (complete before) and failed, and the models."""

    denoised: list[Outcome] = field(default_factory=list)
    failed: list[Outcome] = field(default_factory=list)
    skipped: list[Scan] = field(default_factory=list)
    models: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    dashboard: str = ""

    def line(self) -> str:
        """One line for the user."""
        return (f"{len(self.denoised)} scans denoised, {len(self.skipped)} complete before, {len(self.failed)} failed, "
                f"with {len(self.models)} model(s), in {self.seconds:.1f} s")


def _cluster(scheduler: str | None, workers: int | None):
    """A client of the cluster at ``scheduler``, or of a new LocalCluster of ``workers`` processes
    (default: one per CPU this process may use) and that cluster.

    Each local worker runs one task at a time on its share of the CPUs (``OMP_NUM_THREADS``, which
    torch, BLAS and the kernels take), and without Dask's ``MALLOC_TRIM_THRESHOLD_``: set, it turns
    off glibc's adaptive mmap threshold, so each batch's arrays are mapped and zeroed anew (training
    took 2.2x as long).
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler), None
    cpus = default_threads()
    workers = workers or cpus
    share = str(max(1, cpus // workers))
    environ = "distributed.nanny.pre-spawn-environ"
    saved = dict(os.environ)  # the nannies write their workers' variables into this process's environment
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    try:
        with dask.config.set({f"{environ}.MALLOC_TRIM_THRESHOLD_": None, f"{environ}.OMP_NUM_THREADS": share,
                              f"{environ}.MKL_NUM_THREADS": share, f"{environ}.OPENBLAS_NUM_THREADS": share}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return Client(cluster), cluster


def run_participant(bids_dir: str | PathLike[str], out_dir: str | PathLike[str], *,
                    participants: list[str] | None = None, sessions: list[str] | None = None,
                    scheduler: str | None = None, workers: int | None = None, force: bool = False,
                    coils: int = 1, seed: int = 0, preset: str = "default", command: str = "",
                    log: Callable[[str], None] = print) -> Summary:
    """Denoise the dataset's scans into ``out_dir`` (see the module's description).

    Parameters
    ----------
    bids_dir, out_dir : path
        The BIDS dataset and the derivative folder (created, with its dataset_description.json).
    participants, sessions : list of str, optional
        Labels to take (default: all).
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); default: a LocalCluster.
    workers : int, optional
        Worker processes of the LocalCluster (default: one per CPU).
    force : bool
        Redo scans whose outputs exist.
    coils, seed, preset
        The receive coils of the magnitudes (1: Rician), the seed of training and grouping, and
        the training preset of the models.
    command : str
        The command line, for the provenance.
    log : callable
        Takes each progress line.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).resolve()  # the workers do not share this process's working directory
    if out_dir == Path(bids_dir).resolve():
        raise InputError(f"{out_dir} is the dataset itself: write the derivative beside it, e.g. in "
                         f"{out_dir / 'derivatives' / 'dwivae'}")
    scans = find_scans(bids_dir, participants=participants, sessions=sessions)
    (out_dir / LOGS).mkdir(parents=True, exist_ok=True)
    write_description(out_dir, bids_dir, command=command)
    summary = Summary(skipped=[scan for scan in scans if not force and scan.complete(out_dir)])
    todo = [scan for scan in scans if scan not in summary.skipped]
    if summary.skipped:
        log(f"{len(summary.skipped)} of {len(scans)} scans are complete from an earlier run (--force redoes them)")
    if todo:
        client, cluster = _cluster(scheduler, workers)
        try:
            summary.dashboard = client.dashboard_link
            log(f"{len(todo)} scans on {len(client.nthreads())} Dask workers; dashboard {summary.dashboard}")
            _run(client, todo, out_dir, summary, coils=coils, seed=seed, preset=preset, command=command, log=log)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    summary.seconds = time.perf_counter() - started
    _write_summary(out_dir, summary)
    return summary


def _run(client, todo: list[Scan], out_dir: Path, summary: Summary, *, coils: int, seed: int, preset: str,
         command: str, log: Callable[[str], None]) -> None:
    """Look at every scan, train a model per protocol, denoise; record each outcome in ``summary``."""
    from dask.distributed import as_completed

    def report(outcome: Outcome) -> None:
        (summary.denoised if outcome.ok else summary.failed).append(outcome)
        _write_log(out_dir, outcome)
        remaining = len(todo) - len(summary.denoised) - len(summary.failed)
        what = (f"denoised in {outcome.qc.get('Seconds', 0):.1f} s" if outcome.ok else f"failed: {outcome.reason}")
        log(f"[{len(summary.denoised)} done, {len(summary.failed)} failed, {remaining} remaining] "
            f"{outcome.scan.relative}: {what}")

    looked = client.map(inspect_scan, todo, pure=False)
    protocols: dict[str, list[Outcome]] = {}
    for future in as_completed(looked):
        outcome = future.result()
        if outcome.ok:
            protocols.setdefault(outcome.fingerprint, []).append(outcome)
        else:
            report(outcome)
    scans_of, models = {}, {}
    for fingerprint, outcomes in protocols.items():
        snr = (min(o.snr[0] for o in outcomes), max(o.snr[1] for o in outcomes))
        config, tag = matched_training(snr, coils=coils, preset=preset)
        model = client.submit(train_protocol, outcomes[0].scan, config, tag=tag, models=out_dir / MODELS, seed=seed,
                              pure=False)
        models[fingerprint] = model
        for outcome in outcomes:
            future = client.submit(denoise_scan, outcome.scan, model, out_dir, coils=coils, seed=seed,
                                   command=command, pure=False)
            scans_of[future] = outcome.scan
    for future in as_completed(list(scans_of)):
        try:
            outcome = future.result()
        except Exception as err:  # noqa: BLE001 - the protocol's training failed: its scans are reported
            outcome = failed(scans_of[future], RuntimeError(f"training the model of its protocol failed: {err}"))
        report(outcome)
    for fingerprint, model in models.items():
        summary.models[fingerprint] = (str(Path(model.result()).relative_to(out_dir)) if model.status == "finished"
                                       else f"failed: {model.exception()}")


def _write_log(out_dir: Path, outcome: Outcome) -> None:
    """The log of a failed scan (its reason, and the traceback of an unexpected error); a
    succeeded scan's log of an earlier failure is removed."""
    path = outcome.scan.log_path(out_dir)
    if outcome.ok:
        path.unlink(missing_ok=True)
        return
    write_text_atomic(path, f"{outcome.scan.relative}: {outcome.reason}\n" + (f"\n{outcome.detail}" if outcome.detail
                                                                               else ""), force=True)


def _write_summary(out_dir: Path, summary: Summary) -> None:
    """``OUT_DIR/logs/participant.json``: the scans by status, with reasons, and the models."""
    rows = ([{"Scan": str(o.scan.relative), "Status": "denoised", "Seconds": o.qc.get("Seconds")}
             for o in summary.denoised]
            + [{"Scan": str(scan.relative), "Status": "complete before"} for scan in summary.skipped]
            + [{"Scan": str(o.scan.relative), "Status": "failed", "Reason": o.reason,
                "Log": str(o.scan.log_path(out_dir).relative_to(out_dir))} for o in summary.failed])
    write_json_atomic(out_dir / LOGS / SUMMARY, {
        "Denoised": len(summary.denoised), "CompleteBefore": len(summary.skipped), "Failed": len(summary.failed),
        "Seconds": round(summary.seconds, 1), "Models": summary.models, "Dashboard": summary.dashboard,
        "Scans": sorted(rows, key=lambda row: row["Scan"])}, force=True)
