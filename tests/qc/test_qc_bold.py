"""Tests of BOLD quality control: motion estimation and MRIQC's functional metrics.

Cross-checks against independent code (nipype's ``FramewiseDisplacement`` and
``compute_dvars``, a brute-force correlation matrix for GCOR), against known
truth (synthetic rigid motion), bad-input errors, and the real BOLD runs of
the shared test data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.errors import IsybError
from isyb.head.motion import PARAM_NAMES, apply_motion, estimate_motion, params_to_matrix
from isyb.qc.bold import (
    MIN_VOLUMES,
    BoldInputError,
    bold_brain_mask,
    bold_metrics,
    detect_dummy_scans,
    dvars,
    fd_summary,
    framewise_displacement,
    gcor,
    qc_bold,
    repetition_time,
    run_bold_qc,
    tsnr,
)
from isyb.synthetic.epi import phantom_bold

# ---------------------------------------------------------------------------
# Motion estimation
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("shape", "vox"), [((64, 64, 36), (3.0, 3.0, 3.0)),
                                            ((56, 56, 30), (3.5, 3.5, 4.0))])
def test_motion_recovers_known_rigid_motion(shape, vox):
    series, truth = phantom_bold(shape, vox, 30)
    estimate = estimate_motion(series, vox)
    error = estimate - truth
    trans_rms = np.sqrt(np.mean(error[:, :3] ** 2, axis=0))
    rot_rms_deg = np.rad2deg(np.sqrt(np.mean(error[:, 3:] ** 2, axis=0)))
    print(f"\nmotion recovery {shape} @ {vox} mm: translation RMS error (mm) "
          f"{np.round(trans_rms, 4)}, max {np.abs(error[:, :3]).max():.4f}; rotation RMS "
          f"error (deg) {np.round(rot_rms_deg, 4)}, max "
          f"{np.rad2deg(np.abs(error[:, 3:]).max()):.4f}")
    assert np.all(trans_rms < 0.1)
    assert np.all(rot_rms_deg < 0.1)
    assert np.all(estimate[0] == 0)


def test_motion_params_round_trip_and_apply_motion():
    params = np.array([1.0, -2.0, 0.5, 0.02, -0.01, 0.03])
    mat = params_to_matrix(params)
    assert np.allclose(mat[:3, :3] @ mat[:3, :3].T, np.eye(3))
    from isyb.head.motion import _matrix_to_params

    assert np.allclose(_matrix_to_params(mat), params)
    # A pure translation of +1 voxel along x: the realigned volume samples one voxel on.
    vol = np.random.default_rng(0).normal(size=(8, 9, 10))
    moved = apply_motion(vol, (2.0, 2.0, 2.0), [2.0, 0, 0, 0, 0, 0])
    assert np.allclose(moved[:-1], vol[1:])


def test_motion_reference_median_and_errors():
    series, _ = phantom_bold((32, 32, 20), (6.0, 6.0, 6.0), 10, max_trans=0.0,
                                max_rot_deg=0.0, order=1)
    params = estimate_motion(series, (6.0, 6.0, 6.0), reference="median")
    assert np.abs(params[:, :3]).max() < 0.1
    with pytest.raises(ValueError):
        estimate_motion(series[..., 0], (6.0, 6.0, 6.0))
    with pytest.raises(ValueError):
        estimate_motion(series, (6.0, 0.0, 6.0))
    with pytest.raises(ValueError):
        estimate_motion(series, (6.0, 6.0, 6.0), reference="mean")


# ---------------------------------------------------------------------------
# FD against nipype
# ---------------------------------------------------------------------------

def _random_motion(n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[np.cumsum(rng.normal(0, 0.15, (n, 3)), axis=0),
                 np.cumsum(rng.normal(0, 0.002, (n, 3)), axis=0)]


def test_framewise_displacement_by_hand():
    params = np.zeros((3, 6))
    params[1] = [0.1, -0.2, 0.0, 0.001, 0.0, -0.002]
    params[2] = params[1]
    fd = framewise_displacement(params)
    assert fd.shape == (2,)
    assert fd[0] == pytest.approx(0.3 + 50.0 * 0.003)
    assert fd[1] == 0.0
    assert framewise_displacement(params, radius=80.0)[0] == pytest.approx(0.3 + 80.0 * 0.003)


@pytest.mark.parametrize("source", ["SPM", "FSL"])
def test_framewise_displacement_matches_nipype(source, tmp_path, monkeypatch):
    confounds = pytest.importorskip("nipype.algorithms.confounds")
    params = _random_motion(80)
    # nipype's column order per source: SPM = ours; FSL = rotations first.
    table = params if source == "SPM" else params[:, [3, 4, 5, 0, 1, 2]]
    np.savetxt(tmp_path / "mpars.txt", table, fmt="%.17g")
    monkeypatch.chdir(tmp_path)  # nipype writes its output in the working directory
    result = confounds.FramewiseDisplacement(in_file=str(tmp_path / "mpars.txt"),
                                             parameter_source=source, radius=50).run()
    expected = np.loadtxt(result.outputs.out_file, skiprows=1)
    ours = framewise_displacement(params, radius=50.0)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-10)
    assert fd_summary(ours)["fd_mean"] == pytest.approx(result.outputs.fd_average, abs=1e-10)


def test_fd_summary_threshold_is_strict_and_percent_of_all_frames():
    summary = fd_summary(np.array([0.1, 0.2, 0.3, 0.25]), threshold=0.2)
    assert summary["fd_num"] == 2  # 0.2 itself is not above the threshold
    assert summary["fd_perc"] == pytest.approx(100.0 * 2 / 5)  # 4 FD values, 5 frames
    assert summary["fd_mean"] == pytest.approx(0.2125)


# ---------------------------------------------------------------------------
# DVARS against nipype
# ---------------------------------------------------------------------------

def _ar1_series(shape: tuple[int, int, int, int], seed: int = 0) -> np.ndarray:
    """Voxel time series with AR(1) noise (rho 0.1-0.6), a global wave and offsets."""
    rng = np.random.default_rng(seed)
    rho = rng.uniform(0.1, 0.6, shape[:3])
    noise = rng.normal(0.0, 1.0, shape)
    ar = np.empty(shape)
    ar[..., 0] = noise[..., 0]
    for t in range(1, shape[3]):
        ar[..., t] = rho * ar[..., t - 1] + noise[..., t]
    base = rng.uniform(500.0, 1500.0, shape[:3])
    wave = 5.0 * np.sin(np.arange(shape[3]) / 5.0)
    return (base[..., None] + 20.0 * ar + wave).astype(np.float32)


@pytest.mark.parametrize(("remove_zerovariance", "variance_tol", "normalization"),
                         [(True, 1e-7, 1000.0), (False, 0.0, 0.0)])
def test_dvars_matches_nipype(tmp_path, remove_zerovariance, variance_tol, normalization):
    confounds = pytest.importorskip("nipype.algorithms.confounds")
    pytest.importorskip("nitime")  # compute_dvars' AR(1) fit
    data = _ar1_series((12, 10, 8, 60))
    mask = np.zeros(data.shape[:3], dtype=bool)
    mask[2:10, 2:8, 1:7] = True
    if remove_zerovariance:
        data[3, 3, 3, :] = 800.0  # a constant voxel, removed by both
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "bold.nii.gz")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    expected = confounds.compute_dvars(str(tmp_path / "bold.nii.gz"),
                                       str(tmp_path / "mask.nii.gz"),
                                       remove_zerovariance=remove_zerovariance,
                                       intensity_normalization=normalization,
                                       variance_tol=variance_tol)
    ours = dvars(data, mask, intensity_normalization=normalization,
                 remove_zerovariance=remove_zerovariance, variance_tol=variance_tol)
    for name, mine, theirs in zip(("std", "nstd", "vstd"), ours, expected, strict=True):
        assert mine.shape == (data.shape[3] - 1,), name
        np.testing.assert_allclose(mine, theirs, rtol=1e-6, atol=0, err_msg=name)


# ---------------------------------------------------------------------------
# GCOR, tSNR, masks, dummy scans, TR
# ---------------------------------------------------------------------------

def test_gcor_equals_mean_of_the_correlation_matrix():
    rng = np.random.default_rng(3)
    shape = (6, 5, 4, 50)
    shared = rng.normal(size=shape[3])
    weights = rng.uniform(0.0, 1.5, shape[:3])
    data = weights[..., None] * shared + rng.normal(size=shape) + 100.0
    mask = np.ones(shape[:3], dtype=bool)
    mask[0, 0, :] = False
    expected = np.corrcoef(data[mask]).mean()
    assert gcor(data, mask) == pytest.approx(expected, rel=1e-12)
    assert 0.0 < expected < 1.0
    # Uncorrelated noise gives a GCOR near 1/N; one signal everywhere gives 1.
    same = np.broadcast_to(shared, shape) * 2.0 + 5.0
    assert gcor(same, mask) == pytest.approx(1.0)


def test_tsnr_is_mean_over_sd_median_in_mask():
    series = np.empty((4, 4, 4, 20))
    series[...] = 100.0 + 10.0 * np.where(np.arange(20) % 2 == 0, 1.0, -1.0)
    series[0] = 50.0  # constant voxels: SD 0 -> tSNR 0 (outside the mask here)
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[1:] = True
    assert tsnr(series, mask) == pytest.approx(10.0)


def test_bold_snr_and_fber_follow_mriqc():
    from isyb.qc.functional import bold_fber, bold_snr

    rng = np.random.default_rng(2)
    image = rng.normal(10.0, 2.0, (10, 10, 10))
    mask = np.zeros(image.shape, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    image[mask] += 90.0
    inside = image[mask]
    n = inside.size
    # MRIQC: snr(median_fg, std_fg (ddof=0), n) = median / (std * sqrt(n / (n - 1)))
    expected = np.median(inside) / (inside.std() * math.sqrt(n / (n - 1)))
    assert bold_snr(image, mask) == pytest.approx(expected, rel=1e-12)
    expected_fber = np.median(inside ** 2) / np.median(image[~mask] ** 2)
    assert bold_fber(image, mask) == pytest.approx(expected_fber, rel=1e-12)
    image[~mask] = 0.0
    assert bold_fber(image, mask) == -1.0  # no background energy, as MRIQC


def test_bold_brain_mask_finds_a_bright_ball():
    grid = np.indices((40, 40, 30)).astype(float)
    ball = ((grid[0] - 20) ** 2 + (grid[1] - 19) ** 2 + (grid[2] - 15) ** 2) < 12 ** 2
    rng = np.random.default_rng(0)
    image = np.abs(rng.normal(0.0, 5.0, ball.shape)) + 100.0 * ball
    image[18:22, 18:22, 14:16] = 20.0  # a dark spot inside: filled
    image[2:5, 2:5, 2:5] = 100.0  # a bright speck outside: not the largest component
    mask = bold_brain_mask(image)
    dice = 2.0 * np.sum(mask & ball) / (mask.sum() + ball.sum())
    assert dice > 0.97
    assert not mask[3, 3, 3]


def test_detect_dummy_scans():
    rng = np.random.default_rng(0)
    series = 100.0 + rng.normal(0.0, 1.0, (6, 6, 4, 30))
    series[..., :3] *= 1.6
    assert detect_dummy_scans(series) == 3
    assert detect_dummy_scans(series[..., 3:]) == 0


def test_repetition_time_sources():
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4, 20))
    header.set_zooms((2.0, 2.0, 2.0, 1.5))
    header.set_xyzt_units("mm", "sec")
    assert repetition_time(header) == pytest.approx(1.5)
    assert repetition_time(header, {"RepetitionTime": 2.0}) == 2.0
    assert repetition_time(header, {"RepetitionTime": "n/a"}) == pytest.approx(1.5)
    header.set_zooms((2.0, 2.0, 2.0, 1500.0))
    header.set_xyzt_units("mm", "msec")
    assert repetition_time(header) == pytest.approx(1.5)
    header.set_zooms((2.0, 2.0, 2.0, 0.0))
    assert repetition_time(header) is None
    header.set_zooms((2.0, 2.0, 2.0, 5000.0))
    header.set_xyzt_units("mm", "sec")
    assert repetition_time(header) is None
    header3d = nib.Nifti1Header()
    header3d.set_data_shape((4, 4, 4))
    assert repetition_time(header3d) is None


# ---------------------------------------------------------------------------
# The whole run and bad input
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_run() -> tuple[np.ndarray, np.ndarray]:
    return phantom_bold((32, 32, 20), (6.0, 6.0, 6.0), 14, max_trans=1.0, max_rot_deg=1.0,
                           order=1, seed=5)


def test_bold_metrics_outputs(small_run):
    series, _ = small_run
    series = series.copy()
    series[..., :2] *= 1.6  # two non-steady-state volumes
    metrics, table = bold_metrics(series, (6.0, 6.0, 6.0), 2.0)
    expected = {"fd_mean", "fd_num", "fd_perc", "dvars_std", "dvars_nstd", "dvars_vstd",
                "gcor", "tsnr", "snr", "fber", "efc", "fwhm_x", "fwhm_y", "fwhm_z",
                "fwhm_avg", "dummy_trs", "spacing_tr", "size_t"}
    assert expected <= set(metrics)
    assert all(math.isfinite(float(v)) for v in metrics.values())
    assert metrics["dummy_trs"] == 2
    assert metrics["size_t"] == 12
    assert metrics["spacing_tr"] == 2.0
    for name in (*PARAM_NAMES, "framewise_displacement", "dvars_std", "dvars_nstd",
                 "dvars_vstd", "non_steady_state"):
        assert table[name].shape == (14,), name
    assert np.all(np.isnan(table["trans_x"][:2])) and np.all(table["trans_x"][2] == 0)
    assert np.all(np.isnan(table["framewise_displacement"][:3]))
    assert np.all(np.isfinite(table["framewise_displacement"][3:]))
    assert table["non_steady_state"].tolist() == [True] * 2 + [False] * 12
    assert metrics["fd_mean"] == pytest.approx(np.nanmean(table["framewise_displacement"]))
    assert metrics["dvars_std"] == pytest.approx(np.nanmean(table["dvars_std"]))
    # With the dummy scans given, nothing is detected; a given mask is used as is.
    result = run_bold_qc(series, (6.0, 6.0, 6.0), 2.0, dummy_scans=0,
                         mask=np.ones(series.shape[:3], dtype=bool))
    assert result.dummy_scans == 0
    assert result.mask.all()
    assert result.realigned.shape == series.shape


@pytest.mark.parametrize(("change", "tr", "message"), [
    ("3d", 2.0, "4-D"),
    ("short", 2.0, "at least 10 volumes"),
    ("nan", 2.0, "NaN"),
    ("none", None, "TR"),
    ("none", 0.0, "positive"),
    ("none", -2.0, "positive"),
    ("none", float("nan"), "positive"),
    ("none", "abc", "number"),
])
def test_bad_input_raises_clear_errors(small_run, change, tr, message):
    series = small_run[0].copy()
    if change == "3d":
        series = series[..., 0]
    elif change == "short":
        series = series[..., :MIN_VOLUMES - 1]
    elif change == "nan":
        series[3, 4, 5, 6] = np.nan
    with pytest.raises(BoldInputError, match=message) as info:
        bold_metrics(series, (6.0, 6.0, 6.0), tr)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, IsybError)


def test_qc_bold_of_a_path_and_of_an_in_memory_image_agree(small_run, tmp_path):
    image = nib.Nifti1Image(small_run[0], np.diag([6.0, 6.0, 6.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    path = tmp_path / "sub-01_task-rest_bold.nii.gz"
    image.to_filename(str(path))
    from_path = qc_bold(path, fd_threshold=0.3)
    in_memory = qc_bold(nib.load(path), fd_threshold=0.3)
    assert from_path.to_json() == in_memory.to_json()
    assert from_path.to_json()["tr_s"] == 2.0
    assert from_path.frames().equals(in_memory.frames())
    # metadata wins over the header; an explicit TR over both.
    assert qc_bold(image, metadata={"RepetitionTime": 1.5}).tr_s == 1.5
    assert qc_bold(image, tr=3.0, metadata={"RepetitionTime": 1.5}).tr_s == 3.0


def test_qc_bold_refuses_a_3d_image_and_what_is_not_an_image():
    volume = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(BoldInputError, match="4-D BOLD series"):
        qc_bold(volume)
    with pytest.raises(TypeError, match="path or a nibabel image"):
        qc_bold(np.ones((8, 8, 8, 12)))


def test_too_many_dummy_scans_is_an_error(small_run):
    with pytest.raises(BoldInputError, match="dummy"):
        bold_metrics(small_run[0], (6.0, 6.0, 6.0), 2.0, dummy_scans=10)  # 4 would remain


# ---------------------------------------------------------------------------
# Real data
# ---------------------------------------------------------------------------

def _load_bold(path: Path) -> tuple[np.ndarray, tuple[float, ...], float | None]:
    img = nib.load(path)
    sidecar = Path(str(path).removesuffix(".nii.gz") + ".json")
    metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    tr = repetition_time(img.header, metadata)
    return np.asarray(img.dataobj), tuple(float(z) for z in img.header.get_zooms()[:3]), tr


@pytest.mark.realdata
@pytest.mark.parametrize(("name", "expected_tr"), [("ge_epi_10vol", 5.0),
                                                   ("nitime_fmri1", 1.35)])
def test_real_bold_runs_end_to_end(data_root, name, expected_tr):
    path = data_root / "bold" / f"{name}.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found in the test data")
    data, zooms, tr = _load_bold(path)
    assert tr == pytest.approx(expected_tr, rel=1e-6)
    result = run_bold_qc(data, zooms, tr)
    print(f"\n{name}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in result.metrics.items()))
    assert all(math.isfinite(float(v)) for v in result.metrics.values())
    assert result.mask.sum() >= 100
    for column in result.table.values():
        assert column.shape == (data.shape[3],)
    if name == "ge_epi_10vol":
        # This run has large deliberate head motion (up to about 50 degrees in
        # plane in volumes 2-3, a slab shift in volumes 6-7): realignment must
        # bring the volumes closer to the reference. (The nitime run is a
        # 10x10x18 crop, 21x21x41 mm, on which rotations are barely determined.)
        assert result.metrics["fd_mean"] > 5.0
        steady = data[..., result.dummy_scans:].astype(np.float64)
        moved = result.realigned
        before, after = [], []
        for t in range(1, steady.shape[3]):
            before.append(np.corrcoef(steady[..., 0].ravel(), steady[..., t].ravel())[0, 1])
            after.append(np.corrcoef(moved[..., 0].ravel(), moved[..., t].ravel())[0, 1])
        assert np.mean(after) > np.mean(before) + 0.03
        assert np.all(np.array(after) >= np.array(before) - 0.01)
