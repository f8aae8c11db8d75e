"""Resting-state metrics on preprocessed BOLD arrays: ALFF, fALFF and ReHo.

**ALFF / fALFF** (Zang et al. 2007; Zou et al. 2008), in isyb's own
convention (``--convention isyb``): REST/DPARSF's amplitude without their
zero padding, so fALFF is not DPARSF's (higher by 1-3% on white and 1/f
noise, depending on how far N is below the next power of two: +1.4% on
white noise at N = 230). :mod:`isyb.derive.conventions` has the CCS and DPARSF conventions,
each after the pipeline's own code. For each voxel's time series x (N volumes,
repetition time TR), the amplitude spectrum is
``a_k = 2 |X_k| / N`` for ``k = 1 .. floor(N/2)`` (``X = FFT(x)``; the DC
term is left out), at frequencies ``f_k = k / (N TR)``. A sinusoid of
amplitude A that falls on a frequency bin gives ``a_k = A`` there. The series
is not detrended here: the preprocessing removes linear and quadratic trends
before (as in the descriptor), and detrending again would leak a sinusoid's
amplitude into other bins.

* ALFF = the mean of ``a_k`` over the bins with ``low <= f_k <= high``
  (0.01-0.1 Hz by default, both ends included);
* fALFF = the sum of ``a_k`` over those bins divided by the sum over all
  bins ``k = 1 .. floor(N/2)``.

A run must be long enough for the band to hold at least two bins; otherwise
:class:`RfmriInputError`.

**ReHo** (Zang et al. 2004): Kendall's coefficient of concordance W of a
voxel's time series with its neighbours' (7: faces; 19: faces and edges; 27:
the 3x3x3 cube, the default), each series ranked over time (ties get average
ranks, and W has no tie correction, as REST). With m series of n time points
and R_t the sum of the m ranks at time t,
``W = (sum_t R_t^2 - n (m (n + 1) / 2)^2) / (m^2 (n^3 - n) / 12)``.
Only neighbours inside the mask count, so m is smaller at the mask's edge.
W is 1 when all the series rise and fall together and about 1/m for
independent noise.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats

from isyb.errors import IsybError

NEIGHBOURHOODS = (7, 19, 27)


class RfmriInputError(IsybError, ValueError):
    """A BOLD array or setting that these metrics cannot use."""


def series_in_mask(series: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """A 4-D BOLD array and its boolean mask (all voxels when ``None``), checked to agree."""
    series = np.asarray(series)
    if series.ndim != 4:
        raise RfmriInputError(f"a BOLD run is 4-D, got shape {series.shape}")
    mask = np.ones(series.shape[:3], dtype=bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != series.shape[:3]:
        raise RfmriInputError(f"mask shape {mask.shape} differs from the BOLD grid "
                              f"{series.shape[:3]}")
    return series, mask


def band_bins(n_volumes: int, tr: float, low: float = 0.01, high: float = 0.1) -> np.ndarray:
    """Indices k (1 .. N/2) of the amplitude spectrum inside ``[low, high]`` Hz."""
    if tr <= 0:
        raise RfmriInputError(f"the repetition time must be positive, got {tr}")
    k = np.arange(1, n_volumes // 2 + 1)
    inside = k[(k / (n_volumes * tr) >= low) & (k / (n_volumes * tr) <= high)]
    if inside.size < 2:
        raise RfmriInputError(
            f"{n_volumes} volumes at TR {tr:g} s give {inside.size} frequency bin(s) in "
            f"{low:g}-{high:g} Hz; ALFF needs at least 2 (a run of at least "
            f"{int(np.ceil(2.0 / (low * tr)))} volumes for this band)")
    return inside


def alff_falff(series: np.ndarray, tr: float, *, mask: np.ndarray | None = None,
               low: float = 0.01, high: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """ALFF (signal units) and fALFF (0..1) maps of a 4-D run; 0 outside ``mask``."""
    series, mask = series_in_mask(series, mask)
    bins = band_bins(series.shape[3], tr, low, high)
    voxels = series[mask].astype(np.float64)
    n = voxels.shape[1]
    amplitude = 2.0 * np.abs(np.fft.rfft(voxels, axis=1))[:, 1: n // 2 + 1] / n
    band = amplitude[:, bins - 1]
    total = amplitude.sum(axis=1)
    alff = np.zeros(mask.shape)
    falff = np.zeros(mask.shape)
    alff[mask] = band.mean(axis=1)
    falff[mask] = np.divide(band.sum(axis=1), total, out=np.zeros_like(total),
                            where=total > 0)
    return alff, falff


def neighbour_offsets(size: int) -> list[tuple[int, int, int]]:
    """Offsets of a 7-, 19- or 27-voxel neighbourhood (the centre included)."""
    if size not in NEIGHBOURHOODS:
        raise RfmriInputError(f"ReHo neighbourhood must be 7, 19 or 27 voxels, got {size}")
    limit = {7: 1, 19: 2, 27: 3}[size]
    return [o for o in itertools.product((-1, 0, 1), repeat=3)
            if sum(abs(c) for c in o) <= limit]


def reho(series: np.ndarray, *, mask: np.ndarray | None = None,
         neighbourhood: int = 27) -> np.ndarray:
    """ReHo (Kendall's W) map of a 4-D run; 0 outside ``mask``. Vectorised over voxels."""
    series, mask = series_in_mask(series, mask)
    n = series.shape[3]
    ranks = np.zeros(series.shape, dtype=np.float32)  # 0 outside the mask
    ranks[mask] = stats.rankdata(series[mask], axis=1).astype(np.float32)
    padded = np.pad(ranks, ((1, 1), (1, 1), (1, 1), (0, 0)))
    inside = np.pad(mask, 1)
    rank_sum = np.zeros(series.shape, dtype=np.float64)
    count = np.zeros(mask.shape, dtype=np.int64)
    nx, ny, nz = mask.shape
    for dx, dy, dz in neighbour_offsets(neighbourhood):
        window = (slice(1 + dx, 1 + dx + nx), slice(1 + dy, 1 + dy + ny),
                  slice(1 + dz, 1 + dz + nz))
        rank_sum += padded[window]
        count += inside[window]
    m = count.astype(np.float64)
    mean_sum = m * (n + 1) / 2.0
    numerator = (rank_sum ** 2).sum(axis=3) - n * mean_sum ** 2
    denominator = m ** 2 * (n ** 3 - n) / 12.0
    out = np.divide(numerator, denominator, out=np.zeros(mask.shape),
                    where=mask & (count > 1))
    return out
