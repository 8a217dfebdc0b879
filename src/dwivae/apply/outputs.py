"""A run's output files as one set: checked before any work, written to temporaries, renamed together.

A denoising run writes several files (the series, its residual, the noise map, the uncertainty,
the JSON sidecar). :func:`check_outputs` refuses, before anything is computed, an output that
exists without ``force``, is a directory, is one of the run's inputs (the image, its gradient
files, its own sidecar, a model file) or another output of the same run, or lies in a directory
that cannot be written. :class:`OutputSet` then hands out temporary names next to the targets and
renames them all at the end, the sidecar last, with SIGINT held back while it does; on any error
or interrupt every temporary is deleted, so a run leaves either all its outputs or none.
"""
from __future__ import annotations

import os
import secrets
import signal
import tempfile
import threading
from collections.abc import Iterable, Mapping
from os import PathLike
from pathlib import Path
from types import TracebackType

from dwivae.errors import InputError


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (the same resolved path, or the same inode)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_writable(directory: Path) -> None:
    """Refuse a directory that is missing or where no file can be created (tried with a probe file)."""
    if not directory.is_dir():
        raise InputError(f"the directory {directory} does not exist: create it or choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".dwivae-probe-", dir=directory)
    except OSError as err:
        raise InputError(f"cannot write in {directory} ({err.strerror}): choose another --out") from None
    os.close(fd)
    os.unlink(probe)


def check_outputs(outputs: Mapping[str, str | PathLike[str]], *, inputs: Iterable[str | PathLike[str]] = (),
                  force: bool = False) -> dict[str, Path]:
    """Check that every output of a run may be written, before any work is spent on it.

    Parameters
    ----------
    outputs : mapping of str to path
        The run's outputs by role (``denoised``, ``residual``, ``sidecar``, ...).
    inputs : iterable of path
        Files the run reads, which no output may replace, even with ``force`` (missing ones are
        skipped; a directory stands for every file in it).
    force : bool
        Allow replacing existing outputs.

    Returns
    -------
    dict of str to Path

    Raises
    ------
    InputError
        Naming the output and what is wrong with it.
    """
    paths = {name: Path(p) for name, p in outputs.items()}
    protected: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            protected += [p for p in item.iterdir() if p.is_file()]
        elif item.exists():
            protected.append(item)
    seen: dict[Path, str] = {}
    for name, path in paths.items():
        key = path.resolve()
        if key in seen:
            raise InputError(f"the {name} output {path} is also the {seen[key]} output: choose another --out")
        seen[key] = name
        if path.is_dir():
            raise InputError(f"{path} is a directory: give --out a file name such as {path / 'dwi_denoised.nii.gz'}")
        clash = next((p for p in protected if _same_file(path, p)), None)
        if clash is not None:
            raise InputError(f"the {name} output {path} would overwrite the input {clash}: choose another --out")
        if path.exists() and not force:
            raise InputError(f"{path} exists; pass --force to overwrite it")
    for directory in {p.parent.resolve(): p.parent for p in paths.values()}.values():
        check_writable(directory)
    return paths


class OutputSet:
    """Temporaries for a checked set of outputs, renamed onto them together when the block ends.

    Use as a context manager around the run; ``temp(name)`` gives the temporary file to write
    an output to. When the block ends without error, every output that was given a temporary is
    renamed onto its target in the order of ``outputs`` (put the sidecar last), with SIGINT held
    back meanwhile; otherwise every temporary is deleted and no target is touched.

    Parameters
    ----------
    outputs : mapping of str to Path
        From :func:`check_outputs`.
    force : bool
        Replace existing targets (checked again at the rename: one may have appeared meanwhile).
    """

    def __init__(self, outputs: Mapping[str, Path], *, force: bool = False) -> None:
        self.paths = dict(outputs)
        self._force = force
        self._temps: dict[str, Path] = {}

    def temp(self, name: str) -> Path:
        """The temporary file for output ``name``: hidden, next to it, with its suffixes (``.nii.gz``)."""
        if name not in self._temps:
            path = self.paths[name]
            suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
            self._temps[name] = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{suffix}")
        return self._temps[name]

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if exc_type is None:
                self._commit()
        finally:
            for temp in self._temps.values():
                temp.unlink(missing_ok=True)

    def _commit(self) -> None:
        names = [name for name in self.paths if name in self._temps]
        missing = [name for name in names if not self._temps[name].is_file()]
        if missing:
            raise RuntimeError(f"outputs {missing} were given temporaries but never written")
        if not self._force:
            for name in names:
                if self.paths[name].exists():
                    raise InputError(f"{self.paths[name]} appeared while this run was writing it; "
                                     "pass --force to overwrite it")
        hold = threading.current_thread() is threading.main_thread()
        if hold:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for name in names:
                os.replace(self._temps[name], self.paths[name])
        finally:
            if hold:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
