"""Image quality metrics of a BOLD run, after MRIQC's functional IQMs.

Every metric is a plain function of arrays, with no file input or output.
:func:`bold_metrics` runs the whole chain on one 4-D series:

1. Drop the non-steady-state ("dummy") volumes at the start of the run.
2. Estimate rigid head motion of every volume against the first steady-state
   volume (:mod:`isyb.head.motion`) and resample the series onto it (trilinear).
3. Average the realigned series (the mean BOLD image) and mask the brain on it
   (:func:`bold_brain_mask`).
4. Temporal metrics on the realigned series in the mask: FD, DVARS, GCOR,
   tSNR. Spatial metrics on the mean image: SNR, FBER, EFC, FWHM.

MRIQC (24.x) does the same steps with AFNI's ``3dvolreg -Fourier -twopass``
(base: the first volume) for the motion parameters, NiTransforms (cubic
splines) for the resampling, SynthStrip for the brain mask, nipype's
``TSNR``, ``ComputeDVARS`` and ``FramewiseDisplacement``, AFNI's
``@compute_gcor`` and ``3dFWHMx``, and ``mriqc.qc.anatomical`` for SNR, FBER
and EFC. The differences are listed in each function's docstring; in short:
the motion engine of :mod:`isyb.head.motion`, trilinear resampling (a cubic
one costs about 6 times more; it smooths the noise of moved volumes a little, which
lowers their DVARS slightly), an intensity-threshold brain mask instead of
SynthStrip, and ``fwhm_*`` in mm where MRIQC divides AFNI's mm by the voxel
size (MRIQC's ``fwhm_*`` are in voxels). EFC and FWHM are
:func:`isyb.qc.anat.efc` (over the whole image, as MRIQC for BOLD) and
:func:`isyb.qc.anat.fwhm_afni`; SNR and FBER have their own BOLD versions
here, since MRIQC defines them differently for BOLD (no air mask).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from isyb.head.motion import PARAM_NAMES, estimate_motion, realign
from isyb.qc.anat import QCInputError, efc, fwhm_afni

__all__ = [
    "MIN_VOLUMES",
    "BoldInputError",
    "BoldQC",
    "bold_brain_mask",
    "bold_metrics",
    "detect_dummy_scans",
    "dvars",
    "fd_summary",
    "framewise_displacement",
    "gcor",
    "repetition_time",
    "run_bold_qc",
    "tsnr",
    "tsnr_map",
]

MIN_VOLUMES = 10
"""Fewest volumes a run may have, and fewest steady-state volumes QC runs on."""


class BoldInputError(QCInputError):
    """A BOLD input that QC cannot use (wrong dimensions, too short, NaNs, no TR).

    A :class:`ValueError` for library callers and an :class:`~isyb.errors.IsybError`
    (through :class:`isyb.qc.anat.QCInputError`) for the command line, which
    reports it in one line with exit code 2.
    """


# ---------------------------------------------------------------------------
# Framewise displacement
# ---------------------------------------------------------------------------

def framewise_displacement(params: np.ndarray, radius: float = 50.0) -> np.ndarray:
    """Framewise displacement (FD) of Power et al. (2012), in mm.

    ``FD_t = |dx_t| + |dy_t| + |dz_t| + r (|da_t| + |db_t| + |dg_t|)`` with the
    backward differences ``d*_t = p_t - p_(t-1)`` of the three translations
    (mm) and the three rotations (radians), the rotations turned into arc
    lengths on a sphere of ``radius`` mm (50 mm, Power et al. 2012, NeuroImage
    59(3):2142-2154). Same as nipype's ``FramewiseDisplacement`` (which MRIQC
    uses) and FSL's ``fsl_motion_outliers``.

    Parameters
    ----------
    params:
        Motion table, shape ``(t, 6)``: translations (mm) then rotations
        (radians), as :func:`isyb.head.motion.estimate_motion` returns (nipype's
        ``parameter_source="SPM"`` order).
    radius:
        Head radius in mm for the rotation terms.

    Returns
    -------
    numpy.ndarray
        ``t - 1`` values, FD of frames 1 to ``t - 1`` (frame 0 has none).
    """
    table = np.asarray(params, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 6:
        raise ValueError(f"motion parameters must have shape (t, 6), got {table.shape}")
    diff = np.abs(np.diff(table, axis=0))
    return diff[:, :3].sum(axis=1) + radius * diff[:, 3:].sum(axis=1)


def fd_summary(fd: np.ndarray, threshold: float = 0.2) -> dict[str, float | int]:
    """Summary of FD as MRIQC reports it: ``fd_mean``, ``fd_num``, ``fd_perc``.

    ``fd`` holds the ``t - 1`` FD values of :func:`framewise_displacement` (mm).
    ``fd_mean`` is their mean (mm); ``fd_num`` counts the frames with FD
    strictly above ``threshold`` (``>``, as MRIQC's ``FunctionalQC``);
    ``fd_perc`` is ``100 * fd_num / t``, a percentage of all ``t`` frames of
    the run (MRIQC divides by ``len(fd) + 1``).
    """
    values = np.asarray(fd, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("FD needs at least two volumes")
    num = int(np.count_nonzero(values > threshold))
    return {
        "fd_mean": float(values.mean()),
        "fd_num": num,
        "fd_perc": float(num * 100.0 / (values.size + 1)),
    }


# ---------------------------------------------------------------------------
# DVARS
# ---------------------------------------------------------------------------

def _masked(series: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The in-mask voxel time series of a 4-D ``(x, y, z, t)`` series, shape ``(V, t)``."""
    data = np.asarray(series)
    brain = np.asarray(mask, dtype=bool)
    if data.ndim != 4 or brain.shape != data.shape[:3]:
        raise ValueError(f"need a 4-D series and a 3-D mask of its grid, got {data.shape} "
                         f"and {brain.shape}")
    if not brain.any():
        raise ValueError("the mask is empty")
    return data[brain]


def dvars(series: np.ndarray, mask: np.ndarray, *, intensity_normalization: float = 1000.0,
          remove_zerovariance: bool = True,
          variance_tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DVARS and its standardized versions (Power 2012; Nichols 2013), as nipype.

    Follows ``nipype.algorithms.confounds.compute_dvars`` step by step (MRIQC
    runs it through ``ComputeDVARS`` with its defaults, which are this
    function's defaults):

    1. ``Y`` = the in-mask voxel time series (float32); if
       ``intensity_normalization`` is not 0, ``Y <- Y / median(Y) * 1000``
       (median over all voxels and frames), so DVARS is in units of 0.1 % of
       the median BOLD signal.
    2. Robust SD per voxel: ``(P75 - P25) / 1.349``, percentiles with the
       "lower" rule (as FSL).
    3. With ``remove_zerovariance``, drop voxels whose robust SD is not above
       ``variance_tol``.
    4. AR(1) coefficient per voxel by Yule-Walker on the demeaned series
       (``rho = r1 / r0``, ``r_k = sum_n y[n + k] y[n]``; nipype uses nitime's
       ``AR_est_YW``), and the predicted SD of the temporal difference
       ``sd_diff = sqrt(2 (1 - rho)) * robust SD``.
    5. ``dvars_nstd_t = sqrt(mean_v (Y_v,t - Y_v,t-1)^2)`` (Power 2012);
       ``dvars_std_t = dvars_nstd_t / mean_v sd_diff_v`` (Nichols 2013);
       ``dvars_vstd_t = sqrt(mean_v ((Y_v,t - Y_v,t-1) / sd_diff_v)^2)``.

    The arithmetic follows nipype's data types (float32 data, differences and
    their mean square; float64 for the AR(1) coefficient and the
    standardization), so results agree with nipype to about 1e-8 relative;
    the one difference is that nipype gets ``r0`` and ``r1`` from a float32
    FFT autocorrelation and this function from float64 sums. A voxel whose
    demeaned series is all zeros (possible only without
    ``remove_zerovariance``) gets ``rho = 0`` where nipype fails.

    Parameters
    ----------
    series:
        Realigned BOLD data ``(x, y, z, t)``.
    mask:
        Brain mask ``(x, y, z)``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(dvars_std, dvars_nstd, dvars_vstd)``, each with ``t - 1`` values
        (frames 1 to ``t - 1``); ``dvars_std`` and ``dvars_vstd`` are unitless,
        ``dvars_nstd`` is in the normalized intensity units of step 1.
    """
    return _dvars(_masked(series, mask), intensity_normalization=intensity_normalization,
                  remove_zerovariance=remove_zerovariance, variance_tol=variance_tol)


def _dvars(voxels: np.ndarray, *, intensity_normalization: float, remove_zerovariance: bool,
           variance_tol: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dvars` of the ``(V, t)`` in-mask time series."""
    func = np.asarray(voxels, dtype=np.float32)
    if func.ndim != 2 or func.shape[0] == 0 or func.shape[1] < 2:
        raise ValueError("DVARS needs a non-empty mask and at least two volumes")
    if intensity_normalization != 0:
        func = (func / np.median(func)) * np.float32(intensity_normalization)
    lo, hi = np.percentile(func, [25, 75], axis=1, method="lower")
    robust_sd = (hi - lo) / 1.349  # float32, as nipype
    if remove_zerovariance:
        keep = robust_sd > variance_tol
        func = func[keep]
        robust_sd = robust_sd[keep]
        if func.shape[0] == 0:
            raise ValueError("every voxel of the DVARS mask has zero variance")
    demeaned = (func - func.mean(axis=1, keepdims=True, dtype=np.float64)).astype(np.float32)
    r0 = np.einsum("ij,ij->i", demeaned, demeaned, dtype=np.float64)
    r1 = np.einsum("ij,ij->i", demeaned[:, 1:], demeaned[:, :-1], dtype=np.float64)
    ar1 = np.divide(r1, r0, out=np.zeros_like(r1), where=r0 > 0)
    diff_sd = np.sqrt(2.0 * (1.0 - ar1)) * robust_sd
    diff = np.diff(func, axis=1)  # float32, as nipype
    dvars_nstd = np.sqrt(np.square(diff).mean(axis=0)).astype(np.float64)
    dvars_std = dvars_nstd / diff_sd.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = diff / diff_sd[:, None]
    dvars_vstd = np.sqrt(np.mean(scaled * scaled, axis=0))
    return dvars_std, dvars_nstd, dvars_vstd


# ---------------------------------------------------------------------------
# GCOR and tSNR
# ---------------------------------------------------------------------------

def gcor(series: np.ndarray, mask: np.ndarray) -> float:
    """Global correlation (GCOR) of Saad et al. (2013), as AFNI's ``@compute_gcor``.

    Each in-mask voxel time series is demeaned and scaled to unit Euclidean
    norm (``u_v``); with ``g`` their average over the ``N`` voxels,
    ``GCOR = ||g||^2 = (1/N^2) sum_ij corr(v_i, v_j)``, the mean of the full
    voxel-by-voxel correlation matrix (diagonal included), without forming it.
    Unitless, in [0, 1]. Voxels with a constant series (no correlation
    defined) are left out. MRIQC's documentation writes "unit-variance" series
    and a ``1/N`` factor; AFNI's script and this function use unit-norm series,
    which is what makes GCOR the average correlation.
    """
    return _gcor(_masked(series, mask))


def _gcor(voxels: np.ndarray) -> float:
    """:func:`gcor` of the ``(V, t)`` in-mask time series."""
    vals = np.asarray(voxels, dtype=np.float64)
    vals = vals - vals.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", vals, vals))
    keep = norms > 0
    if not np.any(keep):
        raise ValueError("GCOR needs at least one non-constant voxel in the mask")
    unit = vals[keep] / norms[keep, None]
    mean_series = unit.mean(axis=0)
    return float(mean_series @ mean_series)


def tsnr_map(series: np.ndarray) -> np.ndarray:
    """Temporal SNR map: mean over time / SD over time, as nipype's ``TSNR``.

    ``series`` is ``(..., t)``, time last. SD with ``ddof=0`` (``numpy.std``);
    voxels whose SD is not above 1e-3 get 0. No detrending: MRIQC runs
    ``TSNR`` without ``regress_poly``. Unitless.
    """
    vals = np.asarray(series, dtype=np.float64)
    mean = vals.mean(axis=-1)
    sd = vals.std(axis=-1)
    out = np.zeros_like(mean)
    ok = sd > 1.0e-3
    out[ok] = mean[ok] / sd[ok]
    return out


def tsnr(series: np.ndarray, mask: np.ndarray) -> float:
    """MRIQC's ``tsnr``: the median of :func:`tsnr_map` over the brain mask (unitless)."""
    return float(np.median(tsnr_map(_masked(series, mask))))


# ---------------------------------------------------------------------------
# Spatial metrics of the mean image (EFC and FWHM come from isyb.qc.anat)
# ---------------------------------------------------------------------------

def _snr_fg(image: np.ndarray, mask: np.ndarray) -> float:
    """MRIQC's BOLD ``snr``: ``median_F / (sigma_F sqrt(n / (n - 1)))``.

    ``median_F`` and ``sigma_F`` (``ddof=0``) are the median and SD of the
    image in the brain mask, ``n`` its voxel count: the SD term is the sample
    SD (``ddof=1``). ``mriqc.qc.anatomical.snr`` with ``summary_stats`` of the
    mean EPI in the brain mask. Unitless.
    """
    vals = np.asarray(image, dtype=np.float64)[np.asarray(mask, dtype=bool)]
    if vals.size < 2:
        return float("nan")
    sd = vals.std(ddof=1)
    return float(np.median(vals) / sd) if sd > 0 else float("nan")


def _fber(image: np.ndarray, mask: np.ndarray) -> float:
    """FBER (Shehzad 2015), MRIQC's version: ``median(|F|^2) / median(|B|^2)``.

    ``F`` = voxels in the mask, ``B`` = all others. -1 when the background
    energy is below 1e-3 (no signal outside the mask, as MRIQC). Unitless.
    """
    img = np.abs(np.asarray(image, dtype=np.float64))
    inside = np.asarray(mask, dtype=bool)
    if inside.all() or not inside.any():
        return -1.0
    fg = np.median(img[inside] ** 2)
    bg = np.median(img[~inside] ** 2)
    if bg < 1.0e-3:
        return -1.0
    return float(fg / bg)


# ---------------------------------------------------------------------------
# Masks, dummy scans and TR
# ---------------------------------------------------------------------------

def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (maximum between-class variance) of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    weight1 = np.cumsum(hist).astype(np.float64)
    weight2 = weight1[-1] - weight1
    sum1 = np.cumsum(hist * centres)
    mean1 = np.divide(sum1, weight1, out=np.zeros_like(sum1), where=weight1 > 0)
    mean2 = np.divide(sum1[-1] - sum1, weight2, out=np.zeros_like(sum1), where=weight2 > 0)
    between = weight1 * weight2 * (mean1 - mean2) ** 2
    return float(edges[1 + int(np.argmax(between[:-1]))])


def bold_brain_mask(mean_image: np.ndarray) -> np.ndarray:
    """A brain mask of a mean BOLD image by intensity.

    1. Otsu's threshold on the voxels above 0 (EPI with fat suppression shows
       the brain bright and the scalp and skull dark).
    2. One binary opening (6-connected) to cut thin bridges to the scalp or
       ghosts, then the largest 6-connected component (the unopened
       thresholded mask is used when opening leaves nothing).
    3. Holes filled in 3-D, then slice by slice along each axis (so that
       ventricles or dark spots touching the slab's faces are filled too).

    MRIQC uses SynthStrip on the mean EPI instead; on EPI data with little
    signal outside the brain both give about the same region, and the metrics
    that use the mask (tSNR, DVARS, GCOR, SNR, FBER, FWHM) are medians or
    means over it. Returns a boolean array of the image's shape.
    """
    img = np.asarray(mean_image, dtype=np.float64)
    if img.ndim != 3:
        raise ValueError(f"the mean BOLD image must be 3-D, got shape {img.shape}")
    positive = img[img > 0]
    if positive.size == 0:
        return np.zeros(img.shape, dtype=bool)
    mask = img > _otsu_threshold(positive)
    opened = ndi.binary_opening(mask)
    if opened.any():
        mask = opened
    labels, count = ndi.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    mask = ndi.binary_fill_holes(mask)
    for axis in range(3):
        for index in range(mask.shape[axis]):
            sl = [slice(None)] * 3
            sl[axis] = index
            mask[tuple(sl)] = ndi.binary_fill_holes(mask[tuple(sl)])
    return mask


def detect_dummy_scans(series: np.ndarray, thresh: float = 3.5) -> int:
    """Number of non-steady-state volumes at the start, as nipype's detector.

    nipype's ``NonSteadyStateDetector`` (which MRIQC uses): the global signal
    (mean of each of the first 50 volumes over the whole image) gets a
    modified z-score ``0.6745 |g_t - median(g)| / MAD(g)`` (Iglewicz & Hoaglin
    1993), and the leading volumes with a score above ``thresh`` are counted
    until the first one at or below it.
    """
    data = np.asarray(series)
    if data.ndim != 4:
        raise ValueError(f"need a 4-D series, got shape {data.shape}")
    glob = data[..., :50].reshape(-1, min(50, data.shape[3])).mean(axis=0, dtype=np.float64)
    dev = np.abs(glob - np.median(glob))
    mad = np.median(dev)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = 0.6745 * dev / mad
    count = 0
    for value in score:
        if value <= thresh:  # False for NaN, as in nipype
            break
        count += 1
    return count


def repetition_time(header: Any, metadata: Mapping[str, Any] | None = None) -> float | None:
    """The TR in seconds from a BIDS sidecar, else from a NIfTI header; None if unknown.

    ``metadata["RepetitionTime"]`` (seconds, BIDS) wins when it is a positive
    number. Otherwise the header's fourth zoom (``pixdim[4]``) is used when it
    is positive and finite, converted from the header's time unit (``msec``
    and ``usec`` are scaled to seconds; ``sec`` or unknown are taken as
    seconds), and kept only when the result is between 0.05 and 100 s.
    ``header`` is a nibabel header (anything with ``get_zooms`` and, optionally,
    ``get_xyzt_units``).
    """
    if metadata is not None and "RepetitionTime" in metadata:
        try:
            value = float(metadata["RepetitionTime"])
        except (TypeError, ValueError):
            value = float("nan")
        if math.isfinite(value) and value > 0:
            return value
    zooms = tuple(header.get_zooms())
    if len(zooms) < 4:
        return None
    value = float(zooms[3])
    if not math.isfinite(value) or value <= 0:
        return None
    unit = "sec"
    if hasattr(header, "get_xyzt_units"):
        unit = header.get_xyzt_units()[1] or "sec"
    value *= {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    return value if 0.05 <= value <= 100.0 else None


# ---------------------------------------------------------------------------
# The whole run
# ---------------------------------------------------------------------------

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
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise BoldInputError(f"BOLD data must be real numbers, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise BoldInputError("the BOLD image contains NaN or infinite values")
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
        n_dummy = min(detect_dummy_scans(data), n_all - MIN_VOLUMES)
    else:
        n_dummy = int(dummy_scans)
        if n_dummy < 0 or n_all - n_dummy < MIN_VOLUMES:
            raise BoldInputError(f"dropping {n_dummy} dummy scans of {n_all} volumes leaves "
                                 f"fewer than {MIN_VOLUMES} volumes for QC")
    # Volumes first (t, x, y, z), contiguous: one volume is one block of memory.
    steady = np.ascontiguousarray(np.moveaxis(data[..., n_dummy:], 3, 0), dtype=np.float32)

    params = estimate_motion(steady, vox, reference=0, volumes_first=True)
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
    dv_std, dv_nstd, dv_vstd = _dvars(voxels, intensity_normalization=1000.0,
                                      remove_zerovariance=True, variance_tol=1e-7)
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
        "gcor": _gcor(voxels),
        "tsnr": float(np.median(tsnr_map(voxels))),
        "snr": _snr_fg(epi, brain),
        "fber": _fber(epi, brain),
        "efc": efc(epi),
        "fwhm_x": float(fwhm[0]),
        "fwhm_y": float(fwhm[1]),
        "fwhm_z": float(fwhm[2]),
        "fwhm_avg": float(np.mean(fwhm)),
        "dummy_trs": n_dummy,
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
                  realigned=np.moveaxis(realigned, 0, 3), params=params, dummy_scans=n_dummy)


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
        :data:`MIN_VOLUMES` volumes remain.

    Returns
    -------
    metrics, table
        ``metrics``: ``fd_mean`` (mm), ``fd_num``, ``fd_perc`` (%),
        ``dvars_std``, ``dvars_nstd``, ``dvars_vstd`` (time averages of
        :func:`dvars`), ``gcor``, ``tsnr``, ``snr``, ``fber``, ``efc``,
        ``fwhm_x``, ``fwhm_y``, ``fwhm_z``, ``fwhm_avg`` (mm), ``dummy_trs``,
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
