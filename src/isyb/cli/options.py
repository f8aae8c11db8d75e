"""Argument helpers shared by the sub-commands, and the command-line log."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, check_scheduler

#: Name of the sub-command that ``isyb BIDS_DIR OUTPUT_DIR LEVEL`` maps to.
APP = "app"
#: Name of the hidden ``qc`` sub-command that ``isyb qc BIDS_DIR OUT_DIR LEVEL`` maps to.
QC_DATASET = "dataset"
#: Metrics of ``isyb derive`` (as isyb.derive.dataset.METRICS, without importing it here).
DERIVE_METRICS = ("alff", "falff", "reho", "vmhc", "fa", "md", "cbf")

log = logging.getLogger("isyb")
#: Endings of file names: an output folder named like this is a mistake for a file.
FILE_ENDINGS = (".nii", ".nii.gz", ".mgz", ".mgh", ".json", ".tsv", ".html", ".png")


def check_out_folder(out_dir: Path, metavar: str) -> None:
    """Refuse at once a dataset mode's output folder that is an existing file or is named
    like one (``out.nii.gz``): the command would run for minutes and then make a folder
    of that name."""
    if out_dir.is_file():
        raise IsybError(f"{out_dir}: is a file; {metavar} must be a folder for a dataset")
    if not out_dir.is_dir() and out_dir.name.lower().endswith(FILE_ENDINGS):
        raise IsybError(f"{out_dir}: {metavar} must be a folder for a dataset, not a file "
                        "(name the output folder without a file extension)")
    check_writable(out_dir)


def check_writable(path: Path) -> None:
    """Refuse, before any work, an output ``path`` (file or folder) that cannot be written:
    the folder that would receive it (``path`` itself when it is a folder, else its nearest
    existing parent) is a file (``notes.txt/out.nii.gz``) or a folder this user cannot write
    into. Without this check the command would run, perhaps for minutes, and fail at its
    first write. The message is the system's own words for the error."""
    folder = path if path.is_dir() else next((p for p in path.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise IsybError(f"{path}: {os.strerror(errno.ENOTDIR)} (it is under a file, {folder})")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise IsybError(f"{folder}: {os.strerror(errno.EACCES)}")


def check_output_file(path: Path, option: str) -> None:
    """Refuse, before any work, an output file ``path`` (named by ``option`` in the message)
    that is an existing folder or cannot be written (:func:`check_writable`)."""
    if path.is_dir():
        raise IsybError(f"{path}: {os.strerror(errno.EISDIR)}; {option} must be a file path")
    check_writable(path)


def check_not_input(output: Path, inputs: Iterable[Path | None], option: str) -> None:
    """Refuse an ``output`` (named by ``option``) that is one of the command's input
    files, by any spelling or link, or lies inside an input folder (a dataset): the command
    would replace or change what it reads, and nobody asked for that."""
    target = output.resolve()
    for source in (s for s in inputs if s is not None):
        if source.is_dir() and (target == source.resolve() or source.resolve() in target.parents):
            raise IsybError(f"{output}: {option} lies inside the input {source}; write it "
                            "elsewhere")
        if target == source.resolve() or (output.exists() and source.exists()
                                          and os.path.samefile(output, source)):
            raise IsybError(f"{output}: {option} is the input {source}; write it elsewhere")


def check_in_out(source: Path, target: Path) -> None:
    """``isyb deface IN OUT``: a folder IN must be a BIDS dataset and needs a folder OUT;
    a file IN needs a file OUT."""
    if source.is_dir():
        from isyb.bids.layout import read_description

        read_description(source)
        check_out_folder(target, "OUT")
    elif target.is_dir():
        raise IsybError(f"{target}: is a folder, but IN is a file; give OUT as an image file "
                        "path (for a dataset, IN is the dataset folder)")


def note(message: str) -> None:
    """A progress or status line for the user (stderr, ``isyb: ...``; hidden by --quiet)."""
    log.info(message)


def failure(message: str) -> None:
    """A failed item (image, run, subject): a warning, so it is named on stderr even with
    ``--quiet``; the command then exits 1."""
    log.warning(message)


def _number(text: str, kind: type) -> float:
    """``text`` as ``kind`` (int or float), refused unless it is a finite number."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a {'whole number' if kind is int else 'number'}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def bounded(kind: type, low: float, *, strict: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` that accepts finite numbers of ``kind`` ≥ ``low`` (> ``low`` when
    ``strict``), so that no numeric option can be NaN, infinite or out of range (a NaN guard
    margin would change nothing and still pass)."""

    def parse(text: str) -> float:
        value = _number(text, kind)
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '≥'} {low:g}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


#: A whole number ≥ 1 (counts: processes, threads, subjects, iterations).
positive_int = bounded(int, 1)
#: A whole number ≥ 0 (random seeds).
nonnegative_int = bounded(int, 0)
#: A finite length or threshold ≥ 0 (mm margins).
nonnegative_float = bounded(float, 0.0)
#: A finite number > 0 (thresholds, times, scale factors).
positive_float = bounded(float, 0.0, strict=True)


def bids_app_arguments(parser: argparse.ArgumentParser, out_name: str,
                       out_metavar: str) -> None:
    """BIDS-App positional arguments and ``--participant-label`` (the execution options
    come from :func:`executor_arguments`)."""
    parser.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    parser.add_argument(out_name, metavar=out_metavar, type=Path)
    parser.add_argument("level", choices=("participant", "group"))
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participant level: only these subjects (with or without sub-)")


def executor_arguments(parser: argparse.ArgumentParser, units: str) -> None:
    """``--nprocs``, ``--omp-nthreads``, ``--executor``, ``--dask-scheduler`` and
    ``--dask-cluster``: the same options for every dataset mode (see :mod:`isyb.executor`)."""
    group = parser.add_argument_group("execution")
    group.add_argument("--nprocs", type=positive_int, default=1,
                       help=f"{units} processed in parallel (default: 1)")
    group.add_argument("--omp-nthreads", type=positive_int, metavar="N",
                       help="threads of each task (torch, ITK; default: cores // nprocs, "
                       "1 under dask); a fixed N gives the same results on every executor")
    group.add_argument("--executor", choices=("local", "dask"), default="local",
                       help="local processes (default) or a dask.distributed cluster")
    group.add_argument("--dask-scheduler", metavar="ADDRESS",
                       help="a running dask scheduler, e.g. tcp://10.0.0.5:8786")
    group.add_argument("--dask-cluster", choices=("slurm",),
                       help="start workers as SLURM jobs (dask-jobqueue; settings from dask's "
                       "jobqueue.slurm configuration)")


def executor_options(args: argparse.Namespace) -> ExecutorOptions:
    """The :class:`~isyb.executor.ExecutorOptions` of parsed :func:`executor_arguments`; an
    unreachable ``--dask-scheduler`` is refused here, before any file is written."""
    options = ExecutorOptions(args.executor, args.nprocs, args.dask_scheduler,
                              args.dask_cluster, threads=args.omp_nthreads)
    check_scheduler(options)
    return options
