"""Dataset mode of ``isyb derive``: derived metrics of every run, then group maps.

``participant`` level, per subject (``<entities>`` is a run's name without
its suffix, e.g. ``sub-01_task-rest``), under ``OUT_DIR/derivatives/isyb/``
in the run's folder:

* ``<entities>_desc-<metric>_map.nii.gz``: the metric in the run's own space
  (ALFF, fALFF, ReHo from BOLD; FA, MD from DWI; CBF from ASL);
* ``<entities>_space-<TPL>_desc-<metric>_map.nii.gz`` and
  ``..._desc-<metric>z_map.nii.gz``: in template space, and z-scored within
  the template's brain mask (VMHC exists only in template space);
* ``<entities>_desc-derive_<suffix>.json``: what was done, summaries
  (FA-WM, FA-GM, MD-WM, MD-GM; CBF in grey matter; timings), or the error.
* with ``--freesurfer-dir``: ``<subject>_desc-surface_metrics.tsv`` (thickness,
  area, volume, LGI per aparc region, read from FreeSurfer's files);
* with ``--anatomy``, for subjects with a T1w and no FreeSurfer outputs
  (those stay preferred): ``<subject>_desc-thickness_map.nii.gz``,
  ``<subject>_desc-anatomy_metrics.tsv`` (mean CT, total GMV) and
  ``<subject>_desc-aparcaseg_metrics.tsv`` (GMV per ``aparc+aseg`` region;
  :func:`anatomy_outputs`). A failure there is logged; the runs' records
  stand.

Template space needs the subject's T1w: brain (deepbet), tissues
(:func:`isyb.head.tissue.segment_tissues`), normalisation to the template
(:mod:`isyb.derive.normalize`, SyN by default; :mod:`isyb.derive.anatomy`),
and each run co-registered to the T1w (rigid; :mod:`isyb.derive.processors`).
The T1w's white-matter and CSF masks, brought into BOLD space, give the
nuisance signals; its WM and GM, brought into DWI and ASL space, give the
tissue summaries. Normalisation and tissue files are cached in
``WORK_DIR/sub-<label>/`` and reused by reruns.

``group`` level, in ``OUT_DIR/derivatives/isyb/group/``: per metric the
voxel-wise mean and SD over runs (:func:`isyb.derive.group.group_mean_sd`,
within the voxels valid in every run), the mask, and a figure of both on
fsaverage5 (the ``--anatomy`` thickness maps too, when at least two subjects
have one); ``group_derive.tsv`` collects the per-run summaries,
``group_surface_metrics.tsv`` the FreeSurfer region summaries,
``group_anatomy_metrics.tsv`` and ``group_aparcaseg_metrics.tsv`` the
``--anatomy`` tables.

A run whose JSON exists and was made from the same input, options and isyb
version is skipped (a rerun resumes). A run that fails on bad input is
recorded with its one-line error, and the other runs go on. Every file is
written atomically. Subjects run as tasks of :func:`isyb.executor.run_tasks`
(local processes or Dask, with its thread policy); subjects, runs and
sidecars come from :mod:`isyb.bids.layout`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
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
    unchanged_record,
)
from isyb.derive.anatomy import AnatomySource, load_ras, load_template, save_map
from isyb.derive.options import (
    ANATOMY_MAPS,
    DEFAULT_SPACE,
    METRICS,
    UNITS,
    DeriveInputError,
    DeriveOptions,
    parse_metrics,
)
from isyb.derive.processors import PROCESSORS, RUN_METRICS, RunJob, Subject, run_output
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, Steps, run_tasks
from isyb.io import atomic_path, check_output_folder, sweep_partial, write_text

LOG = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SPACE",
    "METRICS",
    "DeriveInputError",
    "DeriveOptions",
    "RunJob",
    "Subject",
    "derive_group",
    "derive_participants",
    "find_subjects",
    "load_ras",
    "parse_metrics",
    "read_records",
    "run_subject",
    "scan_subject",
    "summary_table",
]

#: Datatype folders ``derive`` reads and their run suffix (the T1w comes from ``anat``).
RUN_FOLDERS = {"func": "bold", "dwi": "dwi", "perf": "asl"}
#: This command's ``GeneratedBy`` entry in ``derivatives/isyb/dataset_description.json``.
GENERATED_BY = {"Name": "isyb", "Version": __version__,
                "Description": "derived metrics (isyb derive)"}


def scan_subject(root: Path, name: str) -> Subject:
    """The T1w (the first, if any) and the BOLD/DWI/ASL runs of ``root/<name>``
    (``name`` is ``sub-<label>``)."""
    wanted = {"anat": ("T1w",), **{folder: (suffix,) for folder, suffix in RUN_FOLDERS.items()}}
    found = collect_runs(root, [name.removeprefix("sub-")], wanted)
    t1w = next((item.path for item in found if item.datatype == "anat"), None)
    return Subject(name, t1w, tuple(item for item in found if item.datatype != "anat"))


def find_subjects(bids_dir: Path, labels: Iterable[str] | None = None) -> list[Subject]:
    """Subjects of ``bids_dir`` (all, or ``labels``) with their T1w and BOLD/DWI/ASL runs,
    sorted; an unknown label is an error naming it."""
    return [scan_subject(bids_dir, f"sub-{label}")
            for label in collect_participants(bids_dir, labels)]


def _finished(path: Path, stamp: dict, options: DeriveOptions) -> dict | None:
    return unchanged_record(path, {"input": stamp, "options_key": options.key()})



def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"not JSON serializable: {type(value)}")



def _record_path(run: BIDSFile, out_dir: Path) -> Path:
    return run_output(run, out_dir, "derive", run.suffix, ".json")


def _clean_message(message: str, bids_dir: Path) -> str:
    """One line, with paths relative to the dataset (no local paths in the records)."""
    for root in (str(bids_dir.resolve()), str(bids_dir)):
        message = message.replace(root.rstrip("/") + "/", "")
    return " ".join(message.split())


def _wanted(job: RunJob) -> list:
    """The subject's runs that yield at least one of the wanted metrics."""
    return [run for run in job.subject.runs
            if set(RUN_METRICS[run.suffix]) & set(job.options.metrics)]


@dataclass(frozen=True)
class _RunsDone:
    """Runs of a subject whose record was written since ``since_ns`` (progress bar)."""

    since_ns: int

    def __call__(self, job: RunJob) -> int:
        count = 0
        for run in _wanted(job):
            path = _record_path(run, job.out_dir)
            count += path.is_file() and path.stat().st_mtime_ns >= self.since_ns
        return count


def run_subject(job: RunJob) -> list[dict]:
    """Derive every wanted metric of one subject's runs; write one JSON record per run.

    Runs whose record is up to date (same input, options and isyb version) are
    not redone; their records are returned as they are.
    """
    subject, options = job.subject, job.options
    wanted = _wanted(job)
    todo = [run for run in wanted
            if _finished(_record_path(run, job.out_dir), file_stamp(run.path), options) is None]
    records = [json.loads(_record_path(run, job.out_dir).read_text())
               for run in wanted if run not in todo]
    if not todo:
        return records
    template = load_template(options)
    source = AnatomySource(subject.t1w, job.work / subject.label, template, options)
    for run in todo:
        record = {"bids_name": run.bids_name, "participant_id": subject.label,
                  "modality": run.suffix, "source": str(run.relative),
                  "input": file_stamp(run.path), "isyb_version": __version__,
                  "options_key": options.key(), "space": options.space}
        start = time.perf_counter()
        try:
            record.update(status="ok", **PROCESSORS[run.suffix](run, job, source, template))
        except IsybError as exc:
            record.update(status="failed", error=_clean_message(str(exc), job.bids_dir))
        if source.anatomy is not None:
            record["anatomy_seconds"] = source.anatomy.seconds
        elif source.error is not None:
            record["anatomy_error"] = _clean_message(source.error, job.bids_dir)
        record["wall_s"] = round(time.perf_counter() - start, 2)
        write_text(_record_path(run, job.out_dir),
                   json.dumps(record, indent=2, default=_json_default) + "\n")
        records.append(record)
    if options.anatomy and not _has_freesurfer(options, subject.label):
        anatomy = source.get()
        try:
            if anatomy is not None:
                anatomy_outputs(anatomy, job.out_dir, subject.label, template, options.space)
        except IsybError as exc:
            LOG.warning("%s: anatomy without FreeSurfer failed: %s", subject.label, exc)
    return records


def _has_freesurfer(options: DeriveOptions, label: str) -> bool:
    return options.freesurfer_dir is not None and (Path(options.freesurfer_dir) / label).is_dir()


def anatomy_outputs(anatomy, out_dir: Path, label: str, template=None,
                    space: str = DEFAULT_SPACE) -> dict:
    """Anatomy without FreeSurfer (:mod:`isyb.derive.morphometry`) of a subject's T1w.

    Writes ``<label>_desc-thickness_map.nii.gz`` (DiReCT CT in mm, T1w space)
    and ``<label>_desc-anatomy_metrics.tsv`` (``mean_ct_mm``, ``gmv_ml`` of
    all GM, ``cortical_gmv_ml`` of the GM DiReCT measured, ``ct_region``) in
    the subject's ``anat`` folder; returns the table's row. With a
    ``template`` and the anatomy's normalisation, DiReCT measures the
    cerebral cortex as ``antsCorticalThickness.sh`` does
    (:mod:`isyb.derive.cortex`), and ``<label>_desc-aparcaseg_metrics.tsv``
    holds the GMV (ml) of each Desikan-Killiany cortical region, aseg
    subcortical GM structure, cerebellar cortex and the brainstem
    (:mod:`isyb.derive.regions`: ``participant_id``, ``index``, ``region``,
    ``structure``, ``gmv_ml``; its rows add up to ``gmv_ml``, its cortex rows
    to ``cortical_gmv_ml``); without them, or without the cortical atlas (a
    warning says why), DiReCT measures the whole three-tissue GM and there
    is no regional table. With a ``template``,
    also ``<label>_space-<space>_desc-thickness_map.nii.gz`` for the group maps:
    each non-GM voxel first takes the thickness of its nearest GM voxel, so
    the trilinear warp does not mix the cortex with zeros, and the result is
    kept where the template's GM probability is >= 0.5 (its brain mask for a
    template without tissue maps), outside the atlas's deep GM, brainstem and
    cerebellum when DiReCT measured the cerebral cortex.
    """
    from scipy import ndimage

    from isyb.derive.cortex import DEEP_GM, HINDBRAIN
    from isyb.derive.morphometry import cortical_thickness, gm_volumes, mean_thickness
    from isyb.derive.normalize import to_template
    from isyb.derive.regions import regional_gm_volumes

    zooms = np.sqrt((anatomy.affine[:3, :3] ** 2).sum(axis=0))
    start = time.perf_counter()
    direct = _direct_input(anatomy, template, label)
    labels, classes = direct.labels, direct.classes
    thickness = cortical_thickness(labels, zooms)
    row = {"participant_id": label, "mean_ct_mm": mean_thickness(thickness, labels),
           "gmv_ml": gm_volumes(anatomy.labels, zooms)["total"],
           "cortical_gmv_ml": gm_volumes(labels, zooms)["total"], "ct_region": direct.region,
           "method": "DiReCT (ANTs KellyKapowski) on isyb's CSF/GM/WM segmentation",
           "seconds": round(time.perf_counter() - start, 1)}
    folder = derivatives_dir(out_dir) / label / "anat"
    folder.mkdir(parents=True, exist_ok=True)
    save_map(thickness, anatomy.affine, folder / f"{label}_desc-thickness_map.nii.gz")
    if direct.regions is not None:
        table = regional_gm_volumes(anatomy.labels, direct.regions, zooms, direct.names)
        table.insert(0, "participant_id", label)
        with atomic_path(folder / f"{label}_desc-aparcaseg_metrics.tsv") as tmp:
            table.to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    if template is not None and anatomy.normalization is not None:
        _, nearest = ndimage.distance_transform_edt(thickness <= 0, return_indices=True)
        filled = thickness[tuple(nearest)]
        warped = to_template(filled, anatomy.affine, anatomy.normalization, template,
                             points=anatomy.template_points(template))
        cortex = template.gm >= 0.5 if np.any(template.gm) else template.brain_mask
        if classes is not None:  # not the deep GM, brainstem and cerebellum DiReCT left out
            cortex &= ~np.isin(classes, (DEEP_GM, HINDBRAIN))
        save_map(np.where(cortex, warped, 0.0), template.affine,
                 folder / f"{label}_space-{space}_desc-thickness_map.nii.gz")
    with atomic_path(folder / f"{label}_desc-anatomy_metrics.tsv") as tmp:
        pd.DataFrame([row]).to_csv(tmp, sep="\t", index=False, float_format="%.6g")
    return row


class _DirectInput(NamedTuple):
    """DiReCT's labels and what they hold; with the atlas, its classes on the template grid,
    the subject's GM regions and their names (:mod:`isyb.derive.regions`)."""

    labels: np.ndarray
    region: str
    classes: np.ndarray | None = None
    regions: np.ndarray | None = None
    names: dict | None = None


def _direct_input(anatomy, template, label: str) -> _DirectInput:
    """The cerebral cortex (:mod:`isyb.derive.cortex`) and the GM regions when the
    normalisation and the atlas allow it, else the three-tissue GM (and no atlas)."""
    from isyb.derive.cortex import (
        atlas_classes,
        cortical_segmentation,
        subject_classes,
        template_atlas,
    )
    from isyb.derive.morphometry import MorphometryError
    from isyb.derive.regions import atlas_names, subject_regions

    if template is None or anatomy.normalization is None:
        return _DirectInput(anatomy.labels, "all GM (no normalisation)")
    try:
        atlas = template_atlas(template)
        names = atlas_names()
        classes = atlas_classes(atlas)
        points = anatomy.template_points(template)
        subject = subject_classes(anatomy.labels, anatomy.affine, anatomy.normalization,
                                  template, classes=classes, points=points)
        regions = subject_regions(anatomy.labels, subject, anatomy.affine, points, atlas, names)
    except MorphometryError as exc:
        LOG.warning("%s: thickness of all GM, not the cerebral cortex, and no regional GMV: "
                    "%s", label, exc)
        return _DirectInput(anatomy.labels, f"all GM ({exc})")
    return _DirectInput(cortical_segmentation(anatomy.labels, subject), "cerebral cortex",
                        classes, regions, names)


def derive_participants(bids_dir: Path, out_dir: Path, *, work_dir: Path | None = None,
                        labels: Iterable[str] | None = None,
                        options: DeriveOptions | None = None,
                        executor: ExecutorOptions | None = None,
                        progress: bool = True) -> list[dict]:
    """Participant level for every subject (resuming finished runs); return the records.

    Bad input (not a BIDS dataset, an unknown label, no runs) and bad options
    (a template without symmetry for VMHC) raise before any subject starts; a
    run's bad input is recorded (``status: failed``) and the other runs go on.
    Subjects run as tasks of ``executor`` (local processes or Dask; default one local
    process). ``options`` default to :class:`DeriveOptions`'s. The temporary files a killed
    run left in these subjects' folders are removed first (only theirs: another subject's
    run may be writing its own).
    """
    options = options or DeriveOptions()
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if bids_dir.resolve() == out_dir.resolve():
        raise DeriveInputError(f"{out_dir}: OUT_DIR must differ from BIDS_DIR")
    check_output_folder(out_dir, ours=True)  # not a file, nor under one
    subjects = [s for s in find_subjects(bids_dir, labels) if s.runs]
    if not subjects:
        raise DeriveInputError(f"{bids_dir}: no BOLD, DWI or ASL runs found")
    load_template(options)  # fail early, once, on a template VMHC cannot use
    work = Path(work_dir) if work_dir is not None else out_dir / "work" / "derive"
    describe_derivatives(out_dir, bids_dir, name="isyb derived metrics",
                         generated_by=GENERATED_BY)
    if options.freesurfer_dir is not None:
        _surface_tables(Path(options.freesurfer_dir), [s.label for s in subjects], out_dir)
    for subject in subjects:
        for path in sweep_partial(derivatives_dir(out_dir) / subject.label):
            LOG.warning("removed %s, left by an interrupted run", path)
    jobs = [RunJob(bids_dir, out_dir, work, subject, options) for subject in subjects]
    records: list[dict] = []
    steps = Steps(lambda job: len(_wanted(job)), _RunsDone(time.time_ns()))
    for result in run_tasks(run_subject, jobs, executor or ExecutorOptions(), progress=progress,
                            desc="derive runs", steps=steps):
        records.extend(result)
    return sorted(records, key=lambda r: r["source"])


def _surface_tables(subjects_dir: Path, labels: list[str], out_dir: Path) -> None:
    """``<subject>_desc-surface_metrics.tsv`` per subject found in the FreeSurfer folder."""
    from isyb.derive.surface import read_surface_metrics

    if not subjects_dir.is_dir():
        raise DeriveInputError(f"{subjects_dir}: FreeSurfer subjects_dir not found")
    for label in labels:
        if not (subjects_dir / label).is_dir():
            continue
        table = read_surface_metrics(subjects_dir, label)
        path = derivatives_dir(out_dir) / label / "anat" / f"{label}_desc-surface_metrics.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")



def _finished_files(root: Path, pattern: str) -> list[Path]:
    """The files under ``root`` that match ``pattern``, sorted, without hidden names: the
    temporary files of :func:`isyb.io.atomic_path` (``.<name>.<random>.part<ext>``) match
    the same patterns, and one a killed run left is empty or a copy of a finished file."""
    return sorted(p for p in root.glob(pattern) if not p.name.startswith("."))


def read_records(out_dir: Path) -> list[dict]:
    """Every participant-level derive record under ``OUT_DIR/derivatives/isyb``, sorted."""
    root = derivatives_dir(out_dir)
    return [json.loads(p.read_text())
            for p in _finished_files(root, "sub-*/**/*_desc-derive_*.json")]


def summary_table(records: list[dict]) -> pd.DataFrame:
    """One row per run: status, the per-run summaries (tissue FA/MD, CBF, medians), error."""
    rows = []
    for record in records:
        row = {"bids_name": record["bids_name"], "participant_id": record["participant_id"],
               "modality": record["modality"], "status": record["status"]}
        row.update(record.get("summary", {}))
        if isinstance(record.get("tissue"), dict):
            row.update(record["tissue"])
        for key in ("cbf_gm_mean", "cbf_brain_mean", "wall_s"):
            if key in record:
                row[key] = record[key]
        row["error"] = record.get("error", "")
        rows.append(row)
    return pd.DataFrame(rows)


def derive_group(out_dir: Path, *, space: str = DEFAULT_SPACE,
                 metrics: tuple[str, ...] = METRICS) -> dict:
    """Group level: mean and SD maps per metric, their fsaverage5 figures, the summary table.

    Only finished participant files are read (never the temporary files of a killed or
    running participant run, which are left to the participant level to remove); the
    temporary files a killed group run left in the group folder are removed."""
    from isyb.derive.group import group_mean_sd, surface_figure

    out_dir = Path(out_dir)
    root = derivatives_dir(out_dir)
    records = read_records(out_dir)
    if not records:
        raise DeriveInputError(f"{root}: no participant-level derive records; run the "
                               "participant level first")
    group = root / "group"
    group.mkdir(parents=True, exist_ok=True)
    for path in sweep_partial(group):
        LOG.warning("removed %s, left by an interrupted run", path)
    table = summary_table(records)
    with atomic_path(group / "group_derive.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    result: dict = {"runs": len(records), "failed": int((table["status"] != "ok").sum()),
                    "metrics": {}}
    for kind in ("surface", "anatomy", "aparcaseg"):  # per-subject tables, stacked
        tables = _finished_files(root, f"sub-*/anat/*_desc-{kind}_metrics.tsv")
        if tables:
            with atomic_path(group / f"group_{kind}_metrics.tsv") as tmp:
                pd.concat([pd.read_csv(p, sep="\t") for p in tables]).to_csv(
                    tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
            result[f"{kind}_subjects"] = len(tables)
    for metric in (*metrics, *ANATOMY_MAPS):
        paths = _finished_files(root, f"sub-*/**/*_space-{space}_desc-{metric}_map.nii.gz")
        if len(paths) < 2:
            if paths:
                result["metrics"][metric] = f"only {len(paths)} run: no group map"
            continue
        images = [nib.load(str(p)) for p in paths]
        affine = images[0].affine
        maps = [np.asarray(i.dataobj, dtype=np.float32) for i in images]
        valid = [np.isfinite(m) & (m != 0) for m in maps]
        stats = group_mean_sd(maps, valid)
        stem = group / f"group_space-{space}_desc-{metric}"
        save_map(np.where(stats.mask, stats.mean, 0.0), affine, Path(f"{stem}mean_map.nii.gz"))
        save_map(np.where(stats.mask, stats.sd, 0.0), affine, Path(f"{stem}sd_map.nii.gz"))
        save_map(stats.mask.astype(np.float32), affine, Path(f"{stem}_mask.nii.gz"))
        figure = surface_figure(stats.mean, stats.sd, affine, group / f"group_desc-{metric}"
                                "_fsaverage5.png", title=f"{metric.upper()} (n = {stats.n})",
                                units=UNITS[metric])
        result["metrics"][metric] = {"n": stats.n, "mask_voxels": int(stats.mask.sum()),
                                     "figure": figure.name}
    write_text(group / "group_derive.json",
               json.dumps(result, indent=2, default=_json_default) + "\n")
    return result
