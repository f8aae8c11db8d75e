"""MRIQC's functional image quality metrics, as plain functions of arrays.

FD, DVARS, GCOR and tSNR of a realigned series in a brain mask; SNR and FBER
of the mean image; the intensity brain mask of a mean BOLD image, the
non-steady-state detector and the TR of a header or sidecar. No file input or
output; :mod:`isyb.qc.bold` runs them on one run.

MRIQC (24.x) computes them with nipype's ``TSNR``, ``ComputeDVARS`` and
``FramewiseDisplacement``, AFNI's ``@compute_gcor`` and ``3dFWHMx``,
SynthStrip for the brain mask, and ``mriqc.qc.anatomical`` for SNR, FBER and
EFC. The differences are listed in each function's docstring: in short, an
intensity-threshold brain mask instead of SynthStrip. EFC and FWHM are
:func:`isyb.qc.anat.efc` (over the whole image, as MRIQC for BOLD) and
:func:`isyb.qc.anat.fwhm_afni`; SNR and FBER have their own BOLD versions
here (:func:`bold_snr`, :func:`bold_fber`), since MRIQC defines them
differently for BOLD (no air mask).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "bold_brain_mask",
    "bold_fber",
    "bold_snr",
    "detect_dummy_scans",
    "dvars",
    "fd_summary",
    "framewise_displacement",
    "gcor",
    "repetition_time",
    "tsnr",
    "tsnr_map",
    "voxel_dvars",
    "voxel_gcor",
]


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
    return voxel_dvars(_masked(series, mask), intensity_normalization=intensity_normalization,
                       remove_zerovariance=remove_zerovariance, variance_tol=variance_tol)


def voxel_dvars(voxels: np.ndarray, *, intensity_normalization: float = 1000.0,
                remove_zerovariance: bool = True,
                variance_tol: float = 1e-7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`dvars` of the in-mask voxel time series, shape ``(V, t)`` (voxels, frames).

    For a caller that already holds the masked series (no second copy).
    """
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
    return voxel_gcor(_masked(series, mask))


def voxel_gcor(voxels: np.ndarray) -> float:
    """:func:`gcor` of the in-mask voxel time series, shape ``(V, t)`` (voxels, frames)."""
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
# Spatial metrics of the mean image (EFC and FWHM are isyb.qc.anat's)
# ---------------------------------------------------------------------------

def bold_snr(image: np.ndarray, mask: np.ndarray) -> float:
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


def bold_fber(image: np.ndarray, mask: np.ndarray) -> float:
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
