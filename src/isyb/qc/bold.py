"""Image quality metrics of one BOLD run, after MRIQC's functional IQMs.

:func:`qc_bold` takes a file or an in-memory image (the public entry,
``isyb.qc_bold``); :func:`run_bold_qc` the arrays. Both run the whole chain
on one 4-D series:

1. Drop the non-steady-state ("dummy") volumes at the start of the run.
2. Estimate rigid head motion of every volume against the first steady-state
   volume (:mod:`isyb.head.motion`) and resample the series onto it (trilinear).
3. Average the realigned series (the mean BOLD image) and mask the brain on it
   (:func:`~isyb.qc.functional.bold_brain_mask`).
4. Temporal metrics on the realigned series in the mask: FD, DVARS, GCOR,
   tSNR. Spatial metrics on the mean image: SNR, FBER, EFC, FWHM.

The metrics themselves are plain functions of arrays in
:mod:`isyb.qc.functional` (re-exported here). MRIQC (24.x) does the same
steps with AFNI's ``3dvolreg -Fourier -twopass`` (base: the first volume)
for the motion parameters, NiTransforms (cubic splines) for the resampling
and SynthStrip for the brain mask. The differences: the motion engine of
:mod:`isyb.head.motion`, trilinear resampling (a cubic one costs about 6
times more; it smooths the noise of moved volumes a little, which lowers
their DVARS slightly), an intensity-threshold brain mask instead of
SynthStrip. ``fwhm_x/y/z/avg`` are in voxels, as MRIQC's (AFNI's mm divided
by the voxel size); ``fwhm_*_mm`` give the same in mm.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from isyb.bids.layout import metadata as bids_metadata
from isyb.bids.layout import read_json
from isyb.head.motion import PARAM_NAMES, measure_motion, realign
from isyb.io import atomic_path, check_real, load_image, strip_image_suffix
from isyb.qc.anat import QCInputError, efc, fwhm_afni, fwhm_columns
from isyb.qc.functional import (
    bold_brain_mask,
    bold_fber,
    bold_snr,
    detect_dummy_scans,
    dvars,
    fd_summary,
    framewise_displacement,
    gcor,
    repetition_time,
    tsnr,
    tsnr_map,
    voxel_dvars,
    voxel_gcor,
)

__all__ = [
    "MIN_STEADY_VOLUMES",
    "MIN_VOLUMES",
    "BoldInputError",
    "BoldQC",
    "bold_brain_mask",
    "bold_metrics",
    "bold_sidecar",
    "detect_dummy_scans",
    "dvars",
    "fd_summary",
    "framewise_displacement",
    "gcor",
    "motion_reliability",
    "qc_bold",
    "repetition_time",
    "run_bold_qc",
    "tsnr",
    "tsnr_map",
]

MIN_VOLUMES = 10
"""Fewest volumes a run may have."""

MIN_STEADY_VOLUMES = 5
"""Fewest steady-state volumes QC runs on, after the non-steady-state ones are dropped.

MRIQC drops every volume nipype's detector flags, whatever the length of the
run; isyb does the same as long as this many remain (a 10-volume run may
lose up to 5)."""


class BoldInputError(QCInputError):
    """A BOLD input that QC cannot use (wrong dimensions, too short, NaNs, no TR).

    A :class:`ValueError` for library callers and an :class:`~isyb.errors.IsybError`
    (through :class:`isyb.qc.anat.QCInputError`) for the command line, which
    reports it in one line with exit code 2.
    """


@dataclass
class BoldQC:
    """Everything :func:`run_bold_qc` computed for one run.

    ``metrics`` and ``table`` are what :func:`bold_metrics` returns. ``mean``
    is the mean realigned image, ``mask`` its brain mask, ``realigned`` the
    motion-corrected steady-state series (float32), ``params`` the ``(t, 6)``
    motion table of the steady-state volumes, ``dummy_scans`` the number of
    dropped leading volumes.
    """

    metrics: dict[str, float | int]
    table: dict[str, np.ndarray]
    mean: np.ndarray
    mask: np.ndarray
    realigned: np.ndarray
    params: np.ndarray
    dummy_scans: int
    motion_note: str = ""

    @property
    def tr_s(self) -> float:
        """The repetition time the metrics were computed with (s)."""
        return float(self.metrics["spacing_tr"])

    def json_metrics(self) -> dict[str, float | int]:
        """:attr:`metrics` as plain Python floats and ints, ready for JSON."""
        return {key: float(value) if isinstance(value, float | np.floating) else int(value)
                for key, value in self.metrics.items()}

    def to_json(self) -> dict[str, float | int | str]:
        """The metrics, ``tr_s`` and, when the motion is unreliable, ``motion_note``: the
        record ``isyb qc bold`` prints."""
        note = {"motion_note": self.motion_note} if self.motion_note else {}
        return {**self.json_metrics(), "tr_s": self.tr_s, **note}

    def frames(self) -> pd.DataFrame:
        """The per-frame table (one row per input volume, columns of :attr:`table`)."""
        return pd.DataFrame(self.table)

    def save_frames(self, path: str | os.PathLike) -> None:
        """Write :meth:`frames` as a BIDS-style TSV (``n/a`` where undefined), atomically."""
        with atomic_path(path) as tmp:
            self.frames().to_csv(tmp, sep="\t", index=False, na_rep="n/a")


def _validate(series: np.ndarray, zooms: Sequence[float],
              tr: float | None) -> tuple[np.ndarray, np.ndarray, float]:
    """The series, its voxel sizes and the TR, or :class:`BoldInputError`."""
    data = np.asarray(series)
    if data.ndim == 3 or (data.ndim == 4 and data.shape[3] == 1):
        raise BoldInputError(f"a BOLD run must be a 4-D image (x, y, z, t); got a 3-D image "
                             f"of shape {data.shape[:3]}")
    if data.ndim != 4:
        raise BoldInputError(f"a BOLD run must be a 4-D image (x, y, z, t); got {data.ndim} "
                             f"dimensions, shape {data.shape}")
    if data.shape[3] < MIN_VOLUMES:
        raise BoldInputError(f"a BOLD run needs at least {MIN_VOLUMES} volumes for QC; this "
                             f"one has {data.shape[3]}")
    check_real(data, BoldInputError, "BOLD data")
    if data.min() == data.max():
        raise BoldInputError(f"the BOLD image is constant (every voxel is {data.min():g})")
    vox = np.asarray(zooms, dtype=np.float64).ravel()[:3]
    if vox.size != 3 or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise BoldInputError(f"voxel sizes must be 3 positive numbers in mm, got {zooms!r}")
    if tr is None:
        raise BoldInputError("the repetition time (TR) is missing: give it in the BIDS "
                             "sidecar (RepetitionTime) or the NIfTI header")
    try:
        tr_value = float(tr)
    except (TypeError, ValueError):
        raise BoldInputError(f"the repetition time must be a number of seconds, got {tr!r}"
                             ) from None
    if not math.isfinite(tr_value) or tr_value <= 0:
        raise BoldInputError(f"the repetition time must be a positive number of seconds, "
                             f"got {tr!r}")
    return data, vox, tr_value


#: Lowest post-registration similarity (Pearson r of a volume and the reference, both
#: smoothed, at the registration's sample points) at which a motion estimate is trusted.
MIN_MOTION_SIMILARITY = 0.9

#: Largest disagreement (mm on the FD sphere) between two starting points of the same
#: volume's registration at which a motion estimate is trusted: the default FD threshold.
MAX_START_DISAGREEMENT_MM = 0.2


def motion_reliability(shape: Sequence[int], zooms: Sequence[float],
                       fd_radius: float = 50.0, *, similarity: float | None = None,
                       disagreement_mm: float | None = None) -> tuple[bool, str]:
    """Whether rigid motion was measurable in this run, and why not (issue 14 item 5).

    Three checks, each giving its reason in the note (several are joined by
    "; "):

    1. **Field of view.** Power's FD turns rotations into mm on a sphere of
       radius ``fd_radius`` (50 mm). A rotation is estimated from how the
       image moves across the field of view; when the FOV spans less than
       the sphere's diameter along two of its three axes, a small
       registration error in the angle becomes a large FD (on a 21 x 21 x 41
       mm crop, five ANTs rigid set-ups gave mean FDs of 0.03 to 134 mm).
    2. **Post-registration similarity** (``similarity``: the lowest over the
       volumes, :class:`isyb.head.motion.MotionEstimate`): under
       :data:`MIN_MOTION_SIMILARITY`, some volume does not look like the
       reference after its registration (a failed fit, a corrupted volume).
    3. **Two starting points** (``disagreement_mm``): the largest-motion
       volumes registered again from a start moved by 1.5 mm and 2 degrees
       per axis end more than :data:`MAX_START_DISAGREEMENT_MM` apart on the
       FD sphere: the cost does not pin the motion down.

    Such a run gets ``motion_reliable = 0`` and the FD rule does not exclude
    it (:mod:`isyb.qc.rules`). ``None`` skips a check.
    """
    reasons = []
    span = np.asarray(shape[:3], dtype=float) * np.asarray(zooms[:3], dtype=float)
    if int((span >= 2.0 * fd_radius).sum()) < 2:
        size = " x ".join(f"{v:.0f}" for v in span)
        reasons.append(f"the field of view ({size} mm) spans the {2 * fd_radius:g} mm FD "
                       "sphere along fewer than two axes")
    if similarity is not None and math.isnan(similarity):
        reasons.append("too few sample points of some volume stay in the field of view")
    elif similarity is not None and similarity < MIN_MOTION_SIMILARITY:
        reasons.append(f"a volume correlates with the reference at r = {similarity:.3f} after "
                       f"registration (< {MIN_MOTION_SIMILARITY})")
    if disagreement_mm is not None and disagreement_mm > MAX_START_DISAGREEMENT_MM:
        reasons.append(f"two starting points of the registration end {disagreement_mm:.2f} mm "
                       f"apart on the FD sphere (> {MAX_START_DISAGREEMENT_MM} mm)")
    if not reasons:
        return True, ""
    return False, "motion unreliable: " + "; ".join(reasons)


def run_bold_qc(series: np.ndarray, zooms: Sequence[float], tr: float | None, *,
                mask: np.ndarray | None = None, fd_threshold: float = 0.2,
                dummy_scans: int | None = None, fd_radius: float = 50.0) -> BoldQC:
    """Run BOLD QC on one series and keep the intermediate images.

    See :func:`bold_metrics` for the parameters and the outputs; this function
    also returns the mean image, the mask, the realigned series and the motion
    table (for reports and carpet plots).
    """
    data, vox, tr_value = _validate(series, zooms, tr)
    n_all = data.shape[3]
    if dummy_scans is None:
        n_dummy = min(detect_dummy_scans(data), n_all - MIN_STEADY_VOLUMES)
    else:
        n_dummy = int(dummy_scans)
        if n_dummy < 0 or n_all - n_dummy < MIN_STEADY_VOLUMES:
            raise BoldInputError(f"dropping {n_dummy} dummy scans of {n_all} volumes leaves "
                                 f"fewer than {MIN_STEADY_VOLUMES} volumes for QC")
    # Volumes first (t, x, y, z), contiguous: one volume is one block of memory.
    steady = np.ascontiguousarray(np.moveaxis(data[..., n_dummy:], 3, 0), dtype=np.float32)

    motion = measure_motion(steady, vox, reference=0, volumes_first=True, radius=fd_radius)
    params = motion.params
    realigned = realign(steady, vox, params, order=1, volumes_first=True)
    del steady
    mean = realigned.mean(axis=0, dtype=np.float64)
    if mask is None:
        brain = bold_brain_mask(mean)
    else:
        brain = np.asarray(mask, dtype=bool)
        if brain.shape != mean.shape:
            raise BoldInputError(f"the mask shape {brain.shape} does not match the BOLD grid "
                                 f"{mean.shape}")
    if brain.sum() < 10:
        raise BoldInputError(f"the brain mask has {int(brain.sum())} voxels, too few for QC")
    voxels = np.ascontiguousarray(realigned[:, brain].T)  # (V, t) float32

    fd = framewise_displacement(params, radius=fd_radius)
    similarity = float(np.min(motion.similarity))  # nan: a volume left the FOV
    reliable, motion_note = motion_reliability(data.shape, vox, fd_radius,
                                               similarity=similarity,
                                               disagreement_mm=motion.disagreement_mm)
    dv_std, dv_nstd, dv_vstd = voxel_dvars(voxels)
    epi = np.clip(mean, 0.0, None)
    try:
        fwhm = np.asarray(fwhm_afni(epi, brain, vox), dtype=np.float64)
    except QCInputError:  # AFNI writes -1 where the estimate is undefined
        fwhm = np.full(3, np.nan)

    metrics: dict[str, float | int] = {}
    metrics.update(fd_summary(fd, fd_threshold))
    metrics.update({
        "dvars_std": float(np.mean(dv_std)),
        "dvars_nstd": float(np.mean(dv_nstd)),
        "dvars_vstd": float(np.mean(dv_vstd)),
        "gcor": voxel_gcor(voxels),
        "tsnr": float(np.median(tsnr_map(voxels))),
        "snr": bold_snr(epi, brain),
        "fber": bold_fber(epi, brain),
        "efc": efc(epi),
        **fwhm_columns(fwhm, vox),
        "dummy_trs": n_dummy,
        "motion_reliable": int(reliable),
        "isyb_motion_similarity": similarity,
        "isyb_motion_start_disagreement_mm": motion.disagreement_mm,
        "size_x": int(data.shape[0]),
        "size_y": int(data.shape[1]),
        "size_z": int(data.shape[2]),
        "size_t": int(realigned.shape[0]),
        "spacing_x": float(vox[0]),
        "spacing_y": float(vox[1]),
        "spacing_z": float(vox[2]),
        "spacing_tr": tr_value,
    })

    table: dict[str, np.ndarray] = {}
    nan_column = np.full(n_all, np.nan)
    for k, name in enumerate(PARAM_NAMES):
        column = nan_column.copy()
        column[n_dummy:] = params[:, k]
        table[name] = column
    for name, values in (("framewise_displacement", fd), ("dvars_std", dv_std),
                         ("dvars_nstd", dv_nstd), ("dvars_vstd", dv_vstd)):
        column = nan_column.copy()
        column[n_dummy + 1:] = values
        table[name] = column
    table["non_steady_state"] = np.arange(n_all) < n_dummy
    return BoldQC(metrics=metrics, table=table, mean=mean, mask=brain,
                  realigned=np.moveaxis(realigned, 0, 3), params=params, dummy_scans=n_dummy,
                  motion_note=motion_note)


def bold_metrics(series: np.ndarray, zooms: Sequence[float], tr: float | None, *,
                 mask: np.ndarray | None = None, fd_threshold: float = 0.2,
                 dummy_scans: int | None = None
                 ) -> tuple[dict[str, float | int], dict[str, np.ndarray]]:
    """Image quality metrics of one BOLD run (MRIQC's functional IQMs).

    Parameters
    ----------
    series:
        BOLD data ``(x, y, z, t)``, any real dtype, in the stored voxel order.
    zooms:
        Voxel sizes in mm (the first three values are used).
    tr:
        Repetition time in seconds (see :func:`repetition_time`).
    mask:
        Optional brain mask of the grid; default :func:`bold_brain_mask` of the
        mean realigned image.
    fd_threshold:
        FD threshold in mm for ``fd_num`` and ``fd_perc`` (strictly above).
    dummy_scans:
        Number of leading non-steady-state volumes to drop; default
        :func:`detect_dummy_scans`, capped so that at least
        :data:`MIN_STEADY_VOLUMES` volumes remain. The count is reported as
        ``dummy_trs`` (MRIQC's name).

    Returns
    -------
    metrics, table
        ``metrics``: ``fd_mean`` (mm), ``fd_num``, ``fd_perc`` (%),
        ``dvars_std``, ``dvars_nstd``, ``dvars_vstd`` (time averages of
        :func:`dvars`), ``gcor``, ``tsnr``, ``snr``, ``fber``, ``efc``,
        ``fwhm_x``, ``fwhm_y``, ``fwhm_z``, ``fwhm_avg`` (voxels; ``fwhm_*_mm``
        in mm), ``dummy_trs``, ``motion_reliable`` (1 or 0, see
        :func:`motion_reliability`) with isyb's ``isyb_motion_similarity``
        (lowest post-registration correlation) and
        ``isyb_motion_start_disagreement_mm`` (two starting points, mm),
        ``size_*`` and ``spacing_*`` (mm, ``spacing_tr`` in s).
        ``table``: one value per input volume for ``trans_x, trans_y, trans_z``
        (mm), ``rot_x, rot_y, rot_z`` (rad), ``framewise_displacement`` (mm),
        ``dvars_std``, ``dvars_nstd``, ``dvars_vstd``, NaN where undefined
        (dropped volumes; FD and DVARS of the first steady-state volume), and
        ``non_steady_state`` (bool).

    Raises
    ------
    BoldInputError
        (a ``ValueError``) for a 3-D image, fewer than 10 volumes, NaN or
        infinite values, bad voxel sizes, or a missing or non-positive TR.
    """
    result = run_bold_qc(series, zooms, tr, mask=mask, fd_threshold=fd_threshold,
                         dummy_scans=dummy_scans)
    return result.metrics, result.table


def bold_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a BOLD file, with BIDS inheritance when it lies in a dataset.

    The dataset root is the nearest folder above ``path`` with a
    ``dataset_description.json``; the sidecars then merge as
    :func:`isyb.bids.layout.metadata` says (top level first, the file's own
    last). Outside a dataset, only the file's own ``<stem>.json`` is read
    (empty when there is none).
    """
    path = Path(path)
    for folder in path.resolve().parents:
        if (folder / "dataset_description.json").is_file():
            return bids_metadata(folder, path.resolve())
    sidecar = Path(f"{strip_image_suffix(path)}.json")
    return read_json(sidecar) if sidecar.is_file() else {}


def qc_bold(image: str | os.PathLike | nib.spatialimages.SpatialImage, *,
            tr: float | None = None, fd_threshold: float = 0.2,
            metadata: Mapping[str, Any] | None = None) -> BoldQC:
    """Image quality metrics of one BOLD run, from a file or an in-memory nibabel image.

    Parameters
    ----------
    image:
        A NIfTI path, or a 4-D nibabel image (as nilearn's ``check_niimg``).
    tr:
        Repetition time in s; default ``metadata``'s ``RepetitionTime``, else
        the header's (:func:`repetition_time`).
    fd_threshold:
        FD threshold in mm for ``fd_num`` and ``fd_perc`` (strictly above).
    metadata:
        The run's BIDS metadata; default, for a path, :func:`bold_sidecar`
        (sidecars with BIDS inheritance), for an in-memory image none.

    Returns
    -------
    BoldQC
        Metrics, the per-frame table (:meth:`BoldQC.frames`) and the
        intermediate images (see :func:`bold_metrics`).

    Raises
    ------
    BoldInputError
        For an image that is not a 4-D series, or any problem
        :func:`bold_metrics` names.
    """
    if isinstance(image, nib.spatialimages.SpatialImage):
        img, name = image, "the image"
    elif isinstance(image, str | os.PathLike):
        img, name = load_image(image, allow_4d=True), str(image)
    else:
        raise TypeError(f"expected a path or a nibabel image, got {type(image).__name__}")
    if len(img.shape) != 4 or img.shape[3] < 2:
        raise BoldInputError(f"{name}: expected a 4-D BOLD series, got shape {img.shape}")
    if tr is None:
        if metadata is None and not isinstance(image, nib.spatialimages.SpatialImage):
            metadata = bold_sidecar(image)
        tr = repetition_time(img.header, metadata)
    try:
        series = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as exc:  # truncated or corrupt data
        raise BoldInputError(f"{name}: cannot be read as an image ({exc})") from None
    return run_bold_qc(series, img.header.get_zooms()[:3], tr, fd_threshold=fd_threshold)
