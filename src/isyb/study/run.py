"""Run the template-effect study: every subject × template, cached, then statistics.

The metrics of every subject × template pair (NMI, the changed fraction of
the face's skin surface) are computed over the subject's **evaluation
region** (:func:`isyb.evaluate.anonymization.evaluation_region`: the face
rule placed on the subject's own brain mask, minus the subject's 10 mm brain
guard), not over each defacing's applied mask: the voxel set must be the
same for every template of a subject, or the templates are not compared on
the same thing (``remove`` would score NMI 1 over its own mask, whatever face
it missed).

Work is cached under ``OUT_DIR/work/sub-<label>/``: the subject's brain mask,
evaluation region and original-face detection once (and, in memory, the
head, brain guard and face reference the defacing reads:
:func:`isyb.deface.engine.subject_masks`, and the subject on the
registration's working grid: :func:`registration_grid`), its registration to each
template (``registration/tpl-<name>.json``, keyed by the template's files: it
does not depend on the defacing, so a study with another method or design
on the same cohort registers nothing again), then per defacing
setting (:func:`work_name`: the method, plus the face-region mode and margin
when not the default ``rule``) and template a ``metrics.json`` (written
last), the face mask actually applied, the two face descriptors and the
original's re-identification distances (:mod:`isyb.study.reid_columns`). A
rerun, or a run with an added template or subject, computes only what is
missing; a ``metrics.json`` of another :data:`METRICS_VERSION` is recomputed.
A template that fails for a subject (registration, brain extraction) is
recorded as a failed pair and the run goes on; the statistics drop
incomplete subjects and say how many.

Subjects run as tasks of :func:`isyb.executor.run_tasks` (local processes or
Dask), which also sets each task's torch and ITK threads. A task rewrites its
files whole and atomically, so a retried task (a lost Dask worker) gives the
same outputs.

The face checks are optional (``isyb study --no-detectors``, ``--no-reid``):
the face detectors (stock detector on the original and the defaced head,
the 12-view ensemble on the defaced one; the stock detector's verdict on the
defaced head is read from the ensemble, which renders and judges its three
views the same way) and the geometric ones (face
distances, the defaced face's descriptor, re-identification). Their columns
are then empty. A cached record remembers which checks it holds; it serves a
run that asks for fewer (the others' columns are emptied, so the outputs do
not depend on what an earlier run computed) and is recomputed for one that
asks for more.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from isyb import __version__
from isyb.deface.engine import (
    Alignment,
    DefaceOptions,
    SubjectMasks,
    align,
    deface_volume,
    subject_masks,
)
from isyb.errors import IsybError
from isyb.evaluate.anonymization import evaluate_defacing, evaluation_region
from isyb.evaluate.ensemble import ensemble_detect
from isyb.evaluate.face_distance import face_distances
from isyb.evaluate.reid import (
    FaceFrame,
    face_descriptor,
    frame_for,
    frame_samples,
    identification_from_distances,
    samples_descriptor,
)
from isyb.executor import ExecutorOptions, run_tasks, shared_cluster
from isyb.head.brain import check_brain_mask, extract_brain
from isyb.head.morphology import bounding_box, skin_threshold
from isyb.head.register import Registration, SubjectGrid
from isyb.io import Volume, atomic_path, cast_like, load_volume, save_mask_like, write_text
from isyb.study.reid_columns import DISTANCE_CACHE, ReidColumn, reid_column
from isyb.templates.registry import Template
from isyb.viz.faces import face_detected

METRIC_COLUMNS = ("nmi", "face_surface_changed_fraction", "face_reference_changed_fraction",
                  "face_reference_lower_changed_fraction", "face_reference_guard_fraction",
                  "brain_changed_voxels",
                  "changed_voxels", "registration_score", "face_detected_original",
                  "face_detected_defaced", "face_distance_to_original_mm",
                  "face_distance_to_template_mm", "face_distance_original_to_template_mm",
                  "reid_rank", "reid_rank1", "ensemble_views_with_face_defaced")
#: Version of the metric definitions in ``metrics.json``; other versions are recomputed.
#: 2: NMI and face-surface fraction over the subject's evaluation region.
#: 3: face distances to the original and the template, the defaced face descriptor, and
#: the face-detector ensemble on the defaced head.
#: 4: the template-independent face reference's fractions (issue 20).
METRICS_VERSION = 4
#: The defaced face's descriptor (template frame), saved per pair for re-identification.
DESCRIPTOR = "face_descriptor_defaced.npy"
#: The original face's descriptor in the same frame: the gallery entry of :func:`reidentify`.
ORIGINAL_DESCRIPTOR = "face_descriptor_original.npy"
#: The brain guard (mm) of the evaluation region, whatever the defacing's ``--guard-mm``.
EVALUATION_GUARD_MM = 10.0
#: Columns of the face detectors (``--no-detectors`` leaves them empty).
DETECTOR_COLUMNS = ("face_detected_original", "face_detected_defaced",
                    "ensemble_views_with_face_defaced", "ensemble_views", "ensemble_detectors")
#: Columns of the geometric face checks (``--no-reid`` leaves them empty).
REID_COLUMNS = ("face_distance_to_original_mm", "face_distance_to_template_mm",
                "face_distance_original_to_template_mm", "reid_rank", "reid_rank1")


@dataclass(frozen=True)
class SubjectJob:
    """One subject's share of the study."""

    subject: str
    image: Path
    templates: tuple[Template, ...]
    work: Path
    options: DefaceOptions
    detectors: bool = True
    reid: bool = True


def work_name(options: DefaceOptions) -> str:
    """The cache folder of one defacing setting: ``blur``, ``remove_face-template_margin-8mm``."""
    if options.face_region == "rule":
        return options.method
    return f"{options.method}_face-{options.face_region}_margin-{options.face_margin_mm:g}mm"


def _cached_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _current_record(path: Path, job: SubjectJob) -> dict | None:
    """The cached record if it is of this version and holds every check ``job`` asks for
    (a record without the ``detectors``/``reid`` keys predates them and holds both), and,
    when ``job`` re-identifies, its descriptors are readable (:func:`_descriptors_readable`)."""
    record = _cached_json(path)
    if not record or record.get("metrics_version") != METRICS_VERSION:
        return None
    if record.get("status") == "ok" and any(
            wanted and not record.get(check, True)
            for check, wanted in (("detectors", job.detectors), ("reid", job.reid))):
        return None
    if record.get("status") == "ok" and job.reid and not _descriptors_readable(path.parent):
        return None  # re-identification needs them
    return record


def _descriptors_readable(pair: Path) -> bool:
    """Whether a pair's defaced face's descriptor is there and each of its two descriptors
    that is there reads as an array (a deleted or damaged file makes the pair stale; a
    missing original's descriptor is computed by :func:`reidentify`)."""
    if not (pair / DESCRIPTOR).is_file():
        return False
    for path in (pair / DESCRIPTOR, pair / ORIGINAL_DESCRIPTOR):
        try:
            if path.is_file():
                np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            return False
    return True


def _template_key(template: Template) -> dict:
    """What a registration depends on besides the subject: the template's prepared files."""
    files = template.info.get("files", {})
    return {"template": template.name, "head_sha256": template.info.get("head_sha256"),
            "brain_mask_sha256": files.get(template.brain_mask.name)}


def registration_grid(volume: Volume, brain: np.ndarray, spacing_mm: float,
                      grids: dict[float, SubjectGrid]) -> SubjectGrid:
    """The subject on the registration's working grid of ``spacing_mm``, built once per
    subject and spacing (kept in ``grids``) for all its templates."""
    if spacing_mm not in grids:
        grids[spacing_mm] = SubjectGrid.from_arrays(volume.data, volume.affine, brain,
                                                    spacing_mm)
    return grids[spacing_mm]


def _alignment(volume: Volume, template: Template, brain: np.ndarray,
               folder: Path, grids: dict[float, SubjectGrid]) -> Alignment:
    """:func:`isyb.deface.engine.align` with the subject's brain mask, its registration
    cached in ``folder/registration`` (JSON floats round-trip exactly); ``grids`` holds
    the subject's working grids (:func:`registration_grid`)."""
    path = folder / "registration" / f"tpl-{template.name}.json"
    key = _template_key(template)
    cached = _cached_json(path)
    if cached and cached.get("key") == key:
        registration = Registration(np.asarray(cached["subject_to_template"], dtype=float),
                                    cached["score"], cached["start"], cached["attempts"])
        return Alignment(brain, check_brain_mask(brain, volume.zooms, in_fov_fraction=0.3),
                         registration, {"brain_s": 0.0, "registration_s": 0.0})
    grid = registration_grid(volume, brain, template.working_grid().spacing_mm, grids)
    alignment = align(volume, template, brain=brain, subject_grid=grid)
    registration = alignment.registration
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({
        "key": key, "subject_to_template": np.asarray(registration.subject_to_template).tolist(),
        "score": registration.score, "start": registration.start,
        "attempts": registration.attempts}, indent=2) + "\n")
    return alignment


def _brain(volume: Volume, folder: Path) -> np.ndarray:
    path = folder / "brain_mask.nii.gz"
    if path.is_file():
        return load_volume(path).data > 0
    brain = extract_brain(volume.data, volume.zooms)
    save_mask_like(brain, volume, path)
    return brain


def _evaluation(volume: Volume, brain: np.ndarray, folder: Path,
                masks: SubjectMasks) -> np.ndarray:
    path = folder / "evaluation_region.nii.gz"
    if path.is_file():
        return load_volume(path).data > 0
    # the evaluation's guard has the default margin; the defacing's may be another
    same = masks.guard_mm == EVALUATION_GUARD_MM
    region = evaluation_region(brain, volume.affine, guard_mm=EVALUATION_GUARD_MM,
                               guard=masks.guard if same else None)
    save_mask_like(region, volume, path)
    return region


def _defaced_as_written(volume: Volume, data: np.ndarray, allowed: np.ndarray) -> Volume:
    """The defaced volume with the values the stored dtype would hold.

    Outside ``allowed`` it is the original; the cast (elementwise) is done only in
    ``allowed``'s bounding box, the same values as over the whole grid.
    """
    dtype = volume.source.get_data_dtype()
    written = volume.data.copy()
    box = bounding_box(allowed)
    written[box] = np.where(allowed[box], cast_like(data[box], dtype).astype(np.float32),
                            volume.data[box])
    return Volume(written, volume.affine, volume.source, volume.path)


def run_subject(job: SubjectJob) -> list[dict]:
    """Deface one subject with every template (cached) and return its metric rows."""
    folder = job.work / f"sub-{job.subject}"
    folder.mkdir(parents=True, exist_ok=True)
    setting = work_name(job.options)
    rows: list[dict] = []
    volume: Volume | None = None
    brain: np.ndarray | None = None
    region: np.ndarray | None = None
    masks: SubjectMasks | None = None
    original_detected: bool | None = None
    grids: dict[float, SubjectGrid] = {}
    for template in job.templates:
        target = folder / setting / f"tpl-{template.name}"
        record = _current_record(target / "metrics.json", job)
        if record is None:
            try:
                if volume is None:
                    volume = load_volume(job.image)
                    brain = _brain(volume, folder)
                    masks = subject_masks(volume, brain, job.options.guard_mm)
                    region = _evaluation(volume, brain, folder, masks)
                    cached = _cached_json(folder / "original.json")
                    if cached is None and job.detectors:
                        cached = {"face_detected_original": bool(
                            face_detected(volume.data, volume.zooms)["detected"])}
                        write_text(folder / "original.json", json.dumps(cached) + "\n")
                    original_detected = (cached or {}).get("face_detected_original")
                alignment = _alignment(volume, template, brain, folder, grids)
                result = deface_volume(volume, template, job.options, alignment=alignment,
                                       subject=masks)
                defaced = _defaced_as_written(volume, result.data, result.allowed)
                metrics = evaluate_defacing(volume, defaced, region, brain=brain, detect=False,
                                            guard_mm=job.options.guard_mm, subject=masks)
                to_template = alignment.registration.subject_to_template
                # the skin thresholds the face checks read, each computed once
                defaced_threshold = (skin_threshold(defaced.data)
                                     if job.detectors or job.reid else None)
                target.mkdir(parents=True, exist_ok=True)
                record = {
                    "status": "ok",
                    "nmi": metrics["nmi"],
                    "face_surface_changed_fraction": metrics["face_surface_changed_fraction"],
                    "face_reference_changed_fraction":
                        metrics["face_reference_changed_fraction"],
                    "face_reference_lower_changed_fraction":
                        metrics["face_reference_lower_changed_fraction"],
                    "face_reference_guard_fraction":
                        metrics["face_reference"]["guard_fraction"],
                    "brain_changed_voxels": metrics["brain_changed_voxels"],
                    "changed_voxels": metrics["changed_voxels"],
                    "evaluation_region_voxels": metrics["face_mask_voxels"],
                    "applied_mask_voxels": int(result.allowed.sum()),
                    "registration_score": alignment.registration.score,
                    "detectors": job.detectors,
                    "reid": job.reid,
                    **(_detector_checks(defaced, original_detected, defaced_threshold)
                       if job.detectors else {}),
                    **(_geometric_checks(volume, defaced, result.allowed, to_template,
                                         _frame(template), target, masks.threshold,
                                         defaced_threshold) if job.reid else {}),
                    "subject_to_template": np.asarray(to_template).tolist(),
                }
                save_mask_like(result.allowed, volume, target / "face_mask.nii.gz")
            except IsybError as exc:
                record = {"status": "failed", "error": str(exc)}
            record.update(template_sha256=template.info.get("head_sha256"),
                          face_region=job.options.face_region,
                          face_margin_mm=(job.options.face_margin_mm
                                          if job.options.face_region == "template" else None),
                          metrics_version=METRICS_VERSION, isyb_version=__version__)
            write_text(target / "metrics.json", json.dumps(record, indent=2) + "\n")
        skipped = ((DETECTOR_COLUMNS if not job.detectors else ())
                   + (REID_COLUMNS if not job.reid else ()))
        rows.append({"subject": job.subject, "template": template.name,
                     "method": job.options.method, **record,
                     **{column: None for column in skipped if column in record},
                     **({"detectors": job.detectors, "reid": job.reid}
                        if record["status"] == "ok" else {})})
    return rows


def _detector_checks(defaced: Volume, original_detected: bool, threshold: float) -> dict:
    """The face detectors' columns of a defaced head (stock detector and the ensemble);
    ``threshold`` is the defaced head's :func:`skin_threshold`."""
    judged = ensemble_detect(defaced.data, defaced.zooms, threshold=threshold)
    return {"face_detected_original": original_detected,
            "face_detected_defaced": judged.stock_detected(),
            "ensemble_views_with_face_defaced": judged.views_with_any_face(),
            "ensemble_views": len(judged.views),
            "ensemble_detectors": "+".join(judged.detectors)}


#: Each template's face frame, built once per process (it depends on the template only).
_FRAMES: dict[tuple, FaceFrame] = {}


def _frame(template: Template) -> FaceFrame:
    """:func:`isyb.evaluate.reid.frame_for` of ``template``, cached for this process's
    subjects (keyed by the template's name, head checksum and face rule)."""
    key = (template.name, template.info.get("head_sha256"), repr(template.rule))
    if key not in _FRAMES:
        _FRAMES[key] = frame_for(template)
    return _FRAMES[key]


def _geometric_checks(volume: Volume, defaced: Volume, allowed: np.ndarray,
                      to_template: np.ndarray, frame: FaceFrame, target: Path,
                      threshold: float, defaced_threshold: float) -> dict:
    """Face distances of a defaced head; saves its face descriptor and the original's for
    :func:`reidentify`.

    The defaced head is resampled into the frame once: the distances read it at
    the original's skin threshold (``threshold``, :func:`skin_threshold` of
    ``volume``), the descriptor at its own (``defaced_threshold``).
    """
    samples = frame_samples(defaced, to_template, frame)
    original = face_descriptor(volume, to_template, frame, threshold=threshold)
    distance = face_distances(volume, defaced, allowed, to_template, frame,
                              defaced_samples=samples, original_descriptor=original,
                              threshold=threshold)
    _save_descriptor(target / DESCRIPTOR, samples_descriptor(samples, frame, defaced_threshold))
    _save_descriptor(target / ORIGINAL_DESCRIPTOR, original)
    return {"face_distance_to_original_mm": distance.to_original,
            "face_distance_to_template_mm": distance.to_template,
            "face_distance_original_to_template_mm": distance.original_to_template}


def _save_descriptor(path: Path, descriptor: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, descriptor)


def reidentify(table: pd.DataFrame, images: dict[str, Path], templates: list[Template],
               work: Path, options: DefaceOptions, *, executor: ExecutorOptions | None = None,
               progress: bool = False) -> pd.DataFrame:
    """Add ``reid_rank`` and ``reid_rank1``: each defaced face against all originals, per template.

    The attack of :mod:`isyb.evaluate.reid` (surface descriptors, trimmed ICP),
    closed set: for each template, the gallery is every subject's *original*
    face and the probes are the defaced faces (``DESCRIPTOR`` of each ok pair).
    The originals' descriptors are read from ``ORIGINAL_DESCRIPTOR``, stored with
    each pair; a record of an earlier version, without it, has it computed and stored.
    ``reid_rank`` is the rank of the subject's own original (1 = nearest, ties
    averaged) among the ``N`` originals; ``reid_rank1`` its share of a rank-1
    hit (1, 1/k for a k-way tie, or 0), so the template's rank-1 rate is the
    mean of ``reid_rank1`` and chance is ``1/N``. Both scans use the
    registration the defacing used (stored as ``subject_to_template``), which
    favours the attacker: the defaced brain is the original's, so an attacker's
    own registration would be nearly the same. NaN with fewer than two subjects.

    N x N fits per template (about 0.1-0.2 CPU s each: ``benchmarks/bench_study.py
    --isyb-scale``, ``benchmarks/bench_reid.py``): one
    task per original face (:func:`isyb.study.reid_columns.reid_column`) on ``executor``
    (default: this process), all templates in one :func:`isyb.executor.run_tasks` call. A
    column's distances do not depend on where it runs, so any executor gives the same
    ranks. Every distance is cached by the two descriptors' contents
    (:mod:`isyb.study.reid_columns`): a rerun fits nothing again, and one subject more
    costs ``2N - 1`` fits per template. :func:`collect_metrics` hands it the subjects'
    cluster; called alone under ``--executor dask`` without ``--dask-scheduler``, it
    starts its own.
    """
    table = table.assign(reid_rank=np.nan, reid_rank1=np.nan)
    setting = work_name(options)
    cohorts: dict[str, tuple[pd.Index, list[Path], list[Path]]] = {}
    for template in templates:
        rows = table.index[(table["template"] == template.name) & (table["status"] == "ok")]
        if len(rows) < 2:
            continue
        gallery, probes = [], []
        for row in rows:
            subject = table.at[row, "subject"]
            pair = work / f"sub-{subject}" / setting / f"tpl-{template.name}"
            stored = pair / ORIGINAL_DESCRIPTOR
            if not stored.is_file():  # a record of an earlier version
                matrix = np.asarray(table.at[row, "subject_to_template"], dtype=float)
                _save_descriptor(stored, face_descriptor(load_volume(images[subject]), matrix,
                                                         _frame(template)))
            gallery.append(stored)
            probes.append(pair / DESCRIPTOR)
        cohorts[template.name] = (rows, gallery, probes)
    jobs = [ReidColumn(name, j, entry, tuple(probes), entry.with_name(DISTANCE_CACHE))
            for name, (_, gallery, probes) in cohorts.items() for j, entry in enumerate(gallery)]
    matrices = {name: np.empty((len(probes), len(gallery)))
                for name, (_, gallery, probes) in cohorts.items()}
    for name, j, column in run_tasks(reid_column, jobs, executor or ExecutorOptions(),
                                     progress=progress, desc="re-identification"):
        matrices[name][:, j] = column
    for name, (rows, _, _) in cohorts.items():
        result = identification_from_distances(matrices[name])
        table.loc[rows, "reid_rank"] = result["ranks"]
        table.loc[rows, "reid_rank1"] = [_rank1_share(d, i)
                                         for i, d in enumerate(result["distances"])]
    return table.drop(columns="subject_to_template", errors="ignore")


def _rank1_share(distances: np.ndarray, own: int) -> float:
    """1/k when the own entry ties with k-1 others for the smallest distance, else 0."""
    if not np.isfinite(distances[own]):
        return 0.0
    if np.any(distances < distances[own]):
        return 0.0
    return 1.0 / float(np.sum(distances == distances[own]))


def collect_metrics(images: dict[str, Path], templates: list[Template], work: Path,
                    options: DefaceOptions, *, executor: ExecutorOptions | None = None,
                    progress: bool = True, detectors: bool = True,
                    reid: bool = True) -> pd.DataFrame:
    """Metric rows of every subject × template (computing only the uncached ones).

    ``executor`` says where the subjects run (default: one local process); under Dask
    without a scheduler, the subjects and the re-identification share one cluster
    (:func:`isyb.executor.shared_cluster`). ``detectors`` and ``reid`` whether the face
    checks run (module docstring).
    """
    jobs = [SubjectJob(s, p, tuple(templates), work, options, detectors, reid)
            for s, p in sorted(images.items())]
    with shared_cluster(executor or ExecutorOptions()) as shared:
        rows = [row for subject_rows in run_tasks(run_subject, jobs, shared, progress=progress,
                                                  desc="study")
                for row in subject_rows]
        # subject order, whatever order the tasks finished in: the columns follow the rows
        table = pd.DataFrame(sorted(rows, key=lambda row: row["subject"]))
        table = (reidentify(table, images, templates, work, options, executor=shared,
                            progress=progress) if reid
                 else table.drop(columns="subject_to_template", errors="ignore"))
    for column in METRIC_COLUMNS:
        if column not in table:
            table[column] = np.nan
    if "error" not in table:
        table["error"] = ""
    return table.sort_values(["subject", "template"], ignore_index=True)
