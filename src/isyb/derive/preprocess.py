"""Resting-state BOLD preprocessing numerics, after the ISYB data descriptor.

The descriptor preprocesses each rfMRI run thus: drop the first 5 volumes,
despike, motion-correct, scale the 4-D global mean to 10,000, regress out
nuisance signals and remove linear and quadratic trends. isyb does the same
in two calls on arrays (no file I/O here):

:func:`prepare_bold`
    1. :func:`drop_dummy` (5 volumes);
    2. :func:`despike` (robust smooth fit per voxel, spikes above 4 robust SDs
       replaced by linear interpolation in time), inside a dilated mask of the
       mean image;
    3. :func:`slice_timing_correct` when the BIDS ``SliceTiming`` is given
       (Fourier phase shift to the middle of the acquisition range, as
       fMRIPrep; the descriptor lists no slice-timing step, so it is
       optional; after despiking, as in AFNI's ``afni_proc.py``, so that a
       spike is not smeared over its neighbours first);
    4. rigid motion estimation against the **first kept volume** (as AFNI's
       ``3dvolreg`` in MRIQC and :mod:`isyb.qc.bold`) and realignment with
       cubic B-splines (:mod:`isyb.head.motion`);
    5. :func:`brain_mask_from_mean` on the mean realigned image;
    6. :func:`scale_global_mean` to 10,000 inside that mask.

:func:`clean_bold`
    :func:`nuisance_regression` of the Friston-24 motion model
    (:func:`friston24`), the mean white-matter and CSF signals
    (:func:`tissue_signals`, when their masks in BOLD space are given) and
    Legendre polynomials up to the quadratic, in one least-squares GLM per
    voxel; returns the residuals.

Not done here, on purpose:

* **ICA-AROMA** (or any ICA denoising) is out of scope: it needs FSL's
  MELODIC, data in MNI space and AROMA's component classifier.
* **No band-pass filter**: ALFF needs the 0.01-0.1 Hz band *and* fALFF the
  whole spectrum (:mod:`isyb.derive.rfmri`), so the residuals keep all
  frequencies; filter afterwards for connectivity if wanted.
* No spatial smoothing, no registration to a template, no scrubbing.

Conventions: series are ``(x, y, z, t)`` arrays (time last) with voxel sizes
in mm and the repetition time in seconds; masks are boolean ``(x, y, z)``;
motion tables are ``(t, 6)`` with translations in mm then rotations in radians
(:data:`isyb.head.motion.PARAM_NAMES`). Outputs are float32 unless a function
says otherwise. Bad input raises :class:`BoldPreprocessError`. The per-voxel
time-series steps (dummy volumes, despiking, slice timing) live in
:mod:`isyb.derive.timeseries` and are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from isyb.derive.timeseries import (
    _CHUNK,
    MIN_VOLUMES,
    BoldPreprocessError,
    _check_mask,
    _check_series,
    _float_dtype,
    _positive,
    despike,
    drop_dummy,
    slice_timing_correct,
)
from isyb.head.motion import PARAM_NAMES, estimate_motion, realign
from isyb.qc.bold import bold_brain_mask

__all__ = [
    "FRISTON24_NAMES",
    "MIN_VOLUMES",
    "BoldPreprocessError",
    "PreparedBold",
    "brain_mask_from_mean",
    "clean_bold",
    "despike",
    "drop_dummy",
    "friston24",
    "nuisance_regression",
    "prepare_bold",
    "scale_global_mean",
    "slice_timing_correct",
    "tissue_signals",
]

FRISTON24_NAMES = (
    *PARAM_NAMES,
    *(f"{name}_derivative1" for name in PARAM_NAMES),
    *(f"{name}_power2" for name in PARAM_NAMES),
    *(f"{name}_derivative1_power2" for name in PARAM_NAMES),
)
"""Column names of :func:`friston24`, spelled as fMRIPrep's confounds table."""


@dataclass
class PreparedBold:
    """A run after :func:`prepare_bold`, ready for :func:`clean_bold`.

    ``data`` is float32 ``(x, y, z, t)``, motion-corrected and scaled so that its
    mean inside ``mask`` is 10,000; ``mean`` its temporal mean (float32);
    ``motion`` the ``(t, 6)`` rigid motion of each kept volume relative to the
    reference (mm, radians); ``n_spikes`` the number of samples despiking
    replaced; ``n_dummy`` the volumes dropped; ``tr`` the repetition time (s);
    ``timings`` the wall time in seconds of each stage that ran.
    """

    data: np.ndarray
    mean: np.ndarray
    mask: np.ndarray
    motion: np.ndarray
    n_spikes: int
    n_dummy: int
    tr: float
    timings: dict[str, float] = field(default_factory=dict)



_despike_series = despike
""":func:`despike` under a name that :func:`prepare_bold`'s ``despike`` flag does not hide."""


# ---------------------------------------------------------------------------
# Scaling, masks and nuisance signals
# ---------------------------------------------------------------------------

def scale_global_mean(series: np.ndarray, mask: np.ndarray, target: float = 10000.0
                      ) -> np.ndarray:
    """Multiply the run so that its mean over the mask and all volumes is ``target``.

    The descriptor's "scale the 4-D global mean to 10,000" (one factor for
    the whole run, as FSL's ``-inm 10000`` "grand mean scaling"). Returns
    float32 (float64 for float64 input).
    """
    data = _check_series(series)
    inside = _check_mask(mask, data.shape[:3])
    goal = _positive(target, "target mean")
    current = float(np.mean(data[inside], dtype=np.float64))
    if not current > 0:
        raise BoldPreprocessError(f"the mean inside the mask is {current:g}; it must be "
                                  f"positive to scale to {goal:g}")
    return np.multiply(data, goal / current, dtype=_float_dtype(data))


def brain_mask_from_mean(mean: np.ndarray) -> np.ndarray:
    """A brain mask of the mean EPI image by intensity (boolean, the image's shape).

    Otsu's threshold, one opening, the largest connected component and holes
    filled (:func:`isyb.qc.bold.bold_brain_mask`, the QC mask). A fallback
    for runs with no T1w brain mask brought into BOLD space; raises
    :class:`BoldPreprocessError` when nothing survives.
    """
    image = np.asarray(mean)
    if image.ndim != 3:
        raise BoldPreprocessError(f"the mean BOLD image must be 3-D, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise BoldPreprocessError("the mean BOLD image contains NaN or infinite values")
    mask = bold_brain_mask(image)
    if not mask.any():
        raise BoldPreprocessError("no brain found in the mean BOLD image (no positive voxels)")
    return mask


def _mask_mean(data: np.ndarray, mask: np.ndarray, what: str) -> np.ndarray:
    """Mean of the 4-D ``data`` over a non-empty mask, per volume (float64)."""
    inside = _check_mask(mask, data.shape[:3], what)
    return data[inside].mean(axis=0, dtype=np.float64)


def tissue_signals(series: np.ndarray, wm: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """Mean white-matter and CSF signal per volume: float64 ``(t, 2)``.

    Column 0 is the mean over ``wm``, column 1 over ``csf`` (boolean masks of
    the BOLD grid, e.g. eroded T1w tissue masks resampled to BOLD space). An
    empty mask raises :class:`BoldPreprocessError`.
    """
    data = _check_series(series)
    return np.stack([_mask_mean(data, wm, "white-matter mask"),
                     _mask_mean(data, csf, "CSF mask")], axis=1)


def friston24(motion: np.ndarray) -> np.ndarray:
    """The Friston-24 motion regressors of a ``(t, 6)`` table: float64 ``(t, 24)``.

    Columns, in blocks of six (names :data:`FRISTON24_NAMES`): the parameters
    ``R_t``, their backward differences ``R_t - R_{t-1}`` (0 in the first
    row), ``R_t^2`` and the squared differences. This is the derivative form
    of Satterthwaite et al. (2013, NeuroImage 64:240) and fMRIPrep's
    ``*_derivative1`` / ``*_power2`` confounds (fMRIPrep fills the first
    derivative with NaN). Friston et al. (1996, MRM 35:346) used ``R_{t-1}``
    and ``R_{t-1}^2`` instead of the differences: the linear terms span the
    same space, the squared ones do not.
    """
    table = np.asarray(motion, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 6 or table.shape[0] < 1:
        raise BoldPreprocessError(f"a motion table is (t, 6), got shape {table.shape}")
    if not np.isfinite(table).all():
        raise BoldPreprocessError("the motion table contains NaN or infinite values")
    diff = np.zeros_like(table)
    diff[1:] = np.diff(table, axis=0)
    return np.concatenate([table, diff, table ** 2, diff ** 2], axis=1)


def _trend_names(polort: int) -> list[str]:
    return [f"legendre{k}" for k in range(polort + 1)]


def nuisance_regression(series: np.ndarray, mask: np.ndarray, regressors: np.ndarray, *,
                        polort: int = 2) -> np.ndarray:
    """Residuals of a least-squares fit of the regressors and trends, per voxel.

    Every voxel in ``mask`` gets one GLM, ``y = X b + e``, with ``X`` the
    ``(t, k)`` ``regressors`` plus Legendre polynomials of degree 0 to
    ``polort`` over the run (constant, linear, quadratic by default; AFNI's
    ``-polort``); the residuals ``e = y - X b`` are returned, float32, 0
    outside the mask. Columns are scaled to unit norm and the fit uses the
    SVD of ``X``, so collinear or all-zero regressors (no motion, say) are
    harmless: the residuals are those of ``numpy.linalg.lstsq``.

    The constant is removed, so the residuals have zero mean: ALFF, fALFF
    (which leave out the DC term), ReHo (ranks) and VMHC (correlations) do
    not use the mean.
    """
    data = _check_series(series)
    inside = _check_mask(mask, data.shape[:3])
    n = data.shape[3]
    regs = np.asarray(regressors, dtype=np.float64)
    if regs.ndim == 1:
        regs = regs[:, None]
    if regs.ndim != 2 or regs.shape[0] != n:
        raise BoldPreprocessError(f"regressors must be ({n}, k) for a run of {n} volumes, got "
                                  f"shape {regs.shape}")
    if not np.isfinite(regs).all():
        raise BoldPreprocessError("the regressors contain NaN or infinite values")
    if isinstance(polort, bool) or not isinstance(polort, int | np.integer) or polort < 0:
        raise BoldPreprocessError(f"polort must be an integer >= 0, got {polort!r}")
    trends = legendre.legvander(np.linspace(-1.0, 1.0, n), int(polort))
    design = np.concatenate([regs, trends], axis=1)
    if design.shape[1] >= n:
        raise BoldPreprocessError(f"{design.shape[1]} regressors (with trends) leave no degrees "
                                  f"of freedom in {n} volumes")
    norms = np.linalg.norm(design, axis=0)
    design = design[:, norms > 0] / norms[norms > 0]
    u, s, _ = np.linalg.svd(design, full_matrices=False)
    basis = u[:, s > s[0] * max(design.shape) * np.finfo(np.float64).eps]
    out = np.zeros(data.shape, dtype=np.float32)
    index = np.flatnonzero(inside)
    source = data.reshape(-1, n)
    target = out.reshape(-1, n)
    for start in range(0, index.size, _CHUNK):
        chunk = index[start:start + _CHUNK]
        y = np.asarray(source[chunk], dtype=np.float64)
        target[chunk] = y - (y @ basis) @ basis.T
    return out


# ---------------------------------------------------------------------------
# The two steps
# ---------------------------------------------------------------------------

def prepare_bold(series: np.ndarray, zooms: Sequence[float], tr: float, *,
                 slice_timing: Sequence[float] | None = None, slice_axis: int = 2,
                 n_dummy: int = 5, despike: bool = True, spike_threshold: float = 4.0,
                 reference: int | str = 0, interpolation_order: int = 3,
                 target: float = 10000.0) -> PreparedBold:
    """Drop dummies, despike, slice-time, realign, mask and scale one run.

    ``series`` is ``(x, y, z, t)`` with voxel sizes ``zooms`` (mm) and
    repetition time ``tr`` (s). The stages, in order (module docstring):
    :func:`drop_dummy` (``n_dummy``), :func:`despike` (when ``despike``;
    inside :func:`brain_mask_from_mean` of the temporal mean dilated by 2
    voxels, as 3dDespike works inside a dilated automask),
    :func:`slice_timing_correct` (when ``slice_timing`` is given),
    :func:`isyb.head.motion.estimate_motion` against ``reference`` (default 0,
    the first kept volume; ``"median"`` for the temporal median) and
    :func:`isyb.head.motion.realign` (spline ``interpolation_order``, cubic by
    default), :func:`brain_mask_from_mean` of the realigned mean and
    :func:`scale_global_mean` to ``target``. ``timings`` holds seconds per
    stage run: ``drop_dummy``, ``despike``, ``slice_timing``, ``motion``,
    ``realign``, ``mask``, ``scale``.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = now - clock
        clock = now

    data = _check_series(series)
    vox = np.asarray(zooms, dtype=np.float64).ravel()[:3]
    if vox.shape != (3,) or not np.all(np.isfinite(vox)) or np.any(vox <= 0):
        raise BoldPreprocessError(f"voxel sizes must be 3 positive numbers (mm), got {zooms!r}")
    tr_value = _positive(tr, "repetition time")
    if interpolation_order not in range(6):
        raise BoldPreprocessError(f"the interpolation order must be 0 to 5, got "
                                  f"{interpolation_order!r}")
    work = np.asarray(drop_dummy(data, n_dummy), dtype=np.float32)
    lap("drop_dummy")
    n_spikes = 0
    if despike:
        head = ndi.binary_dilation(brain_mask_from_mean(work.mean(axis=3)), iterations=2)
        work, n_spikes = _despike_series(work, head, threshold=spike_threshold)
        lap("despike")
    if slice_timing is not None:
        work = slice_timing_correct(work, tr_value, slice_timing, slice_axis=slice_axis)
        lap("slice_timing")
    volumes = np.ascontiguousarray(np.moveaxis(work, 3, 0))
    del work
    try:
        motion = estimate_motion(volumes, vox, reference=reference, volumes_first=True)
    except ValueError as exc:  # a bad reference volume
        raise BoldPreprocessError(str(exc)) from exc
    lap("motion")
    realigned = realign(volumes, vox, motion, order=interpolation_order, volumes_first=True)
    del volumes
    moved = np.ascontiguousarray(np.moveaxis(realigned, 0, 3))
    del realigned
    lap("realign")
    mask = brain_mask_from_mean(moved.mean(axis=3, dtype=np.float64))
    lap("mask")
    scaled = scale_global_mean(moved, mask, target)
    mean = scaled.mean(axis=3, dtype=np.float64).astype(np.float32)
    lap("scale")
    return PreparedBold(data=scaled, mean=mean, mask=mask, motion=motion, n_spikes=n_spikes,
                        n_dummy=int(n_dummy), tr=tr_value, timings=timings)



def clean_bold(prepared: PreparedBold, *, wm: np.ndarray | None = None,
               csf: np.ndarray | None = None, polort: int = 2
               ) -> tuple[np.ndarray, list[str]]:
    """Regress the nuisance signals out of a prepared run; returns (residuals, names).

    Regressors: :func:`friston24` of ``prepared.motion``, the mean signal in
    ``wm`` (``white_matter``) and in ``csf`` (``csf``) when those masks are
    given (each may be given alone), and Legendre polynomials up to
    ``polort`` (``legendre0`` .. ``legendre2``: constant, linear and quadratic
    trends), fitted by :func:`nuisance_regression` inside ``prepared.mask``.
    ``names`` lists every column of the design in order, so a run cleaned
    without tissue masks shows only the 24 motion terms and the trends.
    Residuals are float32 ``(x, y, z, t)``, 0 outside the mask. The run needs
    more volumes than regressors: at least 28 (30 with both tissue signals).
    """
    data = prepared.data
    columns = [friston24(prepared.motion)]
    names = list(FRISTON24_NAMES)
    for mask, name, what in ((wm, "white_matter", "white-matter mask"),
                             (csf, "csf", "CSF mask")):
        if mask is not None:
            columns.append(_mask_mean(data, mask, what)[:, None])
            names.append(name)
    design = np.concatenate(columns, axis=1)
    residuals = nuisance_regression(data, prepared.mask, design, polort=polort)
    return residuals, names + _trend_names(polort)
