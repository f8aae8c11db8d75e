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
says otherwise. Bad input raises :class:`BoldPreprocessError`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.polynomial import legendre
from scipy import ndimage as ndi

from isyb.errors import IsybError
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

MIN_VOLUMES = 10
"""Fewest volumes a run may keep after dropping the dummy scans."""

FRISTON24_NAMES = (
    *PARAM_NAMES,
    *(f"{name}_derivative1" for name in PARAM_NAMES),
    *(f"{name}_power2" for name in PARAM_NAMES),
    *(f"{name}_derivative1_power2" for name in PARAM_NAMES),
)
"""Column names of :func:`friston24`, spelled as fMRIPrep's confounds table."""

_MAD_TO_SD = 1.4826
"""SD of a normal distribution per median absolute deviation (1 / 0.6745)."""

_CHUNK = 16384
"""Voxels processed at once (bounds the float64 working memory)."""


class BoldPreprocessError(IsybError, ValueError):
    """A BOLD array or setting that the preprocessing cannot use."""


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


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def _check_series(series: np.ndarray) -> np.ndarray:
    data = np.asarray(series)
    if data.ndim != 4:
        raise BoldPreprocessError(f"a BOLD run must be a 4-D array (x, y, z, t), got shape "
                                  f"{data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise BoldPreprocessError(f"BOLD data must be real numbers, got dtype {data.dtype}")
    if np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        raise BoldPreprocessError("the BOLD run contains NaN or infinite values")
    return data


def _check_mask(mask: np.ndarray | None, shape: tuple[int, ...], what: str = "mask",
                *, allow_empty: bool = False) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    out = np.asarray(mask)
    if out.shape != shape:
        raise BoldPreprocessError(f"the {what} has shape {out.shape}, the BOLD grid is {shape}")
    out = out.astype(bool)
    if not allow_empty and not out.any():
        raise BoldPreprocessError(f"the {what} is empty")
    return out


def _positive(value: float, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BoldPreprocessError(f"the {what} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise BoldPreprocessError(f"the {what} must be a positive number, got {value!r}")
    return number


def _float_dtype(data: np.ndarray) -> np.dtype:
    """float64 stays float64; every other dtype becomes float32."""
    return np.result_type(data.dtype, np.float32)


# ---------------------------------------------------------------------------
# Volumes and spikes
# ---------------------------------------------------------------------------

def drop_dummy(series: np.ndarray, n_dummy: int = 5) -> np.ndarray:
    """The run without its first ``n_dummy`` (non-steady-state) volumes.

    Returns a view of ``series[..., n_dummy:]``. Raises
    :class:`BoldPreprocessError` when fewer than :data:`MIN_VOLUMES` would remain.
    """
    data = _check_series(series)
    if isinstance(n_dummy, bool) or not isinstance(n_dummy, int | np.integer) or n_dummy < 0:
        raise BoldPreprocessError(f"the number of dummy volumes must be an integer >= 0, "
                                  f"got {n_dummy!r}")
    kept = data.shape[3] - int(n_dummy)
    if kept < MIN_VOLUMES:
        raise BoldPreprocessError(f"dropping {n_dummy} dummy volumes of {data.shape[3]} leaves "
                                  f"{max(kept, 0)}; at least {MIN_VOLUMES} are needed")
    return data[..., int(n_dummy):]


def _smooth_basis(n: int, n_harmonics: int) -> np.ndarray:
    """Orthonormal ``(n, k)`` basis of 3dDespike's curve: a quadratic plus sinusoids.

    Columns span ``1, t, t^2`` and ``sin(2 pi j t / n), cos(2 pi j t / n)`` for
    ``j = 1 .. n_harmonics`` (``t`` the volume index).
    """
    x = np.linspace(-1.0, 1.0, n)
    columns = [legendre.legvander(x, 2)]
    phase = 2.0 * np.pi * np.arange(n)[:, None] * np.arange(1, n_harmonics + 1)[None, :] / n
    columns += [np.sin(phase), np.cos(phase)]
    q, _ = np.linalg.qr(np.concatenate(columns, axis=1))
    return q


def _robust_sd(resid: np.ndarray, floor: np.ndarray) -> np.ndarray:
    """1.4826 x the median absolute residual of each row, at least ``floor``."""
    return np.maximum(_MAD_TO_SD * np.median(np.abs(resid).astype(np.float32), axis=1), floor)


def _robust_fit(voxels: np.ndarray, basis: np.ndarray, clip: float, max_iter: int = 50,
                tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Huber M-estimate of each row of ``voxels`` on ``basis``; returns (fit, sigma).

    Huber's iteration with pseudo-observations (Huber & Ronchetti 2009,
    "Robust Statistics", section 7.8), with the scale held at its first
    estimate: fit by least squares, take the robust SD of the residuals,
    then repeatedly winsorise the residuals at ``clip`` SDs and refit the
    winsorised data, until the fit of a row moves by less than ``tol`` SDs
    (converged rows drop out of the loop). This is statsmodels' ``RLM`` with
    ``HuberT(clip)`` and ``update_scale=False``. The returned ``sigma`` is
    re-estimated from the final residuals. Robust SD: 1.4826 times the median
    absolute residual (about the curve, not about the residuals' median),
    with a floor of 1e-6 times the row's RMS so that an exactly smooth series
    has a finite, tiny SD (0 for an all-zero row). ``basis`` has orthonormal
    columns.
    """
    floor = 1e-6 * np.sqrt(np.mean(voxels * voxels, axis=1))
    fit = (voxels @ basis) @ basis.T
    limit = clip * _robust_sd(voxels - fit, floor)
    active = np.arange(voxels.shape[0])
    for _ in range(max_iter):
        current = fit[active]
        bound = limit[active, None]
        resid = np.clip(voxels[active] - current, -bound, bound)
        new = ((current + resid) @ basis) @ basis.T
        fit[active] = new
        moved = np.max(np.abs(new - current), axis=1)
        active = active[moved > tol * bound[:, 0] / clip]
        if active.size == 0:
            break
    return fit, _robust_sd(voxels - fit, floor)


def _interpolate_gaps(values: np.ndarray, bad: np.ndarray) -> None:
    """Replace ``values[bad]`` in place, row by row, by linear interpolation in time.

    Each bad sample gets the straight line between the nearest good samples
    before and after it; at either end of a row, the nearest good sample's
    value. Every row must keep at least one good sample.
    """
    n = values.shape[1]
    index = np.arange(n)
    before = np.maximum.accumulate(np.where(bad, -1, index), axis=1)
    after = np.minimum.accumulate(np.where(bad, n, index)[:, ::-1], axis=1)[:, ::-1]
    rows, cols = np.nonzero(bad)
    lo = before[rows, cols]
    hi = after[rows, cols]
    lo = np.where(lo >= 0, lo, hi)  # no good sample before: hold the next one
    hi = np.where(hi < n, hi, lo)  # none after: hold the previous one
    weight = np.where(hi > lo, (cols - lo) / np.maximum(hi - lo, 1), 0.0)
    values[rows, cols] = values[rows, lo] + weight * (values[rows, hi] - values[rows, lo])


def _despike_rows(voxels: np.ndarray, threshold: float, clip: float,
                  n_harmonics: int | None) -> tuple[np.ndarray, int]:
    """Despike the ``(V, t)`` rows; returns (cleaned float64 rows, spike count)."""
    n = voxels.shape[1]
    harmonics = n // 30 if n_harmonics is None else int(n_harmonics)
    if harmonics < 0:
        raise BoldPreprocessError(f"n_harmonics must be >= 0, got {n_harmonics!r}")
    basis = _smooth_basis(n, harmonics)
    if basis.shape[1] >= n:
        raise BoldPreprocessError(f"{n} volumes are too few for a smooth fit with "
                                  f"{basis.shape[1]} terms")
    rows = np.array(voxels, dtype=np.float64)
    fit, sigma = _robust_fit(rows, basis, clip)
    spikes = np.abs(rows - fit) > threshold * sigma[:, None]
    spikes[sigma <= 0] = False
    hit = np.flatnonzero(np.any(spikes, axis=1))
    if hit.size:
        cleaned = rows[hit]
        _interpolate_gaps(cleaned, spikes[hit])
        rows[hit] = cleaned
    return rows, int(spikes.sum())


def despike(series: np.ndarray, mask: np.ndarray | None = None, *, threshold: float = 4.0,
            clip: float = 2.5, n_harmonics: int | None = None) -> tuple[np.ndarray, int]:
    """Remove temporal spikes voxel by voxel; returns ``(cleaned, n_spikes)``.

    The rule follows AFNI's ``3dDespike`` (Cox 1996; program help):

    * Fit each voxel's series with a smooth curve: a quadratic plus
      ``n_harmonics`` sine/cosine pairs over the run (default ``t // 30``, as
      ``3dDespike -corder``). AFNI fits by L1 regression; isyb fits a Huber
      M-estimate (clipping residuals at ``clip`` = 2.5 robust SDs, AFNI's
      ``c1``), which is as insensitive to spikes and vectorises over voxels.
    * sigma = 1.4826 x the median absolute residual (AFNI:
      sqrt(pi/2) x the mean absolute residual); s = (value - curve) / sigma.
    * A sample with ``|s| > threshold`` (default 4, AFNI's ``c2``, the largest
      deviation 3dDespike lets through) is a spike. AFNI squashes every value
      above ``c1`` towards ``c2``; isyb leaves values below ``threshold``
      untouched and *replaces* spikes by linear interpolation in time between
      the nearest non-spike samples of that voxel (the nearest non-spike value
      at the ends of the run).

    On Gaussian noise (no spikes) the rule flags about 2e-4 of the samples
    of a 240-volume run, 4e-4 at 90 volumes and 3e-3 at 15 (the normal tail
    beyond 4 SD is 6e-5; the rest comes from the scatter of the MAD of short
    series); ``tests/test_preprocess.py`` measures it. Voxels outside ``mask``
    (default: all) are copied unchanged. Returns float32 data (float64 if the
    input is float64) and the number of replaced samples.
    """
    data = _check_series(series)
    inside = _check_mask(mask, data.shape[:3], allow_empty=True)
    if not 0 < clip <= threshold:
        raise BoldPreprocessError(f"need 0 < clip <= threshold, got clip={clip}, "
                                  f"threshold={threshold}")
    out = np.array(data, dtype=_float_dtype(data))
    index = np.flatnonzero(inside)
    flat = out.reshape(-1, out.shape[3])
    total = 0
    for start in range(0, index.size, _CHUNK):
        chunk = index[start:start + _CHUNK]
        cleaned, count = _despike_rows(flat[chunk], threshold, clip, n_harmonics)
        flat[chunk] = cleaned
        total += count
    return out, total


_despike_series = despike
""":func:`despike` under a name that :func:`prepare_bold`'s ``despike`` flag does not hide."""


# ---------------------------------------------------------------------------
# Slice timing
# ---------------------------------------------------------------------------

def slice_timing_correct(series: np.ndarray, tr: float, slice_timing: Sequence[float], *,
                         slice_axis: int = 2, reference_time: float | None = None
                         ) -> np.ndarray:
    """Shift every slice's time series to one reference time within the TR.

    ``slice_timing`` is BIDS ``SliceTiming``: the acquisition time (s, from
    the start of each volume) of every slice along ``slice_axis``, each in
    ``[0, tr)``. Sample ``n`` of a slice acquired at ``s`` was taken at
    ``n tr + s``; the output holds the series at ``n tr + reference_time``.
    The default reference is fMRIPrep's (``slice_time_ref = 0.5``): the
    middle of the acquisition range, ``min + (max - min) / 2``.

    Interpolation is a Fourier phase shift (sinc interpolation of a
    band-limited series), the default of AFNI's ``3dTshift`` and SPM's
    ``spm_slice_timing``: each series is extended by its time-reversed copy
    to ``2 t`` samples (so that the periodic continuation has no jump), its
    spectrum multiplied by ``exp(2 pi i f d)`` with ``d = (reference - s) / tr``
    samples, and cut back to ``t``. The first and last few samples need values
    from before or after the run, for which the mirror stands in: on the
    test's signal (SD 4.6, up to 0.09 Hz at a 2 s TR, shifts up to 0.9 s) the
    error is 0.9 at the first sample, 0.06 at the third and below 0.02 from
    the fifth on. Returns float32 (float64 for float64 input).
    """
    data = _check_series(series)
    tr_value = _positive(tr, "repetition time")
    if slice_axis not in (0, 1, 2):
        raise BoldPreprocessError(f"slice_axis must be 0, 1 or 2, got {slice_axis!r}")
    try:
        times = np.asarray(slice_timing, dtype=np.float64)
    except (TypeError, ValueError):
        raise BoldPreprocessError(f"SliceTiming must be a list of numbers, got "
                                  f"{slice_timing!r}") from None
    n_slices = data.shape[slice_axis]
    if times.shape != (n_slices,):
        raise BoldPreprocessError(f"SliceTiming has {times.size} entries, the BOLD run has "
                                  f"{n_slices} slices along axis {slice_axis}")
    if not np.all(np.isfinite(times)) or np.any(times < 0) or np.any(times >= tr_value):
        raise BoldPreprocessError(f"SliceTiming values must lie in [0, TR = {tr_value:g} s), "
                                  f"got {times.min():g} to {times.max():g}")
    if reference_time is None:
        ref = float(times.min() + 0.5 * (times.max() - times.min()))
    else:
        ref = float(reference_time)
        if not math.isfinite(ref) or not 0 <= ref < tr_value:
            raise BoldPreprocessError(f"the reference time must lie in [0, TR = {tr_value:g} s), "
                                      f"got {reference_time!r}")
    n = data.shape[3]
    freqs = np.fft.rfftfreq(2 * n)  # cycles per sample
    out = np.empty(data.shape, dtype=_float_dtype(data))
    for k in range(n_slices):
        index = [slice(None)] * 4
        index[slice_axis] = k
        where = tuple(index)
        shift = (ref - times[k]) / tr_value
        if shift == 0:
            out[where] = data[where]
            continue
        x = np.asarray(data[where], dtype=np.float64)
        extended = np.concatenate([x, x[..., ::-1]], axis=-1)
        spectrum = np.fft.rfft(extended, axis=-1) * np.exp(2j * np.pi * freqs * shift)
        out[where] = np.fft.irfft(spectrum, n=2 * n, axis=-1)[..., :n]
    return out


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
