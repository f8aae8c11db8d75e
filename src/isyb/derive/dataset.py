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
  area, volume, LGI per aparc region, read from FreeSurfer's files).

Template space needs the subject's T1w: brain (deepbet), tissues
(:func:`isyb.head.tissue.segment_tissues`), normalisation to the template
(:mod:`isyb.derive.normalize`, SyN by default), and each run co-registered to
the T1w (rigid). The T1w's white-matter and CSF masks, brought into BOLD
space, give the nuisance signals; its WM and GM, brought into DWI and ASL
space, give the tissue summaries. Normalisation and tissue files are cached in
``WORK_DIR/sub-<label>/`` and reused by reruns.

``group`` level, in ``OUT_DIR/derivatives/isyb/group/``: per metric the
voxel-wise mean and SD over runs (:func:`isyb.derive.group.group_mean_sd`,
within the voxels valid in every run), the mask, and a figure of both on
fsaverage5; ``group_derive.tsv`` collects the per-run summaries and
``group_surface_metrics.tsv`` the FreeSurfer region summaries.

A run whose JSON exists and was made from the same input, options and isyb
version is skipped (a rerun resumes). A run that fails on bad input is
recorded with its one-line error, and the other runs go on. Every file is
written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import zlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from isyb import __version__
from isyb.bids.layout import source_dataset
from isyb.errors import IsybError
from isyb.io import atomic_path, strip_image_suffix, write_text

DERIVATIVES = Path("derivatives") / "isyb"
METRICS = ("alff", "falff", "reho", "vmhc", "fa", "md", "cbf")
BOLD_METRICS = ("alff", "falff", "reho", "vmhc")
UNITS = {"alff": "a.u.", "falff": "ratio", "reho": "Kendall's W", "vmhc": "Fisher z",
         "fa": "FA", "md": "mm²/s", "cbf": "ml/100 g/min"}
DEFAULT_SPACE = "MNI152NLin2009aSym"
NIFTI = (".nii.gz", ".nii")


class DeriveInputError(IsybError, ValueError):
    """A dataset, option or template that ``isyb derive`` cannot use."""


@dataclass(frozen=True)
class DeriveOptions:
    """Settings of the participant level (they key the resume check)."""

    metrics: tuple[str, ...] = METRICS
    normalization: str = "SyN"
    reho_neighbours: int = 27
    n_dummy: int = 5
    vmhc_fwhm_mm: float = 6.0
    template: str | None = None
    space: str = DEFAULT_SPACE
    freesurfer_dir: str | None = None
    cbf_formula: str = "whitepaper"
    ge_scaling: tuple[float, float] | None = None

    def key(self) -> str:
        """A short digest of the options, stored in every record."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_metrics(text: str) -> tuple[str, ...]:
    """``"alff,fa"`` -> ``("alff", "fa")``, in :data:`METRICS` order; unknown names are errors."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise DeriveInputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; "
                               f"choose from {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in names)


@dataclass(frozen=True)
class Run:
    """One BOLD, DWI or ASL run of a subject."""

    path: Path
    relative: Path
    suffix: str

    @property
    def bids_name(self) -> str:
        return Path(strip_image_suffix(self.relative.name)).name

    @property
    def entities(self) -> str:
        return self.bids_name[: -len(self.suffix) - 1]

    def output(self, out_dir: Path, desc: str, suffix: str, extension: str,
               space: str | None = None) -> Path:
        space_part = f"_space-{space}" if space else ""
        name = f"{self.entities}{space_part}_desc-{desc}_{suffix}{extension}"
        return out_dir / DERIVATIVES / self.relative.parent / name


@dataclass(frozen=True)
class Subject:
    """A subject's T1w (the first one, if any) and the runs ``derive`` uses."""

    label: str
    t1w: Path | None
    runs: tuple[Run, ...]


RUN_FOLDERS = {"func": "bold", "dwi": "dwi", "perf": "asl"}


def find_subjects(bids_dir: Path, labels: Iterable[str] | None = None) -> list[Subject]:
    """Subjects of ``bids_dir`` with their T1w and BOLD/DWI/ASL runs, sorted."""
    if not (bids_dir / "dataset_description.json").is_file():
        raise DeriveInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    found = sorted(p.name for p in bids_dir.glob("sub-*") if p.is_dir())
    if labels is not None:
        wanted = [f"sub-{label.removeprefix('sub-')}" for label in labels]
        missing = [w for w in wanted if w not in found]
        if missing:
            raise DeriveInputError(f"participant label(s) not found in {bids_dir}: "
                                   f"{', '.join(missing)}")
        found = wanted
    return [scan_subject(bids_dir, name) for name in found]


def scan_subject(root: Path, name: str) -> Subject:
    """The T1w (the first, if any) and the BOLD/DWI/ASL runs of ``root/<name>``."""
    t1w = None
    runs = []
    for path in sorted((root / name).rglob("*")):
        if not path.is_file() or not path.name.endswith(NIFTI):
            continue
        suffix = Path(strip_image_suffix(path.name)).name.rsplit("_", 1)[-1]
        folder = path.parent.name
        if folder == "anat" and suffix == "T1w" and t1w is None:
            t1w = path
        elif RUN_FOLDERS.get(folder) == suffix:
            runs.append(Run(path, path.relative_to(root), suffix))
    return Subject(name, t1w, tuple(runs))


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _finished(path: Path, stamp: dict, options: DeriveOptions) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (record.get("input") == stamp and record.get("isyb_version") == __version__
            and record.get("options_key") == options.key())
    return record if same else None


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating | float):
        return None if not math.isfinite(value) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    raise TypeError(f"not JSON serializable: {type(value)}")


def load_ras(path: Path, *,
             allow_4d: bool = True) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """A 3-D or 4-D image as a float32 RAS array, its RAS affine and its original header."""
    from isyb.io import load_image

    image = load_image(path, allow_4d=allow_4d)
    canonical = nib.as_closest_canonical(image)
    try:
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DeriveInputError(f"{path}: the image data cannot be read (truncated or "
                               f"corrupt file: {exc})") from None
    if not np.all(np.isfinite(data)):
        raise DeriveInputError(f"{path.name}: the image holds NaN or infinite values")
    return data, canonical.affine, image.header


def save_map(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a float32 map (RAS) atomically."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        image.to_filename(str(tmp))


# ---------------------------------------------------------------------------
# The subject's anatomy: brain, tissues, normalisation (cached)


@dataclass
class Anatomy:
    """The subject's T1w in RAS with its brain, tissue labels and normalisation."""

    data: np.ndarray
    affine: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    normalization: object
    seconds: dict = field(default_factory=dict)

    def tissue(self, *names: str) -> np.ndarray:
        from isyb.head.tissue import CSF, GM, WM

        codes = {"csf": CSF, "gm": GM, "wm": WM}
        return np.isin(self.labels, [codes[n] for n in names])


def subject_anatomy(t1w: Path, work: Path, template, options: DeriveOptions) -> Anatomy:
    """Brain, tissues and normalisation of the subject's T1w, from ``work`` when cached."""
    from isyb.derive.normalize import normalize
    from isyb.head.brain import extract_brain
    from isyb.head.tissue import segment_tissues
    from isyb.io import cached_arrays

    data, affine, _ = load_ras(t1w, allow_4d=False)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    seconds: dict[str, float] = {}
    stamp = f"{_stamp(t1w)}|{__version__}"

    def tissues() -> dict[str, np.ndarray]:
        start = time.perf_counter()
        brain = extract_brain(data, zooms)
        labels = segment_tissues(data, brain, zooms)
        seconds["brain_and_tissues"] = time.perf_counter() - start
        return {"brain": brain, "labels": labels}

    arrays = cached_arrays(work / "t1w_tissues.npz", stamp, tissues)
    brain, labels = arrays["brain"].astype(bool), arrays["labels"]
    start = time.perf_counter()
    normalization = normalize(data, affine, brain, template, work / "normalize",
                              kind=options.normalization)
    seconds["normalization"] = time.perf_counter() - start
    return Anatomy(data, affine, brain, labels, normalization, seconds)


class AnatomySource:
    """The subject's :class:`Anatomy`, computed on first use (a run with bad input fails first).

    ``get()`` returns None when the subject has no T1w or its anatomy failed;
    ``error`` then says why.
    """

    def __init__(self, t1w: Path | None, work: Path, template, options: DeriveOptions):
        self.t1w, self.work, self.template, self.options = t1w, work, template, options
        self.anatomy: Anatomy | None = None
        self.error: str | None = None
        self._tried = False

    def get(self) -> Anatomy | None:
        if not self._tried and self.t1w is not None:
            self._tried = True
            try:
                self.anatomy = subject_anatomy(self.t1w, self.work, self.template, self.options)
            except IsybError as exc:
                self.error = str(exc)
        return self.anatomy


# ---------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class RunJob:
    bids_dir: Path
    out_dir: Path
    work: Path
    subject: Subject
    options: DeriveOptions
    threads: int = 1


def _template_outputs(run: Run, job: RunJob, maps: dict[str, np.ndarray], anatomy: Anatomy | None,
                      template, native_affine: np.ndarray, pre: np.ndarray | None,
                      written: list[str], series: np.ndarray | None = None) -> np.ndarray | None:
    """Bring native maps (and a 4-D ``series``) to template space, write the maps z-scored too.

    Everything goes through one :func:`~isyb.derive.normalize.to_template`
    call, stacked as volumes, because composing the transforms is the costly
    part. Returns the warped ``series`` (None without one or without a T1w).
    """
    from isyb.derive.normalize import to_template

    if anatomy is None:
        return None
    names = list(maps)
    volumes = [np.asarray(maps[name], dtype=np.float32)[..., None] for name in names]
    if series is not None:
        volumes.append(np.asarray(series, dtype=np.float32))
    if not volumes:
        return None
    warped = to_template(np.concatenate(volumes, axis=-1), native_affine,
                         anatomy.normalization, template, pre=pre).astype(np.float32, copy=False)
    for index, metric in enumerate(names):
        _write_template_map(run, job, metric, warped[..., index], template, written)
    return warped[..., len(names):] if series is not None else None


def _write_template_map(run: Run, job: RunJob, metric: str, warped: np.ndarray, template,
                        written: list[str]) -> None:
    from isyb.derive.vmhc import zscore_in_mask

    space = job.options.space
    mask = template.brain_mask & np.isfinite(warped) & (warped != 0)
    path = run.output(job.out_dir, metric, "map", ".nii.gz", space=space)
    save_map(np.where(template.brain_mask, warped, 0.0), template.affine, path)
    zpath = run.output(job.out_dir, f"{metric}z", "map", ".nii.gz", space=space)
    save_map(zscore_in_mask(warped, mask), template.affine, zpath)
    written += [path.name, zpath.name]


def _bold(run: Run, job: RunJob, source: AnatomySource, template) -> dict:
    from isyb.derive.normalize import coregister
    from isyb.derive.preprocess import clean_bold, prepare_bold
    from isyb.derive.rfmri import alff_falff, band_bins, reho
    from isyb.derive.vmhc import vmhc
    from isyb.qc.bold import repetition_time
    from isyb.qc.dataset import QCRun, sidecar_metadata

    wanted = [m for m in BOLD_METRICS if m in job.options.metrics]
    series, affine, header = load_ras(run.path)
    if series.ndim != 4:
        raise DeriveInputError(f"{run.relative}: expected a 4-D BOLD series, got shape "
                               f"{series.shape}")
    metadata = sidecar_metadata(job.bids_dir, QCRun(run.path, run.relative, "", run.suffix))
    tr = repetition_time(header, metadata)
    if tr is None:
        raise DeriveInputError(f"{run.relative}: the repetition time is unknown (no "
                               "RepetitionTime in the sidecar, no TR in the header)")
    if {"alff", "falff"} & set(wanted):  # fail before the preprocessing, not after
        band_bins(series.shape[3] - job.options.n_dummy, tr)
    anatomy = source.get()
    if "vmhc" in wanted and anatomy is None:
        raise DeriveInputError(f"{run.relative}: VMHC needs template space, which needs the "
                               "subject's T1w")
    slice_timing, slice_axis = _slice_timing(metadata, header, affine)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    prepared = prepare_bold(series, zooms, tr, slice_timing=slice_timing, slice_axis=slice_axis,
                            n_dummy=job.options.n_dummy)
    del series
    seconds = dict(prepared.timings)
    pre = None
    wm = csf = None
    if anatomy is not None:
        start = time.perf_counter()
        pre = coregister(prepared.mean, affine, anatomy.data * anatomy.brain, anatomy.affine)
        seconds["coregistration"] = time.perf_counter() - start
        wm = _tissue_in(anatomy, "wm", prepared.mean.shape, affine, pre) & prepared.mask
        csf = _tissue_in(anatomy, "csf", prepared.mean.shape, affine, pre) & prepared.mask
    start = time.perf_counter()
    residuals, regressors = clean_bold(prepared, wm=wm if wm is not None and wm.any() else None,
                                       csf=csf if csf is not None and csf.any() else None)
    seconds["nuisance_regression"] = time.perf_counter() - start
    maps: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    if {"alff", "falff"} & set(wanted):
        alff, falff = alff_falff(residuals, tr, mask=prepared.mask)
        maps.update({k: v for k, v in (("alff", alff), ("falff", falff)) if k in wanted})
    seconds["alff"] = time.perf_counter() - start
    if "reho" in wanted:
        start = time.perf_counter()
        maps["reho"] = reho(residuals, mask=prepared.mask,
                            neighbourhood=job.options.reho_neighbours)
        seconds["reho"] = time.perf_counter() - start
    written: list[str] = []
    for metric, values in maps.items():
        path = run.output(job.out_dir, metric, "map", ".nii.gz")
        save_map(values, affine, path)
        written.append(path.name)
    start = time.perf_counter()
    moved = _template_outputs(run, job, maps, anatomy, template, affine, pre, written,
                              series=residuals if "vmhc" in wanted else None)
    if moved is not None:
        from scipy import ndimage

        sigma = job.options.vmhc_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
        spacing = np.sqrt((template.affine[:3, :3] ** 2).sum(axis=0))
        moved = ndimage.gaussian_filter(moved, (*(sigma / spacing), 0.0))
        valid = template.brain_mask & (np.abs(moved).sum(axis=-1) > 0) & \
            ~_midline(template.shape, template.affine)
        _write_template_map(run, job, "vmhc", vmhc(moved, template.affine, valid), template,
                            written)
    seconds["to_template"] = time.perf_counter() - start
    summary = {f"{m}_median": float(np.median(v[prepared.mask])) for m, v in maps.items()}
    return {"tr_s": tr, "volumes_dropped": prepared.n_dummy, "spikes_replaced": prepared.n_spikes,
            "slice_timing_corrected": slice_timing is not None, "regressors": regressors,
            "motion_max_translation_mm": float(np.abs(prepared.motion[:, :3]).max()),
            "summary": summary, "files": written, "seconds": seconds}


def _midline(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """Voxels within half a voxel of x = 0: their own mirror, so VMHC is 1 there by
    construction; they are left out (NaN) rather than reported at the clip value."""
    x = affine[0, 0] * np.arange(shape[0]) + affine[0, 3]
    column = np.abs(x) < 0.5 * abs(affine[0, 0])
    return np.broadcast_to(column[:, None, None], shape[:3])


def _slice_timing(metadata: dict, header, ras_affine: np.ndarray) -> tuple[list | None, int]:
    """BIDS SliceTiming and its axis in the RAS array (``SliceEncodingDirection``, default k)."""
    timing = metadata.get("SliceTiming")
    if not timing:
        return None, 2
    direction = str(metadata.get("SliceEncodingDirection", "k"))
    stored_axis = "ijk".index(direction[0])
    original = nib.io_orientation(header.get_best_affine())
    ras_axis = int(original[stored_axis, 0])
    values = list(timing)
    if original[stored_axis, 1] < 0:
        values = values[::-1]
    if direction.endswith("-"):
        values = values[::-1]
    return values, ras_axis


def _tissue_in(anatomy: Anatomy, name: str, shape: tuple[int, ...], affine: np.ndarray,
               pre: np.ndarray) -> np.ndarray:
    """A T1w tissue mask brought into a run's grid (nearest neighbour)."""
    from isyb.derive.normalize import to_space

    mask = anatomy.tissue(name).astype(np.float32)
    return to_space(mask, anatomy.affine, shape, affine, pre, order=0) > 0.5


def _sidecar_path(run: Run, extension: str) -> Path:
    return run.path.with_name(f"{run.bids_name}{extension}")


def _dwi(run: Run, job: RunJob, source: AnatomySource, template) -> dict:
    from isyb.derive.dti import fa_md, read_gradients, tissue_summary
    from isyb.derive.normalize import coregister

    series, affine, _ = load_ras(run.path)
    if series.ndim != 4:
        raise DeriveInputError(f"{run.relative}: expected a 4-D DWI series, got shape "
                               f"{series.shape}")
    bval, bvec = _sidecar_path(run, ".bval"), _sidecar_path(run, ".bvec")
    # The bvecs stay in the stored file's axes: FA and MD are invariant to an
    # orthogonal change of the gradient frame (the reorientation to RAS is one).
    bvals, bvecs = read_gradients(bval, bvec, series.shape[3])
    anatomy = source.get()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    fa, md = fa_md(series, bvals, bvecs)
    seconds["tensor_fit"] = time.perf_counter() - start
    maps = {m: v for m, v in (("fa", fa), ("md", md)) if m in job.options.metrics}
    written: list[str] = []
    for metric, values in maps.items():
        path = run.output(job.out_dir, metric, "map", ".nii.gz")
        save_map(values, affine, path)
        written.append(path.name)
    result: dict = {"volumes": int(series.shape[3]), "b_values": sorted(set(bvals.tolist()))}
    if anatomy is not None:
        b0 = series[..., bvals <= 50].mean(axis=-1)
        start = time.perf_counter()
        pre = coregister(b0, affine, anatomy.data * anatomy.brain, anatomy.affine)
        seconds["coregistration"] = time.perf_counter() - start
        wm = _tissue_in(anatomy, "wm", b0.shape, affine, pre)
        gm = _tissue_in(anatomy, "gm", b0.shape, affine, pre)
        result["tissue"] = tissue_summary(fa, md, wm, gm)
        start = time.perf_counter()
        _template_outputs(run, job, maps, anatomy, template, affine, pre, written)
        seconds["to_template"] = time.perf_counter() - start
    else:
        result["tissue"] = "no T1w: FA/MD are not split by tissue"
    result.update(files=written, seconds=seconds)
    return result


def _asl(run: Run, job: RunJob, source: AnatomySource, template) -> dict:
    from isyb.derive.cbf import ASLInputError, GEScaling, asl_cbf
    from isyb.derive.normalize import coregister
    from isyb.derive.preprocess import brain_mask_from_mean
    from isyb.qc.dataset import QCRun, sidecar_metadata

    context = _sidecar_path(run, "").with_name(f"{run.entities}_aslcontext.tsv")
    if not context.is_file():
        raise ASLInputError(f"{run.relative}: {context.name} is missing; the volume order "
                            "(control, label, m0scan) is unknown")
    volume_types = pd.read_csv(context, sep="\t")["volume_type"].astype(str).tolist()
    metadata = sidecar_metadata(job.bids_dir, QCRun(run.path, run.relative, "", run.suffix))
    series, affine, _ = load_ras(run.path)
    if series.ndim == 3:
        series = series[..., None]
    m0_image = None
    m0_path = run.path.with_name(f"{run.entities}_m0scan.nii.gz")
    if metadata.get("M0Type") == "Separate" and m0_path.is_file():
        m0_image, _, _ = load_ras(m0_path)
    ge = GEScaling(*job.options.ge_scaling) if job.options.ge_scaling else None
    cbf, summary = asl_cbf(series, volume_types, metadata, m0_image=m0_image,
                           formula=job.options.cbf_formula, ge=ge)
    anatomy = source.get()
    kinds = np.asarray(volume_types)
    reference = series[..., kinds == "m0scan"].mean(axis=-1) if "m0scan" in volume_types \
        else series.mean(axis=-1)
    written: list[str] = []
    result: dict = {"parameters": summary}
    pre = None
    if anatomy is not None:
        pre = coregister(reference, affine, anatomy.data * anatomy.brain, anatomy.affine)
        brain = _tissue_in(anatomy, "gm", reference.shape, affine, pre) | \
            _tissue_in(anatomy, "wm", reference.shape, affine, pre)
        gm = _tissue_in(anatomy, "gm", reference.shape, affine, pre)
        result["gm_source"] = "T1w segmentation in ASL space"
    else:
        brain = brain_mask_from_mean(reference)
        gm = None
        result["gm_source"] = "none (no T1w): brain mean only"
    cbf = np.where(brain, cbf, 0.0)
    result["cbf_brain_mean"] = float(cbf[brain].mean())
    if gm is not None and gm.any():
        result["cbf_gm_mean"] = float(cbf[gm].mean())
    if "cbf" in job.options.metrics:
        path = run.output(job.out_dir, "cbf", "map", ".nii.gz")
        save_map(cbf, affine, path)
        written.append(path.name)
        _template_outputs(run, job, {"cbf": cbf}, anatomy, template, affine, pre, written)
    result["files"] = written
    return result


PROCESSORS = {"bold": _bold, "dwi": _dwi, "asl": _asl}
RUN_METRICS = {"bold": BOLD_METRICS, "dwi": ("fa", "md"), "asl": ("cbf",)}


def _record_path(run: Run, out_dir: Path) -> Path:
    return run.output(out_dir, "derive", run.suffix, ".json")


def _clean_message(message: str, bids_dir: Path) -> str:
    """One line, with paths relative to the dataset (no local paths in the records)."""
    for root in (str(bids_dir.resolve()), str(bids_dir)):
        message = message.replace(root.rstrip("/") + "/", "")
    return " ".join(message.split())


def run_subject(job: RunJob) -> list[dict]:
    """Derive every wanted metric of one subject's runs; write one JSON record per run."""
    import torch


    torch.set_num_threads(max(1, job.threads))
    subject, options = job.subject, job.options
    todo = [run for run in subject.runs
            if set(RUN_METRICS[run.suffix]) & set(options.metrics)
            and _finished(_record_path(run, job.out_dir), _stamp(run.path), options) is None]
    records = [json.loads(_record_path(run, job.out_dir).read_text())
               for run in subject.runs if run not in todo
               and set(RUN_METRICS[run.suffix]) & set(options.metrics)]
    if not todo:
        return records
    template = load_template(options)
    source = AnatomySource(subject.t1w, job.work / subject.label, template, options)
    for run in todo:
        record = {"bids_name": run.bids_name, "participant_id": subject.label,
                  "modality": run.suffix, "source": str(run.relative),
                  "input": _stamp(run.path), "isyb_version": __version__,
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
    return records


def load_template(options: DeriveOptions):
    """The normalisation template: nilearn's symmetric ICBM 2009a, or ``options.template``.

    A user template is a skull-stripped T1w (brain > 0) in RAS mm. With VMHC
    among the metrics it must be left-right symmetric
    (:func:`isyb.derive.vmhc.check_symmetric`).
    """
    from isyb.derive.normalize import TemplateImages, normalization_template
    from isyb.derive.vmhc import check_symmetric

    if options.template is None:
        template = normalization_template()
    else:
        data, affine, _ = load_ras(Path(options.template), allow_4d=False)
        brain = data > 0
        if not brain.any():
            raise DeriveInputError(f"{options.template}: the template holds no brain (> 0)")
        empty = np.zeros(data.shape, dtype=np.float32)
        spacing = round(float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).max()))
        template = TemplateImages(data, brain, empty, empty, empty, affine,
                                  resolution_mm=max(1, spacing))
    if "vmhc" in options.metrics:
        check_symmetric(template.head, template.affine, mask=template.brain_mask)
    return template


def write_description(out_dir: Path, bids_dir: Path) -> None:
    """``derivatives/isyb/dataset_description.json``, unless one is already there."""
    path = out_dir / DERIVATIVES / "dataset_description.json"
    if path.is_file():
        return
    description = {
        "Name": "isyb derived metrics", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "isyb", "Version": __version__,
                         "Description": "derived metrics (isyb derive)"}],
        "SourceDatasets": [source_dataset(bids_dir, json.loads(
            (bids_dir / "dataset_description.json").read_text()))],
    }
    write_text(path, json.dumps(description, indent=2) + "\n")


def derive_participants(bids_dir: Path, out_dir: Path, *, work_dir: Path | None = None,
                        labels: Iterable[str] | None = None,
                        options: DeriveOptions = DeriveOptions(), nprocs: int = 1,
                        progress: bool = True) -> list[dict]:
    """Participant level for every subject (resuming finished runs); return the records.

    Bad options (an unknown metric, a template without symmetry for VMHC)
    raise before any subject starts; a run's bad input is recorded and the
    other runs go on.
    """
    bids_dir, out_dir = Path(bids_dir), Path(out_dir)
    if bids_dir.resolve() == out_dir.resolve():
        raise DeriveInputError(f"{out_dir}: OUT_DIR must differ from BIDS_DIR")
    subjects = [s for s in find_subjects(bids_dir, labels) if s.runs]
    if not subjects:
        raise DeriveInputError(f"{bids_dir}: no BOLD, DWI or ASL runs found")
    load_template(options)  # fail early, once, on a template VMHC cannot use
    work = Path(work_dir) if work_dir is not None else out_dir / "work" / "derive"
    write_description(out_dir, bids_dir)
    if options.freesurfer_dir is not None:
        _surface_tables(Path(options.freesurfer_dir), [s.label for s in subjects], out_dir)
    nprocs = max(1, min(nprocs, len(subjects)))
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    jobs = [RunJob(bids_dir, out_dir, work, subject, options, threads) for subject in subjects]
    from isyb.executor import ExecutorOptions, run_tasks

    records: list[dict] = []
    for result in run_tasks(run_subject, jobs, ExecutorOptions("local", nprocs),
                            progress=progress, desc="derive"):
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
        path = out_dir / DERIVATIVES / label / "anat" / f"{label}_desc-surface_metrics.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")


def read_records(out_dir: Path) -> list[dict]:
    """Every participant-level derive record under ``OUT_DIR/derivatives/isyb``, sorted."""
    root = out_dir / DERIVATIVES
    return [json.loads(p.read_text())
            for p in sorted(root.glob("sub-*/**/*_desc-derive_*.json"))]


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
    """Group level: mean and SD maps per metric, their fsaverage5 figures, the summary table."""
    from isyb.derive.group import group_mean_sd, surface_figure

    out_dir = Path(out_dir)
    root = out_dir / DERIVATIVES
    records = read_records(out_dir)
    if not records:
        raise DeriveInputError(f"{root}: no participant-level derive records; run the "
                               "participant level first")
    group = root / "group"
    group.mkdir(parents=True, exist_ok=True)
    table = summary_table(records)
    with atomic_path(group / "group_derive.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    result: dict = {"runs": len(records), "failed": int((table["status"] != "ok").sum()),
                    "metrics": {}}
    surfaces = sorted(root.glob("sub-*/anat/*_desc-surface_metrics.tsv"))
    if surfaces:
        with atomic_path(group / "group_surface_metrics.tsv") as tmp:
            pd.concat([pd.read_csv(p, sep="\t") for p in surfaces]).to_csv(
                tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        result["surface_subjects"] = len(surfaces)
    for metric in metrics:
        paths = sorted(root.glob(f"sub-*/**/*_space-{space}_desc-{metric}_map.nii.gz"))
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
