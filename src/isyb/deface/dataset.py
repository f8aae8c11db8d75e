"""Dataset mode: deface every anatomical image of a BIDS dataset into a complete copy.

``BIDS_OUT`` receives every file of ``BIDS_IN``; images in ``anat/`` folders
are defaced instead of copied. An image that cannot be defaced is *not*
copied (that would leak its face); the failure is listed in the summary.
Masks, provenance and QC pictures go to ``BIDS_OUT/derivatives/isyb``, with
a ``dataset_description.json`` and an ``index.html`` summary.

Resumable: a subject is finished when its record
``derivatives/isyb/logs/sub-<label>.json`` exists, written after all its
files. A rerun skips finished subjects; an interrupted subject is redone.
Every file is written atomically, so no half-written file is ever left.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from isyb import __version__
from isyb.bids.layout import (
    DERIVATIVES,
    BIDSFile,
    check_separate,
    collect_participants,
    derivatives_dir,
    describe_derivatives,
    is_image,
    read_description,
    subject_files,
)
from isyb.bids.participants import validate_participants
from isyb.deface.engine import DefaceOptions
from isyb.deface.report import write_summary
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, run_tasks
from isyb.io import atomic_path, check_output_folder, sweep_partial, write_text
from isyb.templates.registry import Template

__all__ = ["DERIVATIVES", "DatasetJob", "ImageEntry", "SubjectRecord", "check_dataset",
           "copy_file", "deface_dataset", "record_path", "run_subject"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetJob:
    """What one subject needs: paths, the prepared template and the options.

    Threads are the executor's (:func:`isyb.executor.limit_threads`).
    """

    bids_in: Path
    bids_out: Path
    subject: str
    template: Template
    options: DefaceOptions


class ImageEntry(TypedDict, total=False):
    """One anatomical image of a subject record: ``status`` ``ok`` with its
    ``provenance`` (:meth:`isyb.deface.checked.DefaceReport.to_json`), or
    ``failed`` with a one-line ``error``. ``file`` is its path in the dataset."""

    file: str
    status: str
    provenance: dict[str, Any]
    error: str


class SubjectRecord(TypedDict):
    """``derivatives/isyb/logs/sub-<label>.json``: a subject's images, written last."""

    subject: str
    images: list[ImageEntry]
    isyb_version: str


def copy_file(source: Path, target: Path) -> None:
    """Copy a file (following symlinks) atomically, unless an identical copy exists."""
    if target.is_file() and target.stat().st_size == source.stat().st_size \
            and target.stat().st_mtime >= source.stat().st_mtime:
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)


def record_path(bids_out: Path, subject: str) -> Path:
    """Where a subject's record goes; its presence marks the subject finished."""
    return derivatives_dir(bids_out) / "logs" / f"sub-{subject}.json"


def _deface_image(job: DatasetJob, item: BIDSFile) -> ImageEntry:
    from isyb.deface.file import deface_file

    target = job.bids_out / item.relative
    stem = item.derivative(job.bids_out, item.bids_name)
    png = Path(f"{stem}_desc-deface_qc.png")
    entry: ImageEntry = {"file": str(item.relative)}
    try:
        provenance = deface_file(
            item.path, target, job.template, job.options, force=True,
            save_mask=f"{stem}_desc-deface_mask.nii.gz",
            provenance_path=f"{stem}_desc-deface_provenance.json",
            png_path=png,
            recorded_as={"input": item.relative.as_posix(), "output": item.relative.as_posix(),
                         "qc_png": png.relative_to(derivatives_dir(job.bids_out)).as_posix()},
        )
        entry.update(status="ok", provenance=provenance)
    except IsybError as exc:
        entry.update(status="failed", error=_relative_message(exc, item.path, item.relative))
        target.unlink(missing_ok=True)
    return entry


def run_subject(job: DatasetJob) -> SubjectRecord:
    """Copy one subject and deface its anatomical images; write its record last."""
    images: list[ImageEntry] = []
    for item in subject_files(job.bids_in, job.subject):
        if item.datatype == "anat" and is_image(item.path):
            images.append(_deface_image(job, item))
        else:
            copy_file(item.path, job.bids_out / item.relative)
    record: SubjectRecord = {"subject": job.subject, "images": images,
                             "isyb_version": __version__}
    write_text(record_path(job.bids_out, job.subject), json.dumps(record, indent=2) + "\n")
    return record


def _relative_message(error: Exception, source: Path, relative: Path) -> str:
    """The error's message with the input's local path replaced by its dataset path."""
    message = str(error)
    for path in (str(source.resolve()), str(source)):
        message = message.replace(path, relative.as_posix())
    return message


def write_dataset_files(bids_in: Path, bids_out: Path, template: Template,
                        options: DefaceOptions) -> None:
    """Copy the top-level files and describe the derivatives folder."""
    for path in sorted(bids_in.iterdir()):
        if path.is_file():
            copy_file(path, bids_out / path.name)
        elif path.is_dir() and not path.name.startswith(("sub-", "derivatives", ".")):
            for inner in sorted(path.rglob("*")):
                if inner.is_file():
                    copy_file(inner, bids_out / inner.relative_to(bids_in))
    source_name = read_description(bids_in).get("Name", "")
    describe_derivatives(
        bids_out, bids_in, name=f"isyb defacing of {source_name}".strip(),
        generated_by={"Name": "isyb", "Version": __version__,
                      "Description": f"face masking, template {template.name}, "
                                     f"method {options.method}, "
                                     f"face region {options.face_region}"})


def check_dataset(bids_in: Path, bids_out: Path, labels: Iterable[str] | None = None,
                  ) -> list[str]:
    """The subjects to deface, after checking every input (description,
    ``participants.tsv``, sidecars) and that ``bids_out`` is new, empty or isyb's own; a
    bad one is a one-line error, before anything is written or a template prepared."""
    read_description(bids_in)
    check_separate(bids_in, bids_out)
    check_output_folder(bids_out, ours=derivatives_dir(bids_out).is_dir())
    subjects = collect_participants(bids_in, labels)
    if not subjects:
        raise IsybError(f"{bids_in}: no sub-* folders")
    validate_participants(bids_in)
    return subjects


def deface_dataset(bids_in: Path, bids_out: Path, template: Template, options: DefaceOptions,
                   *, labels: Iterable[str] | None = None,
                   executor: ExecutorOptions | None = None,
                   progress: bool = True) -> list[SubjectRecord]:
    """Deface a BIDS dataset into ``bids_out``; return one record per subject, in label order.

    ``executor`` says where subjects run (default: one local process; see
    :mod:`isyb.executor`). Finished subjects (their record exists) are skipped. The inputs
    (description, ``participants.tsv``, sidecars) and ``bids_out`` (new, empty or isyb's
    own) are checked before anything is written; temporary files a killed run left are
    removed.
    """
    todo_all = check_dataset(bids_in, bids_out, labels)
    for path in sweep_partial(bids_out):
        log.warning("removed %s, left by an interrupted run", path)
    write_dataset_files(bids_in, bids_out, template, options)
    records: dict[str, SubjectRecord] = {}
    todo = []
    for subject in todo_all:
        done = record_path(bids_out, subject)
        if done.is_file():
            records[subject] = json.loads(done.read_text())
        else:
            todo.append(subject)
    if len(todo) < len(todo_all):
        log.info("%d subject(s) already finished, skipped", len(todo_all) - len(todo))
    jobs = [DatasetJob(bids_in, bids_out, s, template, options) for s in todo]
    for record in run_tasks(run_subject, jobs, executor or ExecutorOptions(),
                            progress=progress, desc="defacing"):
        records[record["subject"]] = record
    ordered = [records[s] for s in todo_all]
    write_summary(derivatives_dir(bids_out) / "index.html", ordered, derivatives_dir(bids_out))
    return ordered
