"""Dataset mode of ``isyb qc``: every T1w, T2w and BOLD run of a BIDS dataset.

``participant`` level, per run, under ``OUT_DIR/derivatives/isyb/`` with the
run's folder layout and BIDS-derivatives names (``<entities>`` is the run's
name without its suffix, e.g. ``sub-01_task-rest``)::

    <entities>_desc-qc_<suffix>.json       metrics, or the error of a failed run
    <entities>_desc-qc_<suffix>.html       per-run report (self-contained)
    <entities>_desc-qc_timeseries.tsv      BOLD only: motion, FD and DVARS per frame

``group`` level, in ``OUT_DIR/derivatives/isyb/``: ``group_T1w.tsv``,
``group_T2w.tsv`` (when there are T2w runs), ``group_bold.tsv``,
``exclusions.tsv`` (:mod:`isyb.qc.rules`) and ``group_qc.html``.

A run whose JSON exists and was computed from an input of the same size and
modification time is not recomputed (a rerun resumes). A run that fails is
recorded with its error, the other runs go on, and the group report lists
the failure. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from isyb import __version__
from isyb.bids.layout import source_dataset
from isyb.errors import IsybError
from isyb.io import atomic_path, strip_image_suffix, write_text
from isyb.qc.rules import ExclusionRules, exclusion_reasons, exclusions

DERIVATIVES = Path("derivatives") / "isyb"
ANAT_SUFFIXES = ("T1w", "T2w")
BOLD_SUFFIX = "bold"
NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class QCRun:
    """One image of the dataset that QC measures."""

    path: Path
    relative: Path
    participant_id: str
    suffix: str

    @property
    def bids_name(self) -> str:
        """The file name without extension, as MRIQC's ``bids_name`` column."""
        return Path(strip_image_suffix(self.relative.name)).name

    @property
    def modality(self) -> str:
        return self.suffix

    def output(self, out_dir: Path, kind: str, extension: str) -> Path:
        """``<entities>_desc-qc_<kind><extension>`` beside the run, under the derivatives."""
        entities = self.bids_name[: -len(self.suffix) - 1]
        name = f"{entities}_desc-qc_{kind}{extension}"
        return out_dir / DERIVATIVES / self.relative.parent / name


def find_runs(bids_dir: Path, labels: Iterable[str] | None = None) -> list[QCRun]:
    """T1w, T2w (``anat/``) and BOLD (``func/``) NIfTI runs of ``bids_dir``, sorted."""
    if not (bids_dir / "dataset_description.json").is_file():
        raise IsybError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    subjects = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
    if labels is not None:
        wanted = [f"sub-{label.removeprefix('sub-')}" for label in labels]
        missing = [w for w in wanted if w not in subjects]
        if missing:
            raise IsybError(f"participant label(s) not found in {bids_dir}: {', '.join(missing)}")
        subjects = wanted
    runs = []
    for subject in subjects:
        for path in sorted((bids_dir / subject).rglob("*")):
            if not path.is_file() or not path.name.endswith(NIFTI):
                continue
            suffix = Path(strip_image_suffix(path.name)).name.rsplit("_", 1)[-1]
            folder = path.parent.name
            if (folder == "anat" and suffix in ANAT_SUFFIXES) or \
                    (folder == "func" and suffix == BOLD_SUFFIX):
                runs.append(QCRun(path, path.relative_to(bids_dir), subject, suffix))
    return runs


def _entities(name: str) -> tuple[dict[str, str], str]:
    parts = name.split("_")
    return dict(p.split("-", 1) for p in parts[:-1] if "-" in p), parts[-1]


def sidecar_metadata(bids_dir: Path, run: QCRun) -> dict:
    """The run's JSON metadata with BIDS inheritance (top level first, the run's own last).

    A JSON file applies when it sits in the dataset root or in a folder above
    the run, has the run's suffix, and its entities are a subset of the run's.
    """
    entities, suffix = _entities(run.bids_name)
    folders = [bids_dir] + [bids_dir / Path(*run.relative.parts[:i])
                            for i in range(1, len(run.relative.parts))]
    merged: dict = {}
    for folder in folders:
        for candidate in sorted(folder.glob(f"*{suffix}.json")):
            found, found_suffix = _entities(candidate.name[: -len(".json")])
            if found_suffix == suffix and all(entities.get(k) == v for k, v in found.items()):
                try:
                    merged.update(json.loads(candidate.read_text()))
                except (OSError, json.JSONDecodeError) as exc:
                    raise IsybError(f"{candidate}: cannot be read as JSON ({exc})") from None
    return merged


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _finished(json_path: Path, stamp: dict, fd_threshold: float) -> dict | None:
    """The run's record if it was computed by this isyb version from the same input."""
    try:
        record = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = record.get("input") == stamp and record.get("isyb_version") == __version__ \
        and record.get("fd_threshold_mm", fd_threshold) == fd_threshold
    return record if same else None


@dataclass(frozen=True)
class ParticipantJob:
    bids_dir: Path
    out_dir: Path
    run: QCRun
    fd_threshold: float
    threads: int = 1


def run_participant_job(job: ParticipantJob) -> dict:
    """QC one run: write its JSON (metrics or error), frames TSV and HTML page."""
    from isyb.qc.report import write_run_page

    _limit_threads(job.threads)
    run = job.run
    record = {"bids_name": run.bids_name, "participant_id": run.participant_id,
              "modality": run.modality, "source": str(run.relative),
              "input": _stamp(run.path), "isyb_version": __version__}
    try:
        if run.suffix == BOLD_SUFFIX:
            result, figures = _bold(job)
        else:
            result, figures = _anat(job)
        record.update(status="ok", **result)
        page = run.output(job.out_dir, run.suffix, ".html")
        write_run_page(page, record, figures)
        record["report"] = page.name
    except IsybError as exc:
        message = str(exc)
        for path in (str(run.path.resolve()), str(run.path)):  # no local path in the records
            message = message.replace(path, run.relative.as_posix())
        record.update(status="failed", error=" ".join(message.split()))
    write_text(run.output(job.out_dir, run.suffix, ".json"),
               json.dumps(record, indent=2, default=_json_default) + "\n")
    return record


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if not math.isfinite(value) else float(value)
    raise TypeError(f"not JSON serializable: {type(value)}")


def _anat(job: ParticipantJob) -> tuple[dict, dict]:
    from isyb.io import load_volume
    from isyb.qc.anat import anat_metrics
    from isyb.qc.masks import anat_masks
    from isyb.qc.report import anat_figures

    volume = load_volume(job.run.path)
    masks = anat_masks(volume.data, volume.zooms, contrast=job.run.suffix)
    metrics = anat_metrics(volume.data, volume.zooms, contrast=job.run.suffix, masks=masks)
    result = {"metrics": metrics, "noise_source": masks.noise_source}
    if masks.note:
        result["note"] = masks.note
    return result, anat_figures(volume.data, volume.zooms, masks)


def _bold(job: ParticipantJob) -> tuple[dict, dict]:
    from isyb.io import load_image
    from isyb.qc.bold import BoldInputError, repetition_time, run_bold_qc
    from isyb.qc.report import bold_figures

    image = load_image(job.run.path, allow_4d=True)
    if len(image.shape) != 4 or image.shape[3] < 2:
        raise BoldInputError(f"{job.run.relative}: expected a 4-D BOLD series, got shape "
                             f"{image.shape}")
    metadata = sidecar_metadata(job.bids_dir, job.run)
    tr = repetition_time(image.header, metadata)
    series = np.asarray(image.dataobj, dtype=np.float32)
    qc = run_bold_qc(series, image.header.get_zooms()[:3], tr, fd_threshold=job.fd_threshold)
    tsv = job.run.output(job.out_dir, "timeseries", ".tsv")
    with atomic_path(tsv) as tmp:
        pd.DataFrame(qc.table).to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    metrics = {k: (float(v) if isinstance(v, float | np.floating) else int(v))
               for k, v in qc.metrics.items()}
    result = {"metrics": metrics, "tr_s": tr, "fd_threshold_mm": job.fd_threshold,
              "timeseries": tsv.name}
    return result, bold_figures(qc, job.fd_threshold)


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def write_description(out_dir: Path, bids_dir: Path) -> None:
    """``derivatives/isyb/dataset_description.json``, unless one is already there."""
    path = out_dir / DERIVATIVES / "dataset_description.json"
    if path.is_file():
        return
    description = {
        "Name": "isyb quality control",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "isyb", "Version": __version__,
                         "Description": "image quality metrics (isyb qc)"}],
        "SourceDatasets": [source_dataset(bids_dir, json.loads(
            (bids_dir / "dataset_description.json").read_text()))],
    }
    write_text(path, json.dumps(description, indent=2) + "\n")


def qc_participants(bids_dir: Path, out_dir: Path, *, labels: Iterable[str] | None = None,
                    fd_threshold: float = 0.2, nprocs: int = 1,
                    progress: bool = True) -> list[dict]:
    """Participant level: QC every run (resuming finished ones); return their records."""
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if bids_dir.resolve() == out_dir.resolve():
        raise IsybError(f"{out_dir}: OUT_DIR must differ from BIDS_DIR")
    runs = find_runs(bids_dir, labels)
    if not runs:
        raise IsybError(f"{bids_dir}: no T1w, T2w or BOLD NIfTI runs found")
    write_description(out_dir, bids_dir)
    records: dict[Path, dict] = {}
    todo = []
    for run in runs:
        done = _finished(run.output(out_dir, run.suffix, ".json"), _stamp(run.path), fd_threshold)
        if done is not None:
            records[run.relative] = done
        else:
            todo.append(run)
    if len(todo) < len(runs):
        print(f"isyb: {len(runs) - len(todo)} run(s) already measured, skipped", file=sys.stderr)
    nprocs = max(1, min(nprocs, len(todo) or 1))
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    jobs = [ParticipantJob(bids_dir, out_dir, run, fd_threshold, threads) for run in todo]
    bar = tqdm(total=len(jobs), desc="qc", unit="run", disable=not progress, file=sys.stderr)
    if nprocs == 1:
        for job in jobs:
            records[job.run.relative] = run_participant_job(job)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=nprocs) as pool:
            futures = {pool.submit(run_participant_job, job): job for job in jobs}
            for future in as_completed(futures):
                records[futures[future].run.relative] = future.result()
                bar.update()
    bar.close()
    return [records[run.relative] for run in runs]


GROUP_FILES = {"T1w": "group_T1w.tsv", "T2w": "group_T2w.tsv", "bold": "group_bold.tsv"}


def read_records(out_dir: Path) -> list[dict]:
    """Every participant-level QC record under ``OUT_DIR/derivatives/isyb``, sorted."""
    root = out_dir / DERIVATIVES
    pattern = re.compile(r"_desc-qc_(T1w|T2w|bold)\.json$")
    records = []
    for path in sorted(root.glob("sub-*/**/*_desc-qc_*.json")):
        if pattern.search(path.name):
            records.append(json.loads(path.read_text()))
    return records


def group_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """One table per modality: ``bids_name``, ``participant_id`` and every metric."""
    tables = {}
    for modality in GROUP_FILES:
        rows = [{"bids_name": r["bids_name"], "participant_id": r["participant_id"],
                 **r["metrics"]} for r in records
                if r["modality"] == modality and r.get("status") == "ok"]
        if rows:
            tables[modality] = pd.DataFrame(rows).sort_values("bids_name", ignore_index=True)
    return tables


def qc_group(out_dir: Path, rules: ExclusionRules, *, bids_dir: Path | None = None) -> dict:
    """Group level: tables, exclusions and the group report from the participant records."""
    from isyb.qc.report import write_group_report

    out_dir = Path(out_dir)
    records = read_records(out_dir)
    if not records:
        raise IsybError(f"{out_dir / DERIVATIVES}: no participant-level QC records; run the "
                        "participant level first")
    root = out_dir / DERIVATIVES
    tables = group_tables(records)
    reasons = [exclusion_reasons(table, modality, rules) for modality, table in tables.items()]
    reason_table = pd.concat(reasons, ignore_index=True) if reasons else \
        exclusion_reasons(pd.DataFrame(columns=["bids_name", "participant_id"]), "", rules)
    excluded = exclusions(reason_table)
    written = []
    for modality, table in tables.items():
        path = root / GROUP_FILES[modality]
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        written.append(path)
    with atomic_path(root / "exclusions.tsv") as tmp:
        excluded.to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    failures = [r for r in records if r.get("status") != "ok"]
    report = root / "group_qc.html"
    write_group_report(report, tables, reason_table, failures, rules)
    return {"tables": [str(p) for p in written], "exclusions": str(root / "exclusions.tsv"),
            "report": str(report), "runs": len(records), "failed": len(failures),
            "excluded_runs": len(excluded)}
