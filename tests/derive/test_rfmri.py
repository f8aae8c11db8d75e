"""ALFF, fALFF and ReHo against known truth and a plain loop implementation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from isyb.derive.rfmri import RfmriInputError, alff_falff, neighbour_offsets, reho

TR = 2.0
N = 200  # frequency bins every 1 / (200 x 2 s) = 0.0025 Hz


def _sinusoid(amplitude: float, frequency: float, n: int = N) -> np.ndarray:
    t = np.arange(n) * TR
    return amplitude * np.sin(2 * np.pi * frequency * t)


def test_alff_of_sinusoids_on_a_bin_inside_and_outside_the_band() -> None:
    series = np.zeros((2, 1, 1, N))
    series[0, 0, 0] = 100 + _sinusoid(3.0, 0.05)  # bin 20, inside 0.01-0.1 Hz
    series[1, 0, 0] = 100 + _sinusoid(3.0, 0.15)  # bin 60, outside
    alff, falff = alff_falff(series, TR)
    band = np.arange(1, N // 2 + 1)
    n_band = int(((band / (N * TR) >= 0.01) & (band / (N * TR) <= 0.1)).sum())
    assert n_band == 37  # bins 4..40
    # ALFF = the sinusoid's amplitude spread over the band's bins; fALFF = 1 and 0.
    assert alff[0, 0, 0] == pytest.approx(3.0 / n_band, rel=1e-9)
    assert falff[0, 0, 0] == pytest.approx(1.0, abs=1e-9)
    assert alff[1, 0, 0] == pytest.approx(0.0, abs=1e-9)
    assert falff[1, 0, 0] == pytest.approx(0.0, abs=1e-9)


def test_alff_of_a_sinusoid_between_bins_leaks_a_stated_amount() -> None:
    """Off-bin frequencies leak into other bins (rectangular window): for sinusoids about
    half a bin off (0.0512 and 0.0537 Hz, the worst case) fALFF is 0.87-0.88; the stated
    tolerance is fALFF > 0.85 in the band and < 0.15 far outside it."""
    for frequency, inside in ((0.0512, True), (0.0537, True), (0.2012, False)):
        series = (100 + _sinusoid(3.0, frequency))[None, None, None, :]
        _, falff = alff_falff(series, TR)
        assert (falff[0, 0, 0] > 0.85) if inside else (falff[0, 0, 0] < 0.15)


def test_a_run_too_short_for_the_band_is_an_error() -> None:
    with pytest.raises(RfmriInputError, match="needs at least 2"):
        alff_falff(np.random.default_rng(0).normal(size=(2, 2, 2, 8)), TR)


def _reho_loop(series: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(mask.shape)
    n = series.shape[3]
    for x, y, z in zip(*np.nonzero(mask), strict=True):
        rows = []
        for dx, dy, dz in neighbour_offsets(size):
            p = (x + dx, y + dy, z + dz)
            if all(0 <= c < s for c, s in zip(p, mask.shape, strict=True)) and mask[p]:
                rows.append(stats.rankdata(series[p]))
        ranks = np.array(rows)
        m = ranks.shape[0]
        if m < 2:
            continue
        total = ranks.sum(axis=0)
        out[x, y, z] = (np.sum(total ** 2) - n * (m * (n + 1) / 2) ** 2) / (
            m ** 2 * (n ** 3 - n) / 12)
    return out


@pytest.mark.parametrize("size", [7, 19, 27])
def test_vectorised_reho_equals_a_plain_loop(size: int) -> None:
    rng = np.random.default_rng(size)
    series = rng.normal(size=(6, 5, 4, 30))
    series[..., ::7] = 0.0  # ties
    mask = rng.random((6, 5, 4)) > 0.2
    np.testing.assert_allclose(reho(series, mask=mask, neighbourhood=size),
                               _reho_loop(series, mask, size), atol=1e-12)


def test_reho_is_one_for_identical_neighbours_and_near_one_over_m_for_noise() -> None:
    rng = np.random.default_rng(3)
    same = np.broadcast_to(rng.normal(size=100), (5, 5, 5, 100)).copy()
    assert np.allclose(reho(same)[1:-1, 1:-1, 1:-1], 1.0)
    noise = rng.normal(size=(9, 9, 9, 200))
    inner = reho(noise)[1:-1, 1:-1, 1:-1]
    # Under independence E[W] is about 1/m = 1/27 = 0.037; the bound stated is < 0.06.
    assert abs(inner.mean() - 1 / 27) < 0.01
    assert inner.max() < 0.06
