"""Checks the release makes before any work: folders, inputs and the executor.

Each raises a one-line :class:`~isyb.errors.IsybError` before anything is written
or a template prepared (exit 2).
"""

from __future__ import annotations

from pathlib import Path

from isyb.bids.classify import load_release_policy
from isyb.bids.layout import DERIVATIVES, check_separate, collect_participants, read_description
from isyb.bids.participants import validate_participants
from isyb.bids.scrub import load_policy
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, check_scheduler
from isyb.io import check_output_folder


def check_folders(bids_dir: Path, out_dir: Path, work_dir: Path) -> None:
    """Refuse a folder that is not a BIDS dataset, overlapping folders, a work folder
    inside the release, and an output or work folder under a file or holding files isyb
    did not write."""
    read_description(bids_dir)
    check_separate(bids_dir, out_dir)
    release, work = out_dir.resolve(), work_dir.resolve()
    if work == release or release in work.parents:
        raise IsybError(f"{work_dir}: the work folder holds the secret date-shift key and "
                        "must not be inside OUTPUT_DIR")
    check_output_folder(work_dir, ours=(work_dir / "scrub.key").is_file())
    check_output_folder(out_dir, ours=(work_dir / "manifest").is_dir()
                        or (out_dir / DERIVATIVES).is_dir())


def check_inputs(bids_dir: Path, out_dir: Path, work_dir: Path, *, policy: str | None,
                 release_policy: str | None,
                 labels: list[str] | None = None) -> list[str]:
    """The subjects of the release (all, or ``labels``), after checking the folders and
    every input (description, ``participants.tsv``, sidecars, both policies): one-line
    errors before anything is written or a template prepared."""
    check_folders(bids_dir, out_dir, work_dir)
    subjects = collect_participants(bids_dir, labels or None)
    if not subjects:
        raise IsybError(f"{bids_dir}: no sub-* folders")
    validate_participants(bids_dir)
    load_policy(policy)
    load_release_policy(release_policy)
    return subjects


def check_executor(executor: ExecutorOptions) -> None:
    """Refuse threads other than one per task (the release's files are then the same on
    every executor) and a Dask scheduler that does not answer, before the scrub key is made."""
    if executor.threads not in (None, 1):
        raise IsybError("--omp-nthreads: the release runs one thread per task, so that its "
                        "files are the same on every executor")
    check_scheduler(executor)
