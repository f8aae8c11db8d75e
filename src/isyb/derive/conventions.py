"""Named conventions of the resting-state metrics: ``ccs`` (the default), ``dparsf`` and ``isyb``.

The arithmetic of ALFF, fALFF, ReHo and VMHC is the same in every pipeline;
what differs is how the spectrum is taken, which band edges are inclusive,
how the series is detrended and whether ReHo and VMHC see the band-passed
series. A convention fixes all of these, so that a map from ``isyb derive
--convention X`` can be compared with one from pipeline X. Each function
below cites the file of the pipeline's own code it follows.

**ccs** (Connectome Computation System, Xu et al. 2015; zuoxinian/CCS; the
pipeline of the ISYB descriptor):

* detrending: linear and quadratic (``3dDetrend -polort 2`` in
  ``H1/ccs_05_funcpreproc_cortex.sh``);
* ALFF/fALFF (``H2/ccs_06_singlesubjectALFF.sh``): an odd-length run loses its
  first volume (``N`` even); no zero padding (FSL ``fslpspec``); amplitude
  ``|X_k| / N`` (the power spectrum divided by ``N^2``, square-rooted) for
  ``k = 1 .. N/2``; the band starts at bin ``k1 = round(low N TR)`` and holds
  ``round((high - low) N TR + 1)`` bins; ALFF is the *sum* of the amplitudes
  in the band (the script's mean times the bin count), fALFF that sum over
  the sum of all ``N/2`` amplitudes. (CCS smooths by 6 mm before ALFF; isyb
  does not.)
* band-pass for ReHo and VMHC: AFNI ``3dFourier -lowpass 0.1 -highpass 0.01
  -retrend`` (``ccs_05_funcpreproc_cortex.sh``), see :func:`afni_fourier_bandpass`.

**dparsf** (DPARSF/DPABI, Yan & Zang 2010; Chaogan-Yan/DPABI):

* detrending: linear (DPARSF's default polynomial trend among the nuisance
  covariates, and MATLAB ``detrend`` again inside ``y_alff_falff.m``);
* ALFF/fALFF (``DPARSF_V3.0_140815/Subfunctions/y_alff_falff.m``, the same
  code as ``DPABISurf/Subfunctions/y_alff_falff_Surf.m``): the series is
  zero-padded to ``P = 2^nextpow2(N)``; amplitude ``2 |X_i| / N`` (``N`` the
  unpadded length); the band is the 1-based FFT indices
  ``ceil(low P TR + 1) .. fix(high P TR + 1)``; ALFF is their mean, fALFF
  their sum over the sum of indices ``2 .. P/2 + 1``;
* band-pass for ReHo and VMHC: ``y_IdealFilter.m`` (called by ``y_bandpass.m``),
  see :func:`dparsf_ideal_bandpass`.

**isyb** (isyb's own, as before this option existed): linear and quadratic
detrending, no padding, amplitude ``2 |X_k| / N``, band ``low <= f_k <= high``,
ALFF the mean and fALFF the band's share of ``k = 1 .. floor(N/2)``
(:func:`isyb.derive.rfmri.alff_falff`); ReHo and VMHC on the unfiltered
residuals.

All band edges default to 0.01-0.1 Hz (CCS's and DPARSF's default). Series
are ``(x, y, z, t)`` arrays with time last; ``(V, t)`` rows in the row
functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from isyb.derive.rfmri import RfmriInputError, alff_falff, band_bins, series_in_mask

CONVENTION_NAMES = ("ccs", "dparsf", "isyb")
DEFAULT_CONVENTION = "ccs"

_CHUNK = 16384
"""Voxels filtered at once (bounds the float64 working memory)."""


@dataclass(frozen=True)
class Convention:
    """What a pipeline's convention fixes (see the module docstring)."""

    name: str
    polort: int
    """Order of the polynomial trends removed with the nuisance regressors."""
    filtered_reho_vmhc: bool
    """Whether ReHo and VMHC use the band-passed series."""
    low: float = 0.01
    high: float = 0.1


CONVENTIONS = {
    "ccs": Convention("ccs", polort=2, filtered_reho_vmhc=True),
    "dparsf": Convention("dparsf", polort=1, filtered_reho_vmhc=True),
    "isyb": Convention("isyb", polort=2, filtered_reho_vmhc=False),
}


def get_convention(name: str) -> Convention:
    """The :class:`Convention` called ``name`` (``ccs``, ``dparsf`` or ``isyb``)."""
    try:
        return CONVENTIONS[name]
    except KeyError:
        raise RfmriInputError(f"unknown convention {name!r}; choose from "
                              f"{', '.join(CONVENTION_NAMES)}") from None


# ---------------------------------------------------------------------------
# FFT lengths
# ---------------------------------------------------------------------------

def matlab_padded_length(n: int) -> int:
    """MATLAB's ``2^nextpow2(n)``: the smallest power of two >= n."""
    return 1 << max(int(n) - 1, 0).bit_length()


def afni_padded_length(n: int) -> int:
    """AFNI's ``csfft_nextup_one35(n)`` (``src/csfft.c``): the smallest even length >= n of
    the form ``2^a``, ``3 * 2^a``, ``5 * 2^a`` or ``15 * 2^a`` (one factor of 3 and of 5 at most).
    """
    best = None
    for factor in (1, 3, 5, 15):
        length = 2 * factor
        while length < n:
            length *= 2
        best = length if best is None else min(best, length)
    return int(best)


# ---------------------------------------------------------------------------
# ALFF / fALFF
# ---------------------------------------------------------------------------

def _matlab_detrend(rows: np.ndarray) -> np.ndarray:
    """MATLAB ``detrend(x)`` along time: the least-squares line removed from each row."""
    n = rows.shape[1]
    basis, _ = np.linalg.qr(np.stack([np.ones(n), np.arange(1, n + 1, dtype=np.float64)],
                                     axis=1))
    return rows - (rows @ basis) @ basis.T


def _dparsf_band(padded: int, tr: float, low: float, high: float) -> tuple[int, int]:
    """1-based FFT indices of the band in ``y_alff_falff.m`` and ``y_IdealFilter.m``."""
    nyquist = 0.5 / tr
    first = padded // 2 + 1 if low >= nyquist else math.ceil(low * padded * tr + 1)
    last = padded // 2 + 1 if (high >= nyquist or high == 0) else \
        math.trunc(high * padded * tr + 1)
    return first, last


def dparsf_alff_falff_rows(rows: np.ndarray, tr: float, low: float = 0.01,
                           high: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """ALFF (signal units) and fALFF of ``(V, N)`` rows as DPARSF's ``y_alff_falff.m``.

    Linear detrend, zero padding to ``P = 2^nextpow2(N)``, amplitude
    ``2 |FFT| / N``, ALFF the mean over 1-based indices
    ``ceil(low P TR + 1) .. fix(high P TR + 1)``, fALFF their sum over that of
    indices ``2 .. P/2 + 1`` (non-finite fALFF set to 0, as DPABI).
    """
    rows = _matlab_detrend(np.asarray(rows, dtype=np.float64))
    n = rows.shape[1]
    padded = matlab_padded_length(n)
    first, last = _dparsf_band(padded, tr, low, high)
    if last < first:
        raise RfmriInputError(f"{n} volumes at TR {tr:g} s (padded to {padded}) leave no "
                              f"frequency bin in {low:g}-{high:g} Hz for DPARSF's ALFF")
    amplitude = 2.0 * np.abs(np.fft.rfft(rows, n=padded, axis=1)) / n
    band = amplitude[:, first - 1:last]
    total = amplitude[:, 1:padded // 2 + 1].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        falff = band.sum(axis=1) / total
    return band.mean(axis=1), np.where(np.isfinite(falff), falff, 0.0)


def _bc_round(value: Decimal) -> int:
    """``printf "%1.0f"`` of a ``bc`` result: round half to even."""
    return int(value.to_integral_value())


def ccs_band(n_even: int, tr: float, low: float, high: float) -> tuple[int, int]:
    """First bin ``k1`` (1-based frequency index) and bin count of CCS's ALFF band.

    ``ccs_06_singlesubjectALFF.sh`` computes ``n1 = round(low N TR - 1)`` and
    ``n2 = round(high N TR - low N TR + 1)`` with ``bc`` (decimal arithmetic,
    reproduced here with :class:`decimal.Decimal`) and cuts volumes
    ``n1 .. n1 + n2 - 1`` of the ``fslpspec`` output, whose volume ``t`` holds
    frequency ``(t + 1) / (N TR)``; so the band is bins ``n1 + 1 .. n1 + n2``.
    """
    lo = Decimal(repr(float(low))) * n_even * Decimal(repr(float(tr)))
    hi = Decimal(repr(float(high))) * n_even * Decimal(repr(float(tr)))
    return _bc_round(lo - 1) + 1, _bc_round(hi - lo + 1)


def ccs_alff_falff_rows(rows: np.ndarray, tr: float, low: float = 0.01,
                        high: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """ALFF (signal units) and fALFF of ``(V, N)`` rows as CCS's ``ccs_06_singlesubjectALFF.sh``.

    An odd-length run drops its first volume; amplitude ``|X_k| / N`` for
    ``k = 1 .. N/2`` (no padding); ALFF the sum over the :func:`ccs_band`
    bins, fALFF that sum over the sum of all ``N/2`` amplitudes.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[1] % 2:
        rows = rows[:, 1:]
    n = rows.shape[1]
    first, count = ccs_band(n, tr, low, high)
    if first < 1 or count < 1 or first + count - 1 > n // 2:
        raise RfmriInputError(f"{n} volumes at TR {tr:g} s give no complete CCS band "
                              f"{low:g}-{high:g} Hz (frequency bins {first} .. "
                              f"{first + count - 1} of {n // 2}); use a longer run")
    amplitude = np.abs(np.fft.rfft(rows, axis=1))[:, 1:n // 2 + 1] / n
    alff = amplitude[:, first - 1:first - 1 + count].sum(axis=1)
    total = amplitude.sum(axis=1)
    falff = np.divide(alff, total, out=np.zeros_like(total), where=total > 0)
    return alff, falff


def check_run_length(n_volumes: int, tr: float, convention: Convention) -> None:
    """Raise :class:`RfmriInputError` when a run is too short for the convention's ALFF band."""
    if tr <= 0:
        raise RfmriInputError(f"the repetition time must be positive, got {tr}")
    if convention.name == "isyb":
        band_bins(n_volumes, tr, convention.low, convention.high)
    elif convention.name == "ccs":
        ccs_alff_falff_rows(np.zeros((1, n_volumes)), tr, convention.low, convention.high)
    else:
        dparsf_alff_falff_rows(np.zeros((1, n_volumes)), tr, convention.low, convention.high)


def convention_alff_falff(series: np.ndarray, tr: float, convention: Convention | str, *,
                          mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ALFF and fALFF maps of a 4-D run under ``convention``; 0 outside ``mask``."""
    conv = get_convention(convention) if isinstance(convention, str) else convention
    if conv.name == "isyb":
        return alff_falff(series, tr, mask=mask, low=conv.low, high=conv.high)
    series, mask = series_in_mask(series, mask)
    check_run_length(series.shape[3], tr, conv)
    compute = ccs_alff_falff_rows if conv.name == "ccs" else dparsf_alff_falff_rows
    alff = np.zeros(mask.shape)
    falff = np.zeros(mask.shape)
    index = np.flatnonzero(mask)
    rows = series.reshape(-1, series.shape[3])
    for start in range(0, index.size, _CHUNK):
        chunk = index[start:start + _CHUNK]
        a, f = compute(rows[chunk], tr, conv.low, conv.high)
        alff.flat[chunk] = a
        falff.flat[chunk] = f
    return alff, falff


# ---------------------------------------------------------------------------
# Band-pass filters
# ---------------------------------------------------------------------------

def dparsf_ideal_bandpass(rows: np.ndarray, tr: float, low: float = 0.01,
                          high: float = 0.1) -> np.ndarray:
    """Band-pass ``(V, N)`` rows as DPARSF's ``y_IdealFilter.m`` (the mean is not added back).

    Remove each row's mean, zero-pad to ``P = 2^nextpow2(N)``, FFT, keep the
    1-based indices ``ceil(low P TR + 1) .. fix(high P TR + 1)`` and their
    mirrors (every other coefficient set to 0), inverse FFT, keep the first
    ``N`` samples.
    """
    rows = np.asarray(rows, dtype=np.float64)
    n = rows.shape[1]
    padded = matlab_padded_length(n)
    first, last = _dparsf_band(padded, tr, low, high)
    spectrum = np.fft.rfft(rows - rows.mean(axis=1, keepdims=True), n=padded, axis=1)
    keep = np.zeros(spectrum.shape[1], dtype=bool)
    keep[max(first - 1, 0):last] = True
    spectrum[:, ~keep] = 0
    return np.fft.irfft(spectrum, n=padded, axis=1)[:, :n]


def _afni_cut(cutoff: float, padded: int, tr: float) -> int:
    """``(int)((fc * M) / Fs)`` of AFNI's ``fourier_filter.c``, in C float (32-bit) arithmetic."""
    fs = np.float32(1.0) / np.float32(tr)
    return int(np.float32(cutoff) * np.float32(padded) / fs)


def afni_fourier_bandpass(rows: np.ndarray, tr: float, low: float = 0.01,
                          high: float = 0.1) -> np.ndarray:
    """Band-pass ``(V, N)`` rows as AFNI ``3dFourier -lowpass high -highpass low -retrend``.

    AFNI ``src/fourier_filter.c`` (``filter``): subtract the straight line
    through the first and last samples; zero-pad to
    :func:`afni_padded_length`; FFT; keep indices ``k`` with
    ``int(low M / Fs) <= k <= int(high M / Fs)`` and their mirrors, zero the
    rest (DC included once the high-pass cut-off index is >= 1); inverse FFT;
    keep the first ``N`` samples and add the line back (``-retrend``).
    """
    rows = np.asarray(rows, dtype=np.float64)
    n = rows.shape[1]
    if n < 2:
        raise RfmriInputError("3dFourier filtering needs at least 2 volumes")
    padded = afni_padded_length(n)
    fs = 1.0 / tr
    t = np.arange(n, dtype=np.float64)
    slope = (rows[:, -1] - rows[:, 0]) / (n - 1)
    line = rows[:, :1] + slope[:, None] * t[None, :]
    spectrum = np.fft.rfft(rows - line, n=padded, axis=1)
    k = np.arange(spectrum.shape[1])
    keep = np.ones(k.size, dtype=bool)
    if 0 < high < fs:
        if high < fs / padded:
            raise RfmriInputError(f"low-pass cut-off {high:g} Hz is below the frequency "
                                  f"resolution {fs / padded:g} Hz: nothing would pass")
        keep &= k <= _afni_cut(high, padded, tr)
    if low >= fs:
        raise RfmriInputError(f"high-pass cut-off {low:g} Hz is above the sampling rate")
    if low >= fs / padded:
        keep &= k >= _afni_cut(low, padded, tr)
    spectrum[:, ~keep] = 0
    return np.fft.irfft(spectrum, n=padded, axis=1)[:, :n] + line


def bandpass(series: np.ndarray, tr: float, convention: Convention | str, *,
             mask: np.ndarray | None = None) -> np.ndarray:
    """The run band-passed with ``convention``'s own filter (float32; 0 outside ``mask``).

    ``ccs``: :func:`afni_fourier_bandpass`; ``dparsf``:
    :func:`dparsf_ideal_bandpass`; ``isyb`` has no band-pass and returns the
    series unchanged (as float32).
    """
    conv = get_convention(convention) if isinstance(convention, str) else convention
    series, mask = series_in_mask(series, mask)
    if conv.name == "isyb":
        return np.asarray(series, dtype=np.float32)
    if tr <= 0:
        raise RfmriInputError(f"the repetition time must be positive, got {tr}")
    method = afni_fourier_bandpass if conv.name == "ccs" else dparsf_ideal_bandpass
    out = np.zeros(series.shape, dtype=np.float32)
    index = np.flatnonzero(mask)
    rows = series.reshape(-1, series.shape[3])
    target = out.reshape(-1, series.shape[3])
    for start in range(0, index.size, _CHUNK):
        chunk = index[start:start + _CHUNK]
        target[chunk] = method(rows[chunk], tr, conv.low, conv.high)
    return out
