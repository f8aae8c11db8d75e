"""The ccs, dparsf and isyb conventions against independent transcriptions of the pipelines' code.

Each reference below is written from the cited MATLAB/shell/C source, one
series at a time, with full complex FFTs and 1-based index arithmetic where
the source uses it, and shares no code with :mod:`isyb.derive.conventions`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from isyb.derive.conventions import (
    CONVENTIONS,
    afni_padded_length,
    bandpass,
    convention_alff_falff,
    get_convention,
)
from isyb.derive.rfmri import RfmriInputError, alff_falff, reho

TR = 2.0


def _series(n: int, seed: int, shape: tuple[int, int, int] = (2, 2, 2)) -> np.ndarray:
    """Sinusoids in and out of the band plus white noise, a different mix per voxel."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) * TR
    out = np.empty((*shape, n))
    for index in np.ndindex(shape):
        out[index] = (3.0 * np.sin(2 * np.pi * rng.uniform(0.012, 0.09) * t + rng.uniform(0.0, 6.0))
                      + 2.0 * np.sin(2 * np.pi * rng.uniform(0.11, 0.24) * t)
                      + 1.5 * np.sin(2 * np.pi * rng.uniform(0.001, 0.008) * t)
                      + rng.normal(0.0, 1.0, n) + 0.01 * t)
    return out


# --- references, transcribed from the pipelines' code ------------------------------------


def _dparsf_alff_reference(x: np.ndarray, tr: float) -> tuple[float, float]:
    """y_alff_falff.m (DPARSF Subfunctions) for one series, low 0.01 Hz, high 0.1 Hz."""
    n = x.size
    a = np.vstack([np.arange(1, n + 1), np.ones(n)]).T
    x = x - a @ np.linalg.lstsq(a, x, rcond=None)[0]  # MATLAB detrend
    padded = 2 ** math.ceil(math.log2(n))
    idx_low = math.ceil(0.01 * padded * tr + 1)
    idx_high = math.floor(0.1 * padded * tr + 1)
    spectrum = 2 * np.abs(np.fft.fft(np.concatenate([x, np.zeros(padded - n)]))) / n
    band = spectrum[idx_low - 1: idx_high]  # MATLAB idx_low:idx_high
    return float(np.mean(band)), float(np.sum(band) / np.sum(spectrum[1: padded // 2 + 1]))


def _ccs_alff_reference(x: np.ndarray, tr: float) -> tuple[float, float]:
    """ccs_06_singlesubjectALFF.sh for one series (fslpspec volume t = frequency t + 1)."""
    if x.size % 2 == 1:
        x = x[1:]  # fslroi ... 1 N
    n = x.size
    power = np.abs(np.fft.fft(x)) ** 2
    pspec = power[1: n // 2 + 1] / n / n  # fslpspec, then -div N -div N
    amp = np.sqrt(pspec)
    n1 = round(0.01 * n * tr - 1)
    n2 = round(0.1 * n * tr - 0.01 * n * tr + 1)
    alff = np.mean(amp[n1: n1 + n2]) * n2  # fslroi n1 n2; -Tmean -mul n2
    total = np.mean(amp) * n / 2  # -Tmean -mul N -div 2
    return float(alff), float(alff / total)


def _dparsf_filter_reference(x: np.ndarray, tr: float) -> np.ndarray:
    """y_IdealFilter.m for one series, band [0.01 0.1]."""
    n = x.size
    padded = 2 ** math.ceil(math.log2(n))
    low = math.ceil(0.01 * padded * tr + 1)
    high = math.floor(0.1 * padded * tr + 1)
    mask = np.zeros(padded)
    mask[low - 1: high] = 1  # FrequencyMask(low:high) = 1
    for i in range(padded - low + 2, padded - high + 1, -1):  # the mirrored indices
        mask[i - 1] = 1
    spectrum = np.fft.fft(np.concatenate([x - x.mean(), np.zeros(padded - n)]))
    spectrum[mask == 0] = 0
    return np.real(np.fft.ifft(spectrum))[:n]


def _afni_filter_reference(x: np.ndarray, tr: float) -> np.ndarray:
    """fourier_filter.c filter() for -lowpass 0.1 -highpass 0.01 -retrend, one series."""
    n = x.size
    slope = (x[n - 1] - x[0]) / (n - 1)
    inter = x[0]
    trend = inter + slope * np.arange(n)
    m = afni_padded_length(n)
    fs = np.float32(1.0) / np.float32(tr)
    spectrum = np.fft.fft(np.concatenate([x - trend, np.zeros(m - n)]))
    win_low = np.zeros(m)
    cut_lo1 = int(np.float32(0.1) * np.float32(m) / fs)
    win_low[: cut_lo1 + 1] = 1
    win_low[m - cut_lo1:] = 1
    win_high = np.zeros(m)
    cut_hi1 = int(np.float32(0.01) * np.float32(m) / fs)
    win_high[cut_hi1: m - cut_hi1 + 1] = 1
    out = np.real(np.fft.ifft(spectrum * win_low * win_high))[:n]
    return out + trend


def _kendall_w(block: np.ndarray) -> float:
    """Kendall's W of the rows of ``block`` (m series x n time points), no tie correction."""
    m, n = block.shape
    ranks = np.vstack([stats.rankdata(row) for row in block])
    r = ranks.sum(axis=0)
    return float(12 * np.sum((r - r.mean()) ** 2) / (m ** 2 * (n ** 3 - n)))


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [230, 256])
def test_dparsf_alff_and_falff_equal_a_transcription_of_y_alff_falff(n: int) -> None:
    data = _series(n, seed=n)
    alff, falff = convention_alff_falff(data, TR, "dparsf")
    for index in np.ndindex(data.shape[:3]):
        ref_alff, ref_falff = _dparsf_alff_reference(data[index], TR)
        assert alff[index] == pytest.approx(ref_alff, rel=1e-10)
        assert falff[index] == pytest.approx(ref_falff, rel=1e-10)


@pytest.mark.parametrize("n", [231, 240])
def test_ccs_alff_and_falff_equal_a_transcription_of_the_ccs_script(n: int) -> None:
    data = _series(n, seed=n)
    alff, falff = convention_alff_falff(data, TR, "ccs")
    for index in np.ndindex(data.shape[:3]):
        ref_alff, ref_falff = _ccs_alff_reference(data[index], TR)
        assert alff[index] == pytest.approx(ref_alff, rel=1e-10)
        assert falff[index] == pytest.approx(ref_falff, rel=1e-10)


def test_isyb_convention_is_the_unpadded_spectrum() -> None:
    data = _series(200, seed=3)
    expected = alff_falff(data, TR)
    got = convention_alff_falff(data, TR, "isyb")
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


def test_dparsf_falff_is_below_the_unpadded_falff_on_white_noise() -> None:
    """The issue's finding: without DPARSF's padding fALFF is 2-3% higher on white noise."""
    rng = np.random.default_rng(7)
    noise = rng.normal(size=(20, 20, 1, 230))
    isyb_falff = convention_alff_falff(noise, TR, "isyb")[1].mean()
    dparsf_falff = convention_alff_falff(noise, TR, "dparsf")[1].mean()
    assert 1.0 < isyb_falff / dparsf_falff < 1.06


@pytest.mark.parametrize("name,reference", [("dparsf", _dparsf_filter_reference),
                                            ("ccs", _afni_filter_reference)])
@pytest.mark.parametrize("n", [120, 231])
def test_bandpass_equals_a_transcription_of_the_pipeline_filter(name, reference, n) -> None:
    data = _series(n, seed=n + 1)
    filtered = bandpass(data.astype(np.float64), TR, name)
    for index in np.ndindex(data.shape[:3]):
        expected = reference(data[index], TR)
        scale = np.abs(expected).max()
        # bandpass returns float32 maps; compare at float32 resolution of the series
        np.testing.assert_allclose(filtered[index], expected, atol=1e-6 * scale, rtol=0)


def test_the_row_filters_equal_their_transcriptions_to_1e_10() -> None:
    from isyb.derive.conventions import afni_fourier_bandpass, dparsf_ideal_bandpass

    rows = _series(231, seed=11).reshape(-1, 231)
    for method, reference in ((dparsf_ideal_bandpass, _dparsf_filter_reference),
                              (afni_fourier_bandpass, _afni_filter_reference)):
        got = method(rows, TR)
        for row, out in zip(rows, got, strict=True):
            expected = reference(row, TR)
            np.testing.assert_allclose(out, expected, atol=1e-10 * np.abs(expected).max())


@pytest.mark.parametrize("name", ["dparsf", "ccs"])
def test_bandpass_keeps_in_band_lines_and_removes_the_others(name: str) -> None:
    """A known spectrum: lines at bins 2, 20 and 80 of 256 (0.0039, 0.039, 0.156 Hz).

    N = 256 needs no padding in either convention, so the lines fall on
    bins and the ideal filter is exact. The lines are cosines symmetric
    about t = -1/2, so the first and last samples are equal and 3dFourier's
    endpoint line is a constant, which it removes and adds back.
    """
    n = 256
    assert afni_padded_length(n) == n
    t = np.arange(n) + 0.5
    line = {k: np.cos(2 * np.pi * k * t / n) for k in (2, 20, 80)}
    signal = 5.0 + 2.0 * line[2] + 3.0 * line[20] + 4.0 * line[80]
    out = bandpass(signal[None, None, None, :], TR, name)[0, 0, 0]
    expected = 3.0 * line[20] + (signal[0] if name == "ccs" else 0.0)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_reho_under_ccs_is_kendalls_w_of_the_band_passed_series() -> None:
    """ReHo as ``isyb derive --convention ccs`` computes it (3dFourier band-pass, then W) equals
    a brute-force W of the transcribed 3dFourier output; a shared slow signal in white noise
    gives a much higher W after the band-pass than before."""
    rng = np.random.default_rng(5)
    n = 150
    t = np.arange(n) * TR
    shared = np.sin(2 * np.pi * 0.03 * t) + np.sin(2 * np.pi * 0.06 * t + 1.0)
    data = shared + rng.normal(0.0, 2.0, (5, 5, 5, n))
    mask = np.ones(data.shape[:3], dtype=bool)
    convention = get_convention("ccs")
    assert convention.filtered_reho_vmhc
    got = reho(bandpass(data, TR, convention, mask=mask), mask=mask)
    filtered = np.apply_along_axis(_afni_filter_reference, 3, data, TR)
    for index in [(2, 2, 2), (1, 3, 2), (3, 1, 1)]:
        block = filtered[index[0] - 1: index[0] + 2, index[1] - 1: index[1] + 2,
                         index[2] - 1: index[2] + 2].reshape(27, n)
        # the band-passed run is float32: two samples within float32 rounding of each other
        # may swap ranks, which moves W by about 1e-6
        assert got[index] == pytest.approx(_kendall_w(block), abs=1e-5)
    unfiltered = reho(data, mask=mask)[1:4, 1:4, 1:4]
    assert np.median(got[1:4, 1:4, 1:4]) > np.median(unfiltered) + 0.1  # 0.37 vs 0.23


def test_conventions_fix_the_documented_choices() -> None:
    assert CONVENTIONS["ccs"].polort == 2 and CONVENTIONS["ccs"].filtered_reho_vmhc
    assert CONVENTIONS["dparsf"].polort == 1 and CONVENTIONS["dparsf"].filtered_reho_vmhc
    assert CONVENTIONS["isyb"].polort == 2 and not CONVENTIONS["isyb"].filtered_reho_vmhc
    assert [afni_padded_length(n) for n in (100, 120, 125, 231, 256, 300)] == \
        [120, 120, 128, 240, 256, 320]
    with pytest.raises(RfmriInputError, match="unknown convention"):
        get_convention("spm")


def test_a_run_too_short_for_the_ccs_band_is_a_one_line_error() -> None:
    with pytest.raises(RfmriInputError, match="CCS band"):
        convention_alff_falff(np.zeros((1, 1, 1, 20)), TR, "ccs")
