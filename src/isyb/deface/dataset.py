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
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from isyb import __version__
from isyb.bids.layout import source_dataset
from isyb.deface.engine import DefaceOptions
from isyb.deface.report import write_summary
from isyb.errors import IsybError
from isyb.io import IMAGE_SUFFIXES, atomic_path, strip_image_suffix, write_text
from isyb.templates.registry import Template

DERIVATIVES = Path("derivatives") / "isyb"


@dataclass(frozen=True)
class DatasetJob:
    """What one subject needs: paths, the prepared template and the options."""

    bids_in: Path
    bids_out: Path
    subject: str
    template: Template
    options: DefaceOptions
    threads: int = 1


def is_image(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def subjects(bids_in: Path, labels: Iterable[str] | None = None) -> list[str]:
    """Subject labels (without ``sub-``) present in ``bids_in``, optionally filtered."""
    found = sorted(p.name[4:] for p in bids_in.glob("sub-*") if p.is_dir())
    if labels is None:
        return found
    wanted = [label.removeprefix("sub-") for label in labels]
    missing = [label for label in wanted if label not in found]
    if missing:
        raise IsybError(f"participant label(s) not found in {bids_in}: {', '.join(missing)}")
    return wanted


def check_dataset(bids_in: Path, bids_out: Path) -> None:
    """Refuse inputs that are not BIDS datasets and outputs that overlap the input."""
    if not (bids_in / "dataset_description.json").is_file():
        raise IsybError(f"{bids_in}: not a BIDS dataset (no dataset_description.json)")
    a, b = bids_in.resolve(), bids_out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise IsybError(f"{bids_out}: the output folder must not be inside the input or "
                        "contain it")


def copy_file(source: Path, target: Path) -> None:
    """Copy a file (following symlinks) atomically, unless an identical copy exists."""
    if target.is_file() and target.stat().st_size == source.stat().st_size \
            and target.stat().st_mtime >= source.stat().st_mtime:
        return
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
        shutil.copystat(source, tmp)


def _derivative_stem(bids_out: Path, relative: Path) -> Path:
    return bids_out / DERIVATIVES / relative.parent / Path(strip_image_suffix(relative.name)).name


def record_path(bids_out: Path, subject: str) -> Path:
    return bids_out / DERIVATIVES / "logs" / f"sub-{subject}.json"


def _subject_files(bids_in: Path, subject: str) -> Iterator[Path]:
    for path in sorted((bids_in / f"sub-{subject}").rglob("*")):
        if path.is_file():
            yield path


def run_subject(job: DatasetJob) -> dict:
    """Copy one subject and deface its anatomical images; write its record last."""
    from isyb.deface.file import deface_file

    _limit_threads(job.threads)
    images: list[dict] = []
    for source in _subject_files(job.bids_in, job.subject):
        relative = source.relative_to(job.bids_in)
        target = job.bids_out / relative
        if not (source.parent.name == "anat" and is_image(source)):
            copy_file(source, target)
            continue
        stem = _derivative_stem(job.bids_out, relative)
        entry = {"file": str(relative)}
        try:
            provenance = deface_file(
                source, target, job.template, job.options, force=True,
                save_mask=f"{stem}_desc-deface_mask.nii.gz",
                provenance_path=f"{stem}_desc-deface_provenance.json",
                png_path=f"{stem}_desc-deface_qc.png",
                recorded_as={"input": relative.as_posix(), "output": relative.as_posix(),
                             "qc_png": Path(f"{stem}_desc-deface_qc.png").relative_to(
                                 job.bids_out / DERIVATIVES).as_posix()},
            )
            entry.update(status="ok", provenance=provenance)
        except IsybError as exc:
            entry.update(status="failed", error=_relative_message(exc, source, relative))
            target.unlink(missing_ok=True)
        images.append(entry)
    record = {"subject": job.subject, "images": images, "isyb_version": __version__}
    write_text(record_path(job.bids_out, job.subject), json.dumps(record, indent=2) + "\n")
    return record


def _relative_message(error: Exception, source: Path, relative: Path) -> str:
    """The error's message with the input's local path replaced by its dataset path."""
    message = str(error)
    for path in (str(source.resolve()), str(source)):
        message = message.replace(path, relative.as_posix())
    return message


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, threads))


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
    source_name = json.loads((bids_in / "dataset_description.json").read_text()).get("Name", "")
    description = {
        "Name": f"isyb defacing of {source_name}".strip(),
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "isyb", "Version": __version__,
                         "Description": f"face masking, template {template.name}, "
                                        f"method {options.method}, "
                                        f"face region {options.face_region}"}],
        "SourceDatasets": [source_dataset(bids_in, json.loads(
            (bids_in / "dataset_description.json").read_text()))],
    }
    write_text(bids_out / DERIVATIVES / "dataset_description.json",
               json.dumps(description, indent=2) + "\n")


def deface_dataset(bids_in: Path, bids_out: Path, template: Template, options: DefaceOptions,
                   *, labels: Iterable[str] | None = None, nprocs: int = 1,
                   progress: bool = True) -> list[dict]:
    """Deface a BIDS dataset into ``bids_out``; return one record per subject."""
    check_dataset(bids_in, bids_out)
    todo_all = subjects(bids_in, labels)
    write_dataset_files(bids_in, bids_out, template, options)
    records: dict[str, dict] = {}
    todo = []
    for subject in todo_all:
        done = record_path(bids_out, subject)
        if done.is_file():
            records[subject] = json.loads(done.read_text())
        else:
            todo.append(subject)
    if len(todo) < len(todo_all):
        print(f"isyb: {len(todo_all) - len(todo)} subject(s) already finished, skipped",
              file=sys.stderr)
    nprocs = max(1, min(nprocs, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    jobs = [DatasetJob(bids_in, bids_out, s, template, options, threads) for s in todo]
    bar = tqdm(total=len(jobs), desc="defacing", unit="subject", disable=not progress,
               file=sys.stderr)
    if nprocs == 1:
        for job in jobs:
            records[job.subject] = run_subject(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=nprocs) as pool:
            futures = [pool.submit(run_subject, job) for job in jobs]
            for future in as_completed(futures):
                record = future.result()
                records[record["subject"]] = record
                bar.update()
    bar.close()
    ordered = [records[s] for s in todo_all]
    write_summary(bids_out / DERIVATIVES / "index.html", ordered, bids_out / DERIVATIVES)
    return ordered
