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
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from isyb import __version__
from isyb.bids.layout import (
    BIDSFile,
    collect_participants,
    collect_runs,
    derivatives_dir,
    describe_derivatives,
    file_stamp,
    metadata,
    unchanged_record,
)
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, run_tasks
from isyb.io import atomic_path, check_output_folder, write_text
from isyb.qc.rules import ExclusionRules, exclusion_reasons, exclusions

log = logging.getLogger(__name__)

#: The runs QC measures: datatype folder -> suffixes.
QC_RUNS = {"anat": ("T1w", "T2w"), "func": ("bold",)}
BOLD_SUFFIX = "bold"
#: This command's ``GeneratedBy`` entry in ``derivatives/isyb/dataset_description.json``.
GENERATED_BY = {"Name": "isyb", "Version": __version__,
                "Description": "image quality metrics (isyb qc)"}


def find_runs(bids_dir: Path, labels: Iterable[str] | None = None) -> list[BIDSFile]:
    """T1w, T2w (``anat/``) and BOLD (``func/``) NIfTI runs of ``bids_dir``, sorted."""
    return collect_runs(bids_dir, collect_participants(bids_dir, labels), QC_RUNS)


def run_output(run: BIDSFile, out_dir: Path, kind: str, extension: str) -> Path:
    """``<entities>_desc-qc_<kind><extension>`` beside the run, under the derivatives
    (``<entities>`` is the run's name without its suffix)."""
    entities = run.bids_name[: -len(run.suffix) - 1]
    return run.derivative(out_dir, f"{entities}_desc-qc_{kind}{extension}")


def _finished(json_path: Path, stamp: dict, fd_threshold: float) -> dict | None:
    """The run's record if it was computed by this isyb version from the same input (and
    FD threshold, for the records that have one)."""
    record = unchanged_record(json_path, {"input": stamp})
    same = record is not None and record.get("fd_threshold_mm", fd_threshold) == fd_threshold
    return record if same else None


@dataclass(frozen=True)
class ParticipantJob:
    """One run to measure: where it lies, where its outputs go, the FD threshold (mm).

    ``metadata_dir`` is the dataset whose sidecars describe the run when it is not
    ``bids_dir``: a release measures its released copies before their top-level
    sidecars are written, so it reads the technical metadata from the source.
    """

    bids_dir: Path
    out_dir: Path
    run: BIDSFile
    fd_threshold: float
    metadata_dir: Path | None = None


def run_participant_job(job: ParticipantJob) -> dict:
    """QC one run: write its JSON (metrics or error), frames TSV and HTML page."""
    from isyb.qc.report import write_run_page

    run = job.run
    record = {"bids_name": run.bids_name, "participant_id": run.participant_id,
              "modality": run.suffix, "source": str(run.relative),
              "input": file_stamp(run.path), "isyb_version": __version__}
    try:
        if run.suffix == BOLD_SUFFIX:
            result, figures = _bold(job)
        else:
            result, figures = _anat(job)
        record.update(status="ok", **result)
        page = run_output(run, job.out_dir, run.suffix, ".html")
        write_run_page(page, record, figures)
        record["report"] = page.name
    except IsybError as exc:
        message = str(exc)
        for path in (str(run.path.resolve()), str(run.path)):  # no local path in the records
            message = message.replace(path, run.relative.as_posix())
        record.update(status="failed", error=" ".join(message.split()))
    write_text(run_output(run, job.out_dir, run.suffix, ".json"),
               json.dumps(record, indent=2, default=_json_default) + "\n")
    return record


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if not math.isfinite(value) else float(value)
    raise TypeError(f"not JSON serializable: {type(value)}")


def _anat(job: ParticipantJob) -> tuple[dict, dict[str, bytes]]:
    from isyb.qc.anat import qc_anat
    from isyb.qc.report import anat_figures

    qc = qc_anat(job.run.path, contrast=job.run.suffix)
    result = {"metrics": qc.metrics, "noise_source": qc.masks.noise_source}
    if qc.masks.note:
        result["note"] = qc.masks.note
    return result, anat_figures(qc.volume.data, qc.volume.zooms, qc.masks)


def _bold(job: ParticipantJob) -> tuple[dict, dict[str, bytes]]:
    from isyb.qc.bold import qc_bold
    from isyb.qc.report import bold_figures

    run = job.run
    source = job.metadata_dir or job.bids_dir
    qc = qc_bold(run.path, fd_threshold=job.fd_threshold,
                 metadata=metadata(source, source / run.relative))
    tsv = run_output(run, job.out_dir, "timeseries", ".tsv")
    qc.save_frames(tsv)
    result = {"metrics": qc.json_metrics(), "tr_s": qc.tr_s,
              "fd_threshold_mm": job.fd_threshold, "timeseries": tsv.name}
    if qc.motion_note:
        result["note"] = qc.motion_note
    return result, bold_figures(qc, job.fd_threshold)


def qc_participants(bids_dir: Path, out_dir: Path, *, labels: Iterable[str] | None = None,
                    fd_threshold: float = 0.2, executor: ExecutorOptions | None = None,
                    progress: bool = True) -> list[dict]:
    """Participant level: QC every run (resuming finished ones); return their records.

    ``executor`` says where the runs go (default: one after the other, here).
    """
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if bids_dir.resolve() == out_dir.resolve():
        raise IsybError(f"{out_dir}: OUT_DIR must differ from BIDS_DIR")
    check_output_folder(out_dir, ours=True)  # not a file, nor under one
    runs = find_runs(bids_dir, labels)
    if not runs:
        raise IsybError(f"{bids_dir}: no T1w, T2w or BOLD NIfTI runs found")
    describe_derivatives(out_dir, bids_dir, name="isyb quality control",
                         generated_by=GENERATED_BY)
    records: dict[str, dict] = {}
    todo = []
    for run in runs:
        done = _finished(run_output(run, out_dir, run.suffix, ".json"), file_stamp(run.path),
                         fd_threshold)
        if done is not None:
            records[str(run.relative)] = done
        else:
            todo.append(run)
    if len(todo) < len(runs):
        log.info("%d run(s) already measured, skipped", len(runs) - len(todo))
    jobs = [ParticipantJob(bids_dir, out_dir, run, fd_threshold) for run in todo]
    for record in run_tasks(run_participant_job, jobs, executor or ExecutorOptions(),
                            progress=progress, desc="qc"):
        records[record["source"]] = record
    return [records[str(run.relative)] for run in runs]


GROUP_FILES = {"T1w": "group_T1w.tsv", "T2w": "group_T2w.tsv", "bold": "group_bold.tsv"}


def read_records(out_dir: Path) -> list[dict]:
    """Every participant-level QC record under ``OUT_DIR/derivatives/isyb``, sorted."""
    root = derivatives_dir(out_dir)
    pattern = re.compile(r"_desc-qc_(T1w|T2w|bold)\.json$")
    records = []
    for path in sorted(root.glob("sub-*/**/*_desc-qc_*.json")):
        if pattern.search(path.name):
            records.append(json.loads(path.read_text()))
    return records


def group_tables(records: list[dict]) -> dict[str, pd.DataFrame]:
    """One table per modality: ``bids_name``, ``participant_id``, every metric and, for
    T1w/T2w, each run's ``noise_source``."""
    tables = {}
    for modality in GROUP_FILES:
        rows = [{"bids_name": r["bids_name"], "participant_id": r["participant_id"],
                 **({"noise_source": r["noise_source"]} if "noise_source" in r else {}),
                 **r["metrics"]} for r in records
                if r["modality"] == modality and r.get("status") == "ok"]
        if rows:
            tables[modality] = pd.DataFrame(rows).sort_values("bids_name", ignore_index=True)
    return tables


def qc_group(out_dir: Path, rules: ExclusionRules) -> dict:
    """Group level: tables, exclusions and the group report from the participant records."""
    from isyb.qc.report import write_group_report

    out_dir = Path(out_dir)
    records = read_records(out_dir)
    if not records:
        raise IsybError(f"{derivatives_dir(out_dir)}: no participant-level QC records; run the "
                        "participant level first")
    root = derivatives_dir(out_dir)
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
