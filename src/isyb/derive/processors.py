"""Per-run processors of ``isyb derive``: BOLD (ALFF, fALFF, ReHo, VMHC), DWI (FA, MD), ASL (CBF).

Each processor takes one run (a :class:`~isyb.bids.layout.BIDSFile`), the
subject's job, its :class:`~isyb.derive.anatomy.AnatomySource` and the
template; it writes the run's maps in its own space and, with a T1w, in
template space (z-scored too), and returns the run's record fields (what was
done, summaries, timings in seconds). Bad input raises an
:class:`~isyb.errors.IsybError` subclass, which the dataset mode records as
the run's one-line error.

Outputs, in the run's folder under ``OUT_DIR/derivatives/isyb/`` (``<entities>``
is the run's name without its suffix, e.g. ``sub-01_task-rest``):
``<entities>_desc-<metric>_map.nii.gz`` (native space),
``<entities>_space-<TPL>_desc-<metric>_map.nii.gz`` and
``..._desc-<metric>z_map.nii.gz`` (template space, z-scored within the
template's brain mask; VMHC exists only there).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from isyb.bids.layout import BIDSFile
from isyb.bids.layout import metadata as sidecar
from isyb.derive.anatomy import Anatomy, AnatomySource, load_ras, save_map, tissue_in
from isyb.derive.options import BOLD_METRICS, DeriveInputError, DeriveOptions


@dataclass(frozen=True)
class Subject:
    """A subject (``label`` with its ``sub-`` prefix), its T1w (the first one, if any) and the
    BOLD, DWI and ASL runs ``derive`` uses."""

    label: str
    t1w: Path | None
    runs: tuple[BIDSFile, ...]


@dataclass(frozen=True)
class RunJob:
    """One subject's participant-level work: where it reads and writes, and how."""

    bids_dir: Path
    out_dir: Path
    work: Path
    subject: Subject
    options: DeriveOptions


def _stem(run: BIDSFile) -> str:
    """The run's name without its suffix and extension (``sub-01_task-rest``)."""
    return run.bids_name[: -len(run.suffix) - 1]


def run_output(run: BIDSFile, out_dir: Path, desc: str, suffix: str, extension: str,
               space: str | None = None) -> Path:
    """``<entities>[_space-<space>]_desc-<desc>_<suffix><extension>`` in the run's derivative
    folder."""
    space_part = f"_space-{space}" if space else ""
    return run.derivative(out_dir, f"{_stem(run)}{space_part}_desc-{desc}_{suffix}{extension}")


def _template_outputs(run: BIDSFile, job: RunJob, maps: dict[str, np.ndarray],
                      anatomy: Anatomy | None, template, native_affine: np.ndarray,
                      pre: np.ndarray | None, written: list[str],
                      series: np.ndarray | None = None) -> np.ndarray | None:
    """Bring native maps (and a 4-D ``series``) to template space, write the maps z-scored too.

    Everything goes through one :func:`~isyb.derive.normalize.to_template`
    call, stacked as volumes, on the subject's composed transforms
    (:meth:`~isyb.derive.anatomy.Anatomy.template_points`, once per subject).
    Returns the warped ``series`` (None without one or without a T1w).
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
                         anatomy.normalization, template, pre=pre,
                         points=anatomy.template_points(template)).astype(np.float32, copy=False)
    for index, metric in enumerate(names):
        _write_template_map(run, job, metric, warped[..., index], template, written)
    return warped[..., len(names):] if series is not None else None


def _write_template_map(run: BIDSFile, job: RunJob, metric: str, warped: np.ndarray, template,
                        written: list[str]) -> None:
    from isyb.derive.vmhc import zscore_in_mask

    space = job.options.space
    mask = template.brain_mask & np.isfinite(warped) & (warped != 0)
    path = run_output(run, job.out_dir, metric, "map", ".nii.gz", space=space)
    save_map(np.where(template.brain_mask, warped, 0.0), template.affine, path)
    zpath = run_output(run, job.out_dir, f"{metric}z", "map", ".nii.gz", space=space)
    save_map(zscore_in_mask(warped, mask), template.affine, zpath)
    written += [path.name, zpath.name]


def derive_bold(run: BIDSFile, job: RunJob, source: AnatomySource, template) -> dict:
    """ALFF, fALFF and ReHo of a resting BOLD run after :mod:`~isyb.derive.preprocess`, and
    VMHC in template space; nuisance WM and CSF signals from the T1w when there is one.

    ``job.options.convention`` (:mod:`~isyb.derive.conventions`) sets the
    detrending order, the ALFF/fALFF spectrum and whether ReHo and VMHC use
    the band-passed residuals (``ccs``, ``dparsf``) or the unfiltered ones
    (``isyb``)."""
    from isyb.derive.conventions import (
        bandpass,
        check_run_length,
        convention_alff_falff,
        get_convention,
    )
    from isyb.derive.normalize import coregister
    from isyb.derive.preprocess import clean_bold, prepare_bold
    from isyb.derive.rfmri import reho
    from isyb.derive.vmhc import vmhc
    from isyb.qc.bold import repetition_time

    wanted = [m for m in BOLD_METRICS if m in job.options.metrics]
    series, affine, header = load_ras(run.path)
    if series.ndim != 4:
        raise DeriveInputError(f"{run.relative}: expected a 4-D BOLD series, got shape "
                               f"{series.shape}")
    metadata = sidecar(job.bids_dir, run.path)
    tr = repetition_time(header, metadata)
    if tr is None:
        raise DeriveInputError(f"{run.relative}: the repetition time is unknown (no "
                               "RepetitionTime in the sidecar, no TR in the header)")
    convention = get_convention(job.options.convention)
    if {"alff", "falff"} & set(wanted):  # fail before the preprocessing, not after
        check_run_length(series.shape[3] - job.options.n_dummy, tr, convention)
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
        wm = tissue_in(anatomy, "wm", prepared.mean.shape, affine, pre) & prepared.mask
        csf = tissue_in(anatomy, "csf", prepared.mean.shape, affine, pre) & prepared.mask
    start = time.perf_counter()
    residuals, regressors = clean_bold(prepared, wm=wm if wm is not None and wm.any() else None,
                                       csf=csf if csf is not None and csf.any() else None,
                                       polort=convention.polort)
    seconds["nuisance_regression"] = time.perf_counter() - start
    maps: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    if {"alff", "falff"} & set(wanted):
        alff, falff = convention_alff_falff(residuals, tr, convention, mask=prepared.mask)
        maps.update({k: v for k, v in (("alff", alff), ("falff", falff)) if k in wanted})
    seconds["alff"] = time.perf_counter() - start
    connectivity = residuals  # the series ReHo and VMHC use
    if convention.filtered_reho_vmhc and {"reho", "vmhc"} & set(wanted):
        start = time.perf_counter()
        connectivity = bandpass(residuals, tr, convention, mask=prepared.mask)
        seconds["bandpass"] = time.perf_counter() - start
    if "reho" in wanted:
        start = time.perf_counter()
        maps["reho"] = reho(connectivity, mask=prepared.mask,
                            neighbourhood=job.options.reho_neighbours)
        seconds["reho"] = time.perf_counter() - start
    written: list[str] = []
    for metric, values in maps.items():
        path = run_output(run, job.out_dir, metric, "map", ".nii.gz")
        save_map(values, affine, path)
        written.append(path.name)
    start = time.perf_counter()
    moved = _template_outputs(run, job, maps, anatomy, template, affine, pre, written,
                              series=connectivity if "vmhc" in wanted else None)
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
    return {"tr_s": tr, "convention": convention.name, "volumes_dropped": prepared.n_dummy,
            "spikes_replaced": prepared.n_spikes,
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


def _sidecar_path(run: BIDSFile, extension: str) -> Path:
    return run.path.with_name(f"{run.bids_name}{extension}")


def derive_dwi(run: BIDSFile, job: RunJob, source: AnatomySource, template) -> dict:
    """FA and MD of a DWI run (tensor fit, :mod:`~isyb.derive.dti`), summarised in the T1w's
    WM and GM when there is one."""
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
    fa, md = fa_md(series, bvals, bvecs, fit_method=job.options.dti_fit)
    seconds["tensor_fit"] = time.perf_counter() - start
    maps = {m: v for m, v in (("fa", fa), ("md", md)) if m in job.options.metrics}
    written: list[str] = []
    for metric, values in maps.items():
        path = run_output(run, job.out_dir, metric, "map", ".nii.gz")
        save_map(values, affine, path)
        written.append(path.name)
    result: dict = {"volumes": int(series.shape[3]), "b_values": sorted(set(bvals.tolist())),
                    "tensor_fit": job.options.dti_fit}
    if anatomy is not None:
        b0 = series[..., bvals <= 50].mean(axis=-1)
        start = time.perf_counter()
        pre = coregister(b0, affine, anatomy.data * anatomy.brain, anatomy.affine)
        seconds["coregistration"] = time.perf_counter() - start
        wm = tissue_in(anatomy, "wm", b0.shape, affine, pre)
        gm = tissue_in(anatomy, "gm", b0.shape, affine, pre)
        result["tissue"] = tissue_summary(fa, md, wm, gm)
        start = time.perf_counter()
        _template_outputs(run, job, maps, anatomy, template, affine, pre, written)
        seconds["to_template"] = time.perf_counter() - start
    else:
        result["tissue"] = "no T1w: FA/MD are not split by tissue"
    result.update(files=written, seconds=seconds)
    return result


def derive_asl(run: BIDSFile, job: RunJob, source: AnatomySource, template) -> dict:
    """CBF (ml/100 g/min) of an ASL run (:mod:`~isyb.derive.cbf`), its brain and grey-matter
    means (from the T1w when there is one)."""
    from isyb.derive.cbf import ASLInputError, GEScaling, asl_cbf
    from isyb.derive.normalize import coregister
    from isyb.derive.preprocess import brain_mask_from_mean

    context = _sidecar_path(run, "").with_name(f"{_stem(run)}_aslcontext.tsv")
    if not context.is_file():
        raise ASLInputError(f"{run.relative}: {context.name} is missing; the volume order "
                            "(control, label, m0scan) is unknown")
    volume_types = pd.read_csv(context, sep="\t")["volume_type"].astype(str).tolist()
    metadata = sidecar(job.bids_dir, run.path)
    series, affine, _ = load_ras(run.path)
    if series.ndim == 3:
        series = series[..., None]
    m0_image = None
    m0_path = run.path.with_name(f"{_stem(run)}_m0scan.nii.gz")
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
        brain = tissue_in(anatomy, "gm", reference.shape, affine, pre) | \
            tissue_in(anatomy, "wm", reference.shape, affine, pre)
        gm = tissue_in(anatomy, "gm", reference.shape, affine, pre)
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
        path = run_output(run, job.out_dir, "cbf", "map", ".nii.gz")
        save_map(cbf, affine, path)
        written.append(path.name)
        _template_outputs(run, job, {"cbf": cbf}, anatomy, template, affine, pre, written)
    result["files"] = written
    return result


#: The processor of each run suffix, and the metrics it can give.
PROCESSORS = {"bold": derive_bold, "dwi": derive_dwi, "asl": derive_asl}
RUN_METRICS = {"bold": BOLD_METRICS, "dwi": ("fa", "md"), "asl": ("cbf",)}
