"""Dataset mode: deface every anatomical image of a BIDS dataset into a checked copy.

``BIDS_OUT`` receives the files of ``BIDS_IN`` that the release policy
recognises (:mod:`isyb.bids.classify`, deny by default): anatomical head
images are defaced instead of copied, allowed images, their sidecars and the
top-level files are copied. Everything else (backup copies, ``sourcedata/``,
the input's ``derivatives/``, symlinks leading outside, images outside a
datatype folder, single 3-D volumes under other suffixes...) is withheld and
listed, with the reason, in ``BIDS_OUT/derivatives/isyb/withheld.tsv``. An
image that cannot be defaced is *not* copied (that would leak its face); the
failure is listed in the summary. Masks, provenance and QC pictures go to
``BIDS_OUT/derivatives/isyb``, named per BIDS-derivatives (see
:func:`deface_stem`), with a ``dataset_description.json`` and an
``index.html`` summary.

Resumable, as ``isyb qc`` and ``isyb derive`` are: a subject's record
``derivatives/isyb/logs/sub-<label>.json``, written after all its files, holds
the stamps (:func:`isyb.bids.layout.file_stamp`) of the input files it was made
from, a digest of its options (:func:`options_key`) and the isyb version. A
rerun skips a subject whose record has every image ``ok`` with the same
stamps, digest and version; a subject that failed, whose files, options,
template or release policy changed, or that was interrupted (no record) is
redone. Every file is written atomically, so no half-written file is ever left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypedDict

from isyb import __version__
from isyb.bids.classify import (
    Item,
    ReleasePolicy,
    classify_dataset,
    classify_subject,
    filter_scans,
    load_release_policy,
    withheld_tsv,
)
from isyb.bids.layout import (
    DERIVATIVES,
    BIDSFile,
    check_separate,
    collect_participants,
    derivatives_dir,
    describe_derivatives,
    file_stamp,
    read_description,
    unchanged_record,
)
from isyb.bids.participants import validate_participants
from isyb.deface.engine import DefaceOptions
from isyb.deface.report import write_summary
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, run_tasks
from isyb.io import atomic_path, check_output_folder, sweep_partial, write_text
from isyb.templates.registry import Template

__all__ = ["DERIVATIVES", "DatasetJob", "ImageEntry", "SubjectRecord", "check_dataset",
           "copy_allowed", "copy_file", "deface_dataset", "deface_stem", "forget_input_stamps",
           "input_stamps", "options_key", "record_path", "run_subject", "withheld_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetJob:
    """What one subject needs: paths, the prepared template and the options.

    Threads are the executor's (:func:`isyb.executor.limit_threads`).
    ``release_policy`` is the release policy file (None: isyb's default).
    """

    bids_in: Path
    bids_out: Path
    subject: str
    template: Template
    options: DefaceOptions
    release_policy: str | None = None


class ImageEntry(TypedDict, total=False):
    """One anatomical image of a subject record: ``status`` ``ok`` with its
    ``provenance`` (:meth:`isyb.deface.checked.DefaceReport.to_json`), or
    ``failed`` with a one-line ``error``. ``file`` is its path in the dataset."""

    file: str
    status: str
    provenance: dict[str, Any]
    error: str


class SubjectRecord(TypedDict):
    """``derivatives/isyb/logs/sub-<label>.json``: a subject's images, written last, with
    what decides whether a rerun may reuse them: ``input`` (:func:`input_stamps`),
    ``options_key`` (:func:`options_key`) and ``isyb_version``."""

    subject: str
    images: list[ImageEntry]
    input: dict[str, dict[str, int]]
    options_key: str
    isyb_version: str


def copy_file(source: Path, target: Path) -> None:
    """Copy a file (following symlinks) atomically. Always: a subject whose record is
    reused is not copied again, and one that is redone may have a source replaced by an
    older file of the same size (``cp -p``, a restore). The copy gets its own modification
    time, not the source's: that time is often the day of the scan, and outputs are
    published."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def copy_allowed(items: list[Item], bids_out: Path, written: dict[str, str]) -> None:
    """Copy the ``copy`` items into ``bids_out``; ``scans.tsv`` tables last, with only the
    rows of files in the output (``written``, input path -> output path, plus the copies).

    Then remove any other file of the subject's output folders: one an earlier run (an
    older isyb, another policy) left there would otherwise be released unchecked.
    """
    scans = [i for i in items if i.kind == "copy" and i.output.endswith("_scans.tsv")]
    for item in items:
        if item.kind == "copy" and item not in scans:
            copy_file(item.source, bids_out / item.output)
            written[item.relative] = item.output
    for item in scans:
        folder = item.relative.rsplit("/", 1)[0]
        text = filter_scans(item.source.read_text(errors="replace"), folder, written)
        target = bids_out / item.output
        if not target.is_file() or target.read_text(errors="replace") != text:
            write_text(target, text)
        written[item.relative] = item.output
    kept = set(written.values())
    subjects = {i.relative.split("/", 1)[0] for i in items}
    for subject in sorted(subjects):
        for path in sorted((bids_out / subject).rglob("*")):
            relative = path.relative_to(bids_out).as_posix()
            if (path.is_file() or path.is_symlink()) and relative not in kept:
                path.unlink()
                log.warning("removed %s from the output: not a file the release policy "
                            "allows (left by an earlier run)", relative)


def record_path(bids_out: Path, subject: str) -> Path:
    """Where a subject's record goes (written last: without it the subject is unfinished)."""
    return derivatives_dir(bids_out) / "logs" / f"sub-{subject}.json"


def forget_input_stamps(bids_out: Path, subject: str) -> None:
    """Drop the source files' stamps from a subject's record, for an output that will be
    published (the release): their modification times can date the scans. The subject is
    then redone by a later dataset deface into ``bids_out``; the release resumes from its
    own manifest instead."""
    path = record_path(bids_out, subject)
    record = json.loads(path.read_text())
    record.pop("input", None)
    write_text(path, json.dumps(record, indent=2) + "\n")


def input_stamps(items: Iterable[Item]) -> dict[str, dict[str, int]]:
    """:func:`isyb.bids.layout.file_stamp` of each file a subject's output is made from (the
    ones the release policy defaces or copies), by dataset path: a file changed, added or
    removed changes them, and its subject is redone."""
    return {i.relative: file_stamp(i.source) for i in items if i.kind in ("deface", "copy")}


def options_key(job: DatasetJob, policy: ReleasePolicy) -> str:
    """A short digest of what, besides its input files, decides a subject's output: the
    defacing options, the template (name and its prepared files' SHA-256) and the text of
    the release policy (which files are defaced, copied or withheld)."""
    text = json.dumps({"options": asdict(job.options), "template": job.template.name,
                       "template_files": job.template.info.get("files"),
                       "release_policy": Path(policy.source).read_text()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _finished(path: Path, stamps: dict[str, dict[str, int]], key: str,
              ) -> SubjectRecord | None:
    """The subject's record if it can be reused: every image ``ok``, made by this isyb
    version from the same input files (``stamps``) with the same options (``key``). A
    failed subject is always retried: its input may have been fixed since."""
    record = unchanged_record(path, {"input": stamps, "options_key": key})
    ok = record is not None and all(i.get("status") == "ok" for i in record.get("images", []))
    return record if ok else None


def withheld_path(bids_out: Path) -> Path:
    """``BIDS_OUT/derivatives/isyb/withheld.tsv``: what dataset mode left out, and why."""
    return derivatives_dir(bids_out) / "withheld.tsv"


def deface_stem(bids_out: Path, image: BIDSFile) -> Path:
    """Where the derivatives of a defaced image go, without their ``_<suffix>.<ext>``.

    BIDS-derivatives names: the source's entities, then ``desc-deface``, then
    the derivative's own suffix (``sub-01_desc-deface_mask.nii.gz``). The
    source suffix cannot stay in the name, so a T2w (or any non-T1w) image's
    contrast goes into the description label instead, which keeps the names
    of a subject's T1w and T2w apart: ``sub-01_desc-defaceT2w_mask.nii.gz``.
    """
    entities = "".join(f"{k}-{v}_" for k, v in image.entities.items())
    label = "deface" if image.suffix == "T1w" else f"deface{image.suffix}"
    return image.derivative(bids_out, f"{entities}desc-{label}")


def _deface_image(job: DatasetJob, item: Item) -> ImageEntry:
    from isyb.deface.file import deface_file

    target = job.bids_out / item.output
    stem = deface_stem(job.bids_out, BIDSFile(item.source, Path(item.output), job.subject))
    png = Path(f"{stem}_qc.png")
    entry: ImageEntry = {"file": item.relative}
    try:
        provenance = deface_file(
            item.source, target, job.template, job.options, force=True,
            save_mask=f"{stem}_mask.nii.gz",
            provenance_path=f"{stem}_provenance.json",
            png_path=png,
            recorded_as={"input": item.relative, "output": item.output,
                         "qc_png": png.relative_to(derivatives_dir(job.bids_out)).as_posix()},
        )
        entry.update(status="ok", provenance=provenance)
    except IsybError as exc:
        entry.update(status="failed",
                     error=_relative_message(exc, item.source, Path(item.relative)))
        target.unlink(missing_ok=True)
    return entry


def run_subject(job: DatasetJob) -> SubjectRecord:
    """Copy what the release policy allows of one subject and deface its anatomical
    images; withheld files are left out. Write its record last, with the stamps of its
    inputs taken before the work (a file changed meanwhile makes the next run redo it)."""
    images: list[ImageEntry] = []
    policy = load_release_policy(job.release_policy)
    items = classify_subject(job.bids_in, job.subject, policy)
    stamps = input_stamps(items)
    written: dict[str, str] = {}
    for item in items:
        if item.kind == "deface":
            images.append(_deface_image(job, item))
            if images[-1]["status"] == "ok":
                written[item.relative] = item.output
    copy_allowed(items, job.bids_out, written)
    record: SubjectRecord = {"subject": job.subject, "images": images, "input": stamps,
                             "options_key": options_key(job, policy),
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
                        options: DefaceOptions, items: list[Item]) -> None:
    """Copy the allowed top-level files, list the withheld ones in ``withheld.tsv``
    (the whole dataset's, whichever subjects run), describe the derivatives folder."""
    for item in items:
        if item.kind == "top":
            copy_file(item.source, bids_out / item.output)
    text = withheld_tsv(items)
    path = withheld_path(bids_out)
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)
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
                   progress: bool = True,
                   release_policy: str | None = None) -> list[SubjectRecord]:
    """Deface a BIDS dataset into ``bids_out``; return one record per subject, in label order.

    ``executor`` says where subjects run (default: one local process; see
    :mod:`isyb.executor`). Subjects whose record can be reused (:func:`_finished`) are
    skipped; the others (failed, changed or unfinished) are redone. The inputs
    (description, ``participants.tsv``, sidecars) and ``bids_out`` (new, empty or isyb's
    own) are checked before anything is written; temporary files a killed run left are
    removed. ``release_policy``: the release policy file (None: isyb's default).
    """
    todo_all = check_dataset(bids_in, bids_out, labels)
    policy = load_release_policy(release_policy)
    items = classify_dataset(bids_in, policy)
    for path in sweep_partial(bids_out):
        log.warning("removed %s, left by an interrupted run", path)
    write_dataset_files(bids_in, bids_out, template, options, items)
    records: dict[str, SubjectRecord] = {}
    jobs: list[DatasetJob] = []
    for subject in todo_all:
        job = DatasetJob(bids_in, bids_out, subject, template, options, release_policy)
        path = record_path(bids_out, subject)
        stamps = input_stamps(i for i in items if i.relative.startswith(f"sub-{subject}/"))
        done = _finished(path, stamps, options_key(job, policy))
        if done is not None:
            records[subject] = done
            continue
        if path.is_file():
            log.info("sub-%s: redone (it failed, or what it was made from changed)",
                     subject)
        jobs.append(job)
    if len(jobs) < len(todo_all):
        log.info("%d subject(s) already finished, skipped", len(todo_all) - len(jobs))
    for record in run_tasks(run_subject, jobs, executor or ExecutorOptions(),
                            progress=progress, desc="defacing"):
        records[record["subject"]] = record
    ordered = [records[s] for s in todo_all]
    write_summary(derivatives_dir(bids_out) / "index.html", ordered, derivatives_dir(bids_out))
    return ordered
