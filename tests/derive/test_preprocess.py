"""rfMRI preprocessing numerics (isyb.derive.preprocess) against known truth.

Synthetic series with injected spikes, slice-shifted sinusoids, known
regressor combinations and a phantom run with known motion; cross-checks
against statsmodels (Huber RLM, OLS), numpy's ``lstsq`` and scipy's cubic
spline.
"""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.interpolate import CubicSpline

from isyb.derive.preprocess import (
    FRISTON24_NAMES,
    MIN_VOLUMES,
    BoldPreprocessError,
    PreparedBold,
    brain_mask_from_mean,
    clean_bold,
    despike,
    drop_dummy,
    friston24,
    nuisance_regression,
    prepare_bold,
    scale_global_mean,
    slice_timing_correct,
    tissue_signals,
)
from isyb.derive.timeseries import _robust_fit, _smooth_basis
from isyb.errors import IsybError
from isyb.head.motion import _matrix_to_params, params_to_matrix
from isyb.synthetic.epi import phantom_bold

TR = 2.0
GRID = (16, 16, 12)
NOISE = 2.0


def _smooth_series(n: int, rng: np.random.Generator, shape: tuple[int, ...] = GRID
                   ) -> np.ndarray:
    """1000 + a per-voxel quadratic drift + a slow sinusoid (two cycles per run)."""
    x = np.linspace(-1.0, 1.0, n)
    coef = rng.normal(0.0, 5.0, (*shape, 3))
    phase = rng.uniform(0.0, 2 * np.pi, (*shape, 1))
    return (1000.0 + coef[..., :1] * x + coef[..., 1:2] * x ** 2
            + 8.0 * np.sin(2 * np.pi * 2 * np.arange(n) / n + phase))


# ---------------------------------------------------------------------------
# Dummy volumes
# ---------------------------------------------------------------------------

def test_drop_dummy_removes_exactly_n_volumes() -> None:
    series = np.arange(2 * 3 * 2 * 20, dtype=np.float64).reshape(2, 3, 2, 20)
    out = drop_dummy(series, 5)
    assert out.shape == (2, 3, 2, 15)
    np.testing.assert_array_equal(out, series[..., 5:])
    np.testing.assert_array_equal(drop_dummy(series), series[..., 5:])  # default 5
    assert drop_dummy(series, 0).shape[3] == 20
    assert drop_dummy(series, 20 - MIN_VOLUMES).shape[3] == MIN_VOLUMES


@pytest.mark.parametrize("n_dummy", [11, 20, 30, -1, 2.5, True])
def test_drop_dummy_refuses_too_few_volumes_or_a_bad_count(n_dummy) -> None:
    with pytest.raises(BoldPreprocessError):
        drop_dummy(np.zeros((2, 2, 2, 20)), n_dummy)


def test_errors_are_isyb_errors_and_3d_input_is_refused() -> None:
    assert issubclass(BoldPreprocessError, IsybError)
    with pytest.raises(BoldPreprocessError, match="4-D"):
        drop_dummy(np.zeros((4, 4, 20)), 5)
    bad = np.zeros((2, 2, 2, 20))
    bad[0, 0, 0, 3] = np.nan
    with pytest.raises(BoldPreprocessError, match="NaN"):
        drop_dummy(bad, 5)


# ---------------------------------------------------------------------------
# Despiking
# ---------------------------------------------------------------------------

def test_despike_finds_and_repairs_injected_spikes() -> None:
    rng = np.random.default_rng(0)
    n = 90
    truth = _smooth_series(n, rng)
    noisy = truth + rng.normal(0.0, NOISE, truth.shape)
    flat = noisy.reshape(-1, n)
    n_vox = flat.shape[0]
    # 300 isolated spikes at random places, plus spikes at both ends of the run
    # and pairs of adjacent spikes; 8 to 30 noise SDs, either sign.
    spikes = np.zeros(flat.shape, dtype=bool)
    voxels = rng.choice(n_vox, 330, replace=False)
    spikes[voxels[:300], rng.integers(2, n - 2, 300)] = True
    spikes[voxels[300:310], 0] = True
    spikes[voxels[310:320], n - 1] = True
    starts = rng.integers(2, n - 3, 10)
    spikes[voxels[320:], starts] = True
    spikes[voxels[320:], starts + 1] = True
    size = rng.uniform(8.0, 30.0, int(spikes.sum())) * NOISE
    spiked = flat.copy()
    spiked[spikes] += size * rng.choice([-1.0, 1.0], size.size)

    cleaned, count = despike(spiked.reshape(noisy.shape))
    cleaned = cleaned.reshape(-1, n)
    assert cleaned.dtype == np.float64
    changed = cleaned != spiked
    false_pos = int((changed & ~spikes).sum())
    print(f"\ndespike: {int(spikes.sum())} injected spikes, {count} replaced, "
          f"{false_pos} false positives ({false_pos / spiked.size:.1e} of the samples); "
          f"largest error at the spikes {np.abs(cleaned - truth.reshape(-1, n))[spikes].max():.2f}"
          f" (noise SD {NOISE})")
    assert changed[spikes].all()  # every spike found
    assert count == int(changed.sum())
    assert false_pos <= 1e-3 * spiked.size
    # Replaced values lie near the noise-free truth, and no spike survives anywhere.
    error = np.abs(cleaned - truth.reshape(-1, n))
    assert error[spikes].max() < 4.0 * NOISE
    assert error.max() < 6.0 * NOISE
    # An isolated spike with untouched neighbours becomes their mean.
    checked = 0
    for row in voxels[:300]:  # one spike each
        col = int(np.flatnonzero(spikes[row])[0])
        if not changed[row, col - 1] and not changed[row, col + 1]:
            mean = (spiked[row, col - 1] + spiked[row, col + 1]) / 2
            assert cleaned[row, col] == pytest.approx(mean, abs=1e-9)
            checked += 1
    assert checked > 250


def test_despike_interpolates_linearly_and_holds_the_ends() -> None:
    n = 40
    ramp = 100.0 + 0.5 * np.arange(n)
    series = np.tile(ramp, (1, 2, 1, 1))
    series[0, 0, 0, [10, 11]] = [900.0, 850.0]  # a two-sample spike on a line
    series[0, 0, 0, 0] = -500.0  # at the start: held at the next good value
    series[0, 0, 0, n - 1] = 700.0  # at the end: held at the previous one
    series[0, 1, 0, 21:] += 30.0  # a step is a level change, not a spike
    cleaned, count = despike(series)
    assert count == 4
    np.testing.assert_allclose(cleaned[0, 0, 0, 1:-1], ramp[1:-1], rtol=0, atol=1e-9)
    assert cleaned[0, 0, 0, 0] == ramp[1]
    assert cleaned[0, 0, 0, n - 1] == ramp[n - 2]
    np.testing.assert_array_equal(cleaned[0, 1], series[0, 1])


def test_despike_leaves_clean_series_alone_and_states_its_false_positive_rate() -> None:
    rng = np.random.default_rng(1)
    n = 90
    smooth = _smooth_series(n, rng, (8, 8, 6))
    # Noise-free, even with a faster oscillation that the curve does not follow.
    smooth += 3.0 * np.sin(2 * np.pi * 0.05 * TR * np.arange(n))
    cleaned, count = despike(smooth.astype(np.float32))
    assert count == 0
    np.testing.assert_array_equal(cleaned, smooth.astype(np.float32))
    # Gaussian noise, no spikes: the rule's false-positive rate.
    noisy = (_smooth_series(n, rng) + rng.normal(0.0, NOISE, (*GRID, n))).astype(np.float32)
    cleaned, count = despike(noisy)
    rate = count / noisy.size
    print(f"\ndespike false positives on Gaussian noise, {n} volumes: {count} of "
          f"{noisy.size} samples ({rate:.1e}); a normal tail beyond 4 SD is 6.3e-05")
    assert cleaned.dtype == np.float32
    assert rate < 1e-3
    assert np.abs(cleaned - noisy).max() < 6.0 * NOISE  # what it touched moved a little


def test_despike_mask_constant_and_empty_voxels() -> None:
    series = np.full((2, 2, 1, 60), 100.0)
    series[..., 30] = 500.0
    series[1, 1] = 0.0  # an all-zero voxel: nothing to do
    mask = np.zeros((2, 2, 1), dtype=bool)
    mask[0, 0] = mask[1, 1] = True
    cleaned, count = despike(series, mask)
    assert count == 1  # only the constant voxel inside the mask
    assert np.all(cleaned[0, 0, 0] == 100.0)
    np.testing.assert_array_equal(cleaned[0, 1], series[0, 1])  # outside the mask
    np.testing.assert_array_equal(cleaned[1, 1], 0.0)
    with pytest.raises(BoldPreprocessError):
        despike(series, np.ones((2, 2), dtype=bool))
    with pytest.raises(BoldPreprocessError):
        despike(series, threshold=2.0, clip=2.5)
    with pytest.raises(BoldPreprocessError):
        despike(series, n_harmonics=-1)
    with pytest.raises(BoldPreprocessError, match="too few"):
        despike(series[..., :3])


def test_robust_fit_matches_statsmodels_huber_rlm() -> None:
    rng = np.random.default_rng(2)
    n = 100
    basis = _smooth_basis(n, n // 30)
    rows = _smooth_series(n, rng, (6,)) + rng.normal(0.0, NOISE, (6, n))
    rows[:, [10, 11, 50, 99]] += [40.0, -30.0, 60.0, 50.0]
    fit, sigma = _robust_fit(rows.copy(), basis, 2.5)
    for i in range(rows.shape[0]):
        rlm = sm.RLM(rows[i], basis, M=sm.robust.norms.HuberT(t=2.5)).fit(
            update_scale=False, conv="coefs", tol=1e-12, maxiter=500)
        assert np.abs(rlm.fittedvalues - fit[i]).max() < 2e-3 * sigma[i]
    assert np.median(sigma) == pytest.approx(NOISE, rel=0.2)


# ---------------------------------------------------------------------------
# Slice timing
# ---------------------------------------------------------------------------

INTERLEAVED = [0.0, 1.0, 0.25, 1.25, 0.5, 1.5, 0.75, 1.75]
"""Interleaved acquisition of 8 slices in a 2 s TR (even slices first)."""


def _signal(t: np.ndarray) -> np.ndarray:
    return (50.0 + 0.05 * t + 5.0 * np.sin(2 * np.pi * 0.04 * t + 0.3)
            + 3.0 * np.cos(2 * np.pi * 0.011 * t) + 1.0 * np.sin(2 * np.pi * 0.09 * t))


def _slice_sampled(n: int) -> np.ndarray:
    series = np.empty((3, 4, len(INTERLEAVED), n))
    for k, offset in enumerate(INTERLEAVED):
        series[:, :, k] = _signal(np.arange(n) * TR + offset)
    return series


def test_slice_timing_shifts_every_slice_to_the_middle_of_the_acquisition() -> None:
    n = 80
    series = _slice_sampled(n)
    out = slice_timing_correct(series, TR, INTERLEAVED)
    reference = 0.875  # fMRIPrep: min + (max - min) / 2 of 0 .. 1.75 s
    truth = _signal(np.arange(n) * TR + reference)
    error = np.abs(out - truth)
    inner = error[..., 4:-4].max()
    print(f"\nslice timing: largest error {inner:.4f} inside, {error.max():.3f} with the 4 "
          f"end samples (signal SD {truth.std():.2f})")
    assert inner < 0.02
    assert error.max() < 1.5
    np.testing.assert_allclose(out, slice_timing_correct(series, TR, INTERLEAVED,
                                                         reference_time=reference))
    # scipy's cubic spline through each slice's samples agrees inside the run.
    for k, offset in enumerate(INTERLEAVED):
        spline = CubicSpline(np.arange(n) * TR + offset, series[0, 0, k])
        other = spline(np.arange(n) * TR + reference)
        assert np.abs(other - out[0, 0, k])[4:-4].max() < 0.05


def test_slice_timing_reference_slice_is_unchanged_and_axis_is_honoured() -> None:
    n = 60
    series = _slice_sampled(n)
    out = slice_timing_correct(series, TR, INTERLEAVED, reference_time=INTERLEAVED[3])
    np.testing.assert_array_equal(out[:, :, 3], series[:, :, 3])
    moved = np.transpose(series, (2, 1, 0, 3))
    out0 = slice_timing_correct(moved, TR, INTERLEAVED, slice_axis=0)
    np.testing.assert_allclose(np.transpose(out0, (2, 1, 0, 3)),
                               slice_timing_correct(series, TR, INTERLEAVED), atol=1e-10)
    assert slice_timing_correct(series.astype(np.float32), TR, INTERLEAVED).dtype == np.float32


@pytest.mark.parametrize(("timing", "kwargs"), [
    (INTERLEAVED[:-1], {}),  # one entry short
    ([*INTERLEAVED[:-1], 2.0], {}),  # = TR
    ([*INTERLEAVED[:-1], -0.1], {}),
    ([*INTERLEAVED[:-1], float("nan")], {}),
    (["a"] * 8, {}),
    (INTERLEAVED, {"reference_time": 2.5}),
    (INTERLEAVED, {"slice_axis": 3}),
    (INTERLEAVED, {"slice_axis": 1}),  # 4 slices along axis 1
])
def test_slice_timing_refuses_bad_slice_timing(timing, kwargs) -> None:
    with pytest.raises(BoldPreprocessError):
        slice_timing_correct(_slice_sampled(20), TR, timing, **kwargs)


def test_slice_timing_refuses_a_bad_tr() -> None:
    for tr in (0.0, -2.0, float("nan"), "two"):
        with pytest.raises(BoldPreprocessError):
            slice_timing_correct(_slice_sampled(20), tr, INTERLEAVED)


# ---------------------------------------------------------------------------
# Scaling, masks, tissue signals
# ---------------------------------------------------------------------------

def test_scale_global_mean_gives_exactly_10000() -> None:
    rng = np.random.default_rng(3)
    series = rng.uniform(50.0, 800.0, (*GRID, 30)).astype(np.float32)
    mask = rng.random(GRID) > 0.6
    out = scale_global_mean(series, mask)
    assert out.dtype == np.float32
    assert out[mask].mean(dtype=np.float64) == pytest.approx(10000.0, rel=1e-6)
    ratio = out[~mask] / series[~mask]  # one factor everywhere
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-6)
    assert scale_global_mean(series, mask, 100.0)[mask].mean(dtype=np.float64) == \
        pytest.approx(100.0, rel=1e-6)
    with pytest.raises(BoldPreprocessError, match="empty"):
        scale_global_mean(series, np.zeros(GRID, dtype=bool))
    with pytest.raises(BoldPreprocessError, match="positive"):
        scale_global_mean(-series, mask)
    with pytest.raises(BoldPreprocessError):
        scale_global_mean(series, mask[:-1])


def test_brain_mask_from_mean_fills_holes_and_drops_specks() -> None:
    grid = np.indices((40, 40, 30)).astype(np.float64)
    radius = np.sqrt((grid[0] - 20) ** 2 + (grid[1] - 20) ** 2 + (grid[2] - 15) ** 2)
    ball = radius <= 11
    image = np.where(ball, 500.0, 5.0)
    image[radius <= 3] = 20.0  # a dark "ventricle" inside
    image[2:4, 2:4, 2:4] = 500.0  # a bright speck outside
    mask = brain_mask_from_mean(image)
    dice = 2 * (mask & ball).sum() / (mask.sum() + ball.sum())
    assert dice > 0.98
    assert mask[20, 20, 15]  # the hole is filled
    assert not mask[:5, :5, :5].any()
    with pytest.raises(BoldPreprocessError):
        brain_mask_from_mean(np.zeros((10, 10, 10)))
    with pytest.raises(BoldPreprocessError):
        brain_mask_from_mean(np.ones((10, 10, 10, 2)))


def test_tissue_signals_are_mask_means() -> None:
    rng = np.random.default_rng(4)
    series = rng.normal(100.0, 5.0, (6, 6, 4, 25))
    wm = np.zeros((6, 6, 4), dtype=bool)
    csf = np.zeros((6, 6, 4), dtype=bool)
    wm[1:3, 1:3, 1] = True
    csf[4, 4, 2] = True
    out = tissue_signals(series, wm, csf)
    assert out.shape == (25, 2)
    np.testing.assert_allclose(out[:, 0], series[1:3, 1:3, 1].reshape(4, 25).mean(axis=0))
    np.testing.assert_allclose(out[:, 1], series[4, 4, 2])
    with pytest.raises(BoldPreprocessError, match="CSF mask is empty"):
        tissue_signals(series, wm, np.zeros_like(csf))
    with pytest.raises(BoldPreprocessError, match="white-matter"):
        tissue_signals(series, wm[:, :, :2], csf)


# ---------------------------------------------------------------------------
# Motion regressors and the nuisance GLM
# ---------------------------------------------------------------------------

def test_friston24_by_hand() -> None:
    motion = np.array([[1.0, 0.0, -1.0, 0.01, 0.02, 0.0],
                       [2.0, 0.5, -1.0, 0.03, 0.00, 0.1],
                       [0.0, 0.5, 1.0, 0.02, -0.01, 0.1]])
    out = friston24(motion)
    assert out.shape == (3, 24)
    assert len(FRISTON24_NAMES) == 24
    assert FRISTON24_NAMES[0] == "trans_x"
    assert FRISTON24_NAMES[6] == "trans_x_derivative1"
    assert FRISTON24_NAMES[17] == "rot_z_power2"
    assert FRISTON24_NAMES[23] == "rot_z_derivative1_power2"
    diff = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            [1.0, 0.5, 0.0, 0.02, -0.02, 0.1],
            [-2.0, 0.0, 2.0, -0.01, -0.01, 0.0]]
    np.testing.assert_allclose(out[:, :6], motion)
    np.testing.assert_allclose(out[:, 6:12], diff, atol=1e-15)
    np.testing.assert_allclose(out[:, 12:18], motion ** 2)
    np.testing.assert_allclose(out[:, 18:], np.square(diff), atol=1e-15)
    assert out[2, 0] == 0.0 and out[2, 6] == -2.0 and out[2, 18] == 4.0  # trans_x, t = 2
    with pytest.raises(BoldPreprocessError):
        friston24(motion[:, :5])
    with pytest.raises(BoldPreprocessError):
        friston24(np.full((3, 6), np.nan))


def _glm_case(n: int = 100, seed: int = 5):
    rng = np.random.default_rng(seed)
    shape = (10, 10, 8)
    regs = np.cumsum(rng.normal(0.0, 1.0, (n, 5)), axis=0)  # random walks, like motion
    t = np.arange(n, dtype=np.float64)
    raw = np.column_stack([regs, np.ones(n), t, t ** 2])  # raw polynomials: another basis
    beta = rng.normal(0.0, 3.0, (*shape, raw.shape[1]))
    beta[..., 5] += 1000.0
    beta[..., 7] *= 1e-3
    noise = rng.normal(0.0, 1.0, (*shape, n))
    series = beta @ raw.T + noise
    mask = rng.random(shape) > 0.4
    return series, mask, regs, raw, noise


def test_nuisance_regression_matches_lstsq_and_statsmodels() -> None:
    series, mask, regs, raw, noise = _glm_case()
    out = nuisance_regression(series, mask, regs)
    assert out.dtype == np.float32
    assert np.all(out[~mask] == 0)
    # Truth: the residuals are the noise with its part in the design's span removed.
    q, _ = np.linalg.qr(raw)
    np.testing.assert_allclose(out[mask], noise[mask] - (noise[mask] @ q) @ q.T, atol=1e-5)
    y = series[mask].T
    coef, *_ = np.linalg.lstsq(raw, y, rcond=None)
    expected = (y - raw @ coef).T
    np.testing.assert_allclose(out[mask], expected, rtol=0, atol=1e-6)
    for index in np.argwhere(mask)[:3]:
        ols = sm.OLS(series[tuple(index)], raw).fit()
        np.testing.assert_allclose(out[tuple(index)], ols.resid, rtol=0, atol=1e-6)
    assert np.abs(out[mask].mean(axis=1)).max() < 1e-5  # the constant is gone


def test_nuisance_regression_keeps_a_signal_orthogonal_to_the_regressors() -> None:
    series, mask, regs, raw, _ = _glm_case(seed=6)
    n = series.shape[3]
    wave = 4.0 * np.sin(2 * np.pi * 0.05 * TR * np.arange(n))
    q, _ = np.linalg.qr(raw)
    wave -= q @ (q.T @ wave)  # exactly outside the span of regressors and trends
    rng = np.random.default_rng(9)
    beta = rng.normal(0.0, 3.0, (*series.shape[:3], raw.shape[1]))
    clean = beta @ raw.T + wave
    out = nuisance_regression(clean, mask, regs)
    np.testing.assert_allclose(out[mask], np.broadcast_to(wave, out[mask].shape), atol=1e-5)
    assert np.corrcoef(out[mask][0], wave)[0, 1] > 0.999999


def test_nuisance_regression_handles_collinear_and_empty_regressors() -> None:
    series, mask, regs, _, _ = _glm_case(seed=7)
    n = series.shape[3]
    extended = np.column_stack([regs, np.zeros(n), regs[:, 0] * 2.0, np.full(n, 3.0)])
    np.testing.assert_allclose(nuisance_regression(series, mask, extended),
                               nuisance_regression(series, mask, regs), atol=1e-5)
    with pytest.raises(BoldPreprocessError):
        nuisance_regression(series, mask, regs[:-1])
    with pytest.raises(BoldPreprocessError):
        nuisance_regression(series, mask, np.ones((n, n)))
    with pytest.raises(BoldPreprocessError):
        nuisance_regression(series, mask, regs, polort=-1)
    with pytest.raises(BoldPreprocessError):
        nuisance_regression(series, np.zeros_like(mask), regs)
    with pytest.raises(BoldPreprocessError):
        nuisance_regression(series, mask, np.where(regs > 0, np.nan, regs))


def test_clean_bold_uses_friston24_tissue_signals_and_trends() -> None:
    rng = np.random.default_rng(8)
    shape, n = (8, 8, 6), 60
    motion = np.cumsum(rng.normal(0.0, 0.05, (n, 6)), axis=0)
    data = (10000.0 + rng.normal(0.0, 20.0, (*shape, n))).astype(np.float32)
    mask = np.ones(shape, dtype=bool)
    wm = np.zeros(shape, dtype=bool)
    wm[2:4, 2:4, 2] = True
    csf = np.zeros(shape, dtype=bool)
    csf[5, 5, 1:3] = True
    prepared = PreparedBold(data=data, mean=data.mean(axis=3), mask=mask, motion=motion,
                            n_spikes=0, n_dummy=5, tr=TR)
    residuals, names = clean_bold(prepared, wm=wm, csf=csf)
    assert names == [*FRISTON24_NAMES, "white_matter", "csf", "legendre0", "legendre1",
                     "legendre2"]
    t = np.arange(n, dtype=np.float64)
    design = np.column_stack([friston24(motion), tissue_signals(data, wm, csf),
                              np.ones(n), t, t ** 2])
    y = data.reshape(-1, n).T.astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(residuals.reshape(-1, n), (y - design @ coef).T, atol=2e-3)

    residuals, names = clean_bold(prepared)
    assert names == [*FRISTON24_NAMES, "legendre0", "legendre1", "legendre2"]
    np.testing.assert_array_equal(
        residuals, nuisance_regression(data, mask, friston24(motion), polort=2))
    _, names = clean_bold(prepared, csf=csf)
    assert "csf" in names and "white_matter" not in names


# ---------------------------------------------------------------------------
# The whole preparation on a phantom with known motion
# ---------------------------------------------------------------------------

def test_prepare_bold_recovers_phantom_motion_and_scales_to_10000() -> None:
    vox = (4.0, 4.0, 4.5)
    series, truth = phantom_bold((40, 40, 24), vox, 20, seed=3)
    prepared = prepare_bold(series, vox, TR)
    assert prepared.n_dummy == 5
    assert prepared.data.shape == (40, 40, 24, 15)
    assert prepared.data.dtype == np.float32
    # Truth relative to the reference (the first kept volume): A_t A_ref^-1.
    ref_inv = np.linalg.inv(params_to_matrix(truth[5]))
    relative = np.array([_matrix_to_params(params_to_matrix(p) @ ref_inv) for p in truth[5:]])
    error = prepared.motion - relative
    trans_rms = np.sqrt(np.mean(error[:, :3] ** 2, axis=0))
    rot_rms_deg = np.rad2deg(np.sqrt(np.mean(error[:, 3:] ** 2, axis=0)))
    print(f"\nprepare_bold on a phantom: translation RMS error (mm) {np.round(trans_rms, 4)}, "
          f"rotation RMS error (deg) {np.round(rot_rms_deg, 4)}, {prepared.n_spikes} spikes, "
          f"timings {({k: round(v, 3) for k, v in prepared.timings.items()})}")
    assert np.all(prepared.motion[0] == 0)
    assert np.all(trans_rms < 0.1)
    assert np.all(rot_rms_deg < 0.1)
    assert prepared.data[prepared.mask].mean(dtype=np.float64) == pytest.approx(10000, rel=1e-6)
    np.testing.assert_allclose(prepared.mean, prepared.data.mean(axis=3), atol=1e-2)
    assert prepared.mask[20, 20, 12] and 0.05 < prepared.mask.mean() < 0.9
    assert list(prepared.timings) == ["drop_dummy", "despike", "motion", "realign", "mask",
                                      "scale"]
    assert all(v >= 0 for v in prepared.timings.values())
    # With slice timing and without despiking.
    timing = list((np.arange(24) % 2 * 12 + np.arange(24) // 2) * (TR / 24))
    other = prepare_bold(series, vox, TR, slice_timing=timing, despike=False, n_dummy=6)
    assert list(other.timings) == ["drop_dummy", "slice_timing", "motion", "realign", "mask",
                                   "scale"]
    assert other.n_spikes == 0 and other.motion.shape == (14, 6)
    with pytest.raises(BoldPreprocessError, match="27 regressors"):
        clean_bold(other)  # 14 volumes cannot fit 24 motion terms and 3 trends


@pytest.mark.parametrize(("zooms", "tr", "kwargs"), [
    ((3.0, 3.0), TR, {}),
    ((3.0, 3.0, -3.0), TR, {}),
    ((3.0, 3.0, 3.0), 0.0, {}),
    ((3.0, 3.0, 3.0), TR, {"reference": 99}),
    ((3.0, 3.0, 3.0), TR, {"reference": "mean"}),
    ((3.0, 3.0, 3.0), TR, {"interpolation_order": 7}),
    ((3.0, 3.0, 3.0), TR, {"n_dummy": 8}),
    ((3.0, 3.0, 3.0), TR, {"slice_timing": [0.0, 1.0]}),
])
def test_prepare_bold_refuses_bad_settings(zooms, tr, kwargs) -> None:
    series = np.random.default_rng(10).normal(100.0, 1.0, (8, 8, 6, 16))
    with pytest.raises(BoldPreprocessError):
        prepare_bold(series, zooms, tr, **kwargs)
