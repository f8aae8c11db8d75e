"""Anatomical image quality metrics (isyb.qc.anat) against known truth and independent code."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy import stats

from isyb.head import morphology, tissue
from isyb.head.register import dice
from isyb.qc import anat, masks, mriqc
from isyb.synthetic.phantom import FACE_LABELS, Label, make_phantom

SIGMA_TO_FWHM = math.sqrt(8.0 * math.log(2.0))
NOISE_SD = 4.0
GM_MEAN, WM_MEAN = 75.0, 110.0  # the phantom's default intensities
METRIC_KEYS = {"isyb_snr", "isyb_snrd_gm", "isyb_cnr", "isyb_fber", "snrd_gm", "cnr", "fber",
               "efc", "fwhm_x", "fwhm_y", "fwhm_z", "fwhm_avg", "fwhm_avg_mm", "cjv", "wm2max",
               "icvs_csf", "icvs_gm", "icvs_wm", "summary_bg_mad", "summary_wm_median"}


def smooth_noise(shape: tuple[int, int, int], sigma_vox: np.ndarray | list[float],
                 seed: int) -> np.ndarray:
    """White Gaussian noise filtered by an exact Gaussian transfer function (periodic).

    Its autocorrelation sampled on the grid is the continuous Gaussian one,
    so the lag-1 correlation along axis a is exp(-1 / (4 sigma_a^2)).
    """
    rng = np.random.default_rng(seed)
    spectrum = np.fft.fftn(rng.standard_normal(shape))
    for axis, (n, s) in enumerate(zip(shape, sigma_vox, strict=True)):
        f = np.fft.fftfreq(n)
        view = [1, 1, 1]
        view[axis] = n
        spectrum *= np.exp(-2.0 * np.pi**2 * s**2 * f**2).reshape(view)
    return np.fft.ifftn(spectrum).real


# ---------------------------------------------------------------------------
# FWHM (AFNI classic)


@pytest.mark.parametrize("fwhm_vox", [2.0, 4.0, 6.0])
def test_fwhm_of_smoothed_noise_isotropic(fwhm_vox: float) -> None:
    field = smooth_noise((96, 96, 96), [fwhm_vox / SIGMA_TO_FWHM] * 3, seed=int(fwhm_vox))
    mask = np.ones(field.shape, dtype=bool)
    for estimate in anat.fwhm_afni(field, mask, (1.0, 1.0, 1.0)):
        assert estimate == pytest.approx(fwhm_vox, rel=0.05)


def test_fwhm_anisotropic_in_mm_inside_a_mask() -> None:
    zooms = np.array([0.8, 1.5, 2.5])
    fwhm_mm = np.array([1.6, 6.0, 15.0])  # 2, 4 and 6 voxels along x, y, z
    field = smooth_noise((96, 80, 64), fwhm_mm / zooms / SIGMA_TO_FWHM, seed=7)
    i, j, k = np.ogrid[:96, :80, :64]
    ellipsoid = ((i - 48) / 46) ** 2 + ((j - 40) / 38) ** 2 + ((k - 32) / 30) ** 2 < 1
    estimates = np.array(anat.fwhm_afni(field, ellipsoid, zooms))
    np.testing.assert_allclose(estimates, fwhm_mm, rtol=0.05)


def test_fwhm_matches_the_written_out_formula() -> None:
    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter(rng.standard_normal((20, 24, 28)), 1.5)
    mask = np.zeros(image.shape, dtype=bool)
    mask[3:17, 2:20, 5:25] = True
    mask[8, 8, 8] = False
    zooms = (1.2, 0.9, 2.0)
    expected = []
    variance = image[mask].var(ddof=1)
    for axis in range(3):
        a = np.moveaxis(image, axis, 0)
        m = np.moveaxis(mask, axis, 0)
        both = m[:-1] & m[1:]
        diffs = (a[1:] - a[:-1])[both]
        arg = 1.0 - diffs.var(ddof=1) / (2.0 * variance)
        expected.append(2.35482 * math.sqrt(-1.0 / (4.0 * math.log(arg))) * zooms[axis])
    np.testing.assert_allclose(anat.fwhm_afni(image, mask, zooms), expected, rtol=1e-10)


def test_fwhm_rejects_what_afni_reports_as_minus_one() -> None:
    checker = np.indices((16, 16, 16)).sum(axis=0) % 2 * 1.0  # anti-correlated neighbours
    with pytest.raises(anat.QCInputError, match="undefined"):
        anat.fwhm_afni(checker, np.ones(checker.shape, dtype=bool), (1, 1, 1))
    with pytest.raises(anat.QCInputError, match="constant"):
        anat.fwhm_afni(np.ones((8, 8, 8)), np.ones((8, 8, 8), dtype=bool), (1, 1, 1))


# ---------------------------------------------------------------------------
# EFC


def _efc_by_hand(x: np.ndarray) -> float:
    """Atkinson's EFC normalised as in MRIQC, written out term by term."""
    x = x.astype(np.float64).ravel()
    n = x.size
    b_max = np.sqrt(np.sum(x**2))
    e_max = n * (1.0 / np.sqrt(n)) * np.log(1.0 / np.sqrt(n))
    return float(np.sum((x / b_max) * np.log((x + 1e-16) / b_max)) / e_max)


def test_efc_equals_the_explicit_formula() -> None:
    rng = np.random.default_rng(2)
    image = rng.gamma(2.0, 30.0, size=(30, 31, 32))
    image[rng.random(image.shape) < 0.1] = 0.0
    assert anat.efc(image) == pytest.approx(_efc_by_hand(image), rel=1e-9)
    mask = rng.random(image.shape) < 0.5
    assert anat.efc(image, mask) == pytest.approx(_efc_by_hand(image[mask]), rel=1e-9)


def test_efc_is_one_for_a_constant_image_and_drops_with_structure() -> None:
    assert anat.efc(np.full((20, 20, 20), 7.0)) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(3)
    noise = rng.uniform(50.0, 60.0, size=(40, 40, 40))
    blob = np.zeros((40, 40, 40))
    blob[10:30, 12:28, 15:25] = 100.0
    blob += rng.uniform(0.0, 2.0, size=blob.shape)
    assert anat.efc(noise) > 0.99
    assert anat.efc(blob) < anat.efc(noise) - 0.1


def test_efc_of_an_all_zero_image_is_an_error() -> None:
    with pytest.raises(anat.QCInputError, match="all zeros"):
        anat.efc(np.zeros((5, 5, 5)))


# ---------------------------------------------------------------------------
# Phantom with known tissue means and Rician noise


@pytest.fixture(scope="module")
def phantom():
    """1.5 mm phantom in a FOV with room for air above and behind the head."""
    return make_phantom(voxel_size=1.5, fov_mm=(240.0, 260.0, 270.0),
                        fov_center_mm=(0.0, 0.0, -10.0), noise_sd=NOISE_SD, seed=1)


@pytest.fixture(scope="module")
def phantom_masks(phantom):
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    return anat.anat_masks(phantom.image, phantom.voxel_size, brain=brain)


def _truth(sigma: float = NOISE_SD) -> dict[str, float]:
    sd_air = sigma * math.sqrt(2.0 - math.pi / 2.0)  # Rayleigh SD
    return {
        "snr": GM_MEAN / sd_air,
        "snrd_gm": GM_MEAN / sigma,
        "cnr": (WM_MEAN - GM_MEAN) / math.sqrt(sd_air**2 + 2.0 * sigma**2),
        "cjv": 2.0 * sigma / (WM_MEAN - GM_MEAN),
    }


def test_rayleigh_factor_is_the_sd_of_a_rayleigh_distribution() -> None:
    assert pytest.approx(stats.rayleigh.std(), rel=1e-12) == anat.DIETRICH_FACTOR
    assert pytest.approx(1.0 / math.sqrt(2.0 / (4.0 - math.pi))) == anat.DIETRICH_FACTOR
    assert pytest.approx(0.6551, abs=1e-4) == anat.DIETRICH_FACTOR


def test_snr_cnr_cjv_with_exact_labels_match_truth(phantom) -> None:
    image, labels = phantom.image, phantom.labels
    gm, wm = labels == Label.GM, labels == Label.WM
    # air: background at least 3 voxels from the head and the FOV border
    air = ndi.binary_erosion(labels == Label.BACKGROUND, iterations=3, border_value=0)
    sd_air = image[air].std()
    assert sd_air == pytest.approx(NOISE_SD * math.sqrt(2.0 - math.pi / 2.0), rel=0.02)
    assert image[air].mean() == pytest.approx(NOISE_SD * math.sqrt(math.pi / 2.0), rel=0.02)
    truth = _truth()
    assert anat.snr(image, gm, air) == pytest.approx(truth["snr"], rel=0.05)
    assert anat.snr_dietrich(image, gm, air) == pytest.approx(truth["snrd_gm"], rel=0.05)
    assert anat.cnr(image, gm, wm, air) == pytest.approx(truth["cnr"], rel=0.05)
    cjv = mriqc.cjv(np.median(image[wm]), np.median(image[gm]), masks.robust_sd(image[wm]),
                    masks.robust_sd(image[gm]))
    assert cjv == pytest.approx(truth["cjv"], rel=0.05)
    # a known SD of air gives the same as the mask it came from
    assert anat.snr(image, gm, float(sd_air)) == pytest.approx(anat.snr(image, gm, air))
    # FBER: head energy over air energy, air energy of Rayleigh noise = 2 sigma^2
    head = labels != Label.BACKGROUND
    expected = float(np.mean(image[head].astype(np.float64) ** 2)) / (2.0 * NOISE_SD**2)
    assert anat.fber(image, head, air) == pytest.approx(expected, rel=0.05)


def test_segmentation_agrees_with_the_phantom_labels(phantom, phantom_masks) -> None:
    labels = phantom_masks.labels
    assert dice(labels == tissue.GM, phantom.labels == Label.GM) > 0.8
    assert dice(labels == tissue.WM, phantom.labels == Label.WM) > 0.8
    assert dice(labels == tissue.CSF, phantom.labels == Label.CSF) > 0.8
    # the eroded cores are (almost) pure: at most 0.1 % of their voxels in another tissue
    for core, label in ((phantom_masks.gm, Label.GM), (phantom_masks.wm, Label.WM)):
        assert core[phantom.labels != label].sum() <= 1e-3 * core.sum()


def test_air_mask_is_clean_background_away_from_the_face(phantom, phantom_masks) -> None:
    air = phantom_masks.air
    assert phantom_masks.noise_source == "air"
    assert air.sum() > 100_000
    assert not air[phantom.labels != Label.BACKGROUND].any()
    # nothing in front of the forehead, nothing near the eyes, nose or lips
    world = phantom.world(np.argwhere(air))
    assert world[:, 1].max() < phantom.landmarks["glabella"][1] - 30.0
    face = ndi.distance_transform_edt(~phantom.mask(*FACE_LABELS), sampling=phantom.voxel_size)
    assert face[air].min() > 40.0
    assert phantom.image[air].std() == pytest.approx(
        NOISE_SD * math.sqrt(2.0 - math.pi / 2.0), rel=0.03)


def test_anat_metrics_on_the_phantom_match_truth(phantom, phantom_masks) -> None:
    metrics = anat.anat_metrics(phantom.image, phantom.voxel_size, masks=phantom_masks)
    assert set(metrics) >= METRIC_KEYS
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    truth = _truth()
    for key in ("snr", "snrd_gm", "cnr"):
        assert metrics[f"isyb_{key}"] == pytest.approx(truth[key], rel=0.05), key
    # MRIQC's CJV on the harmonised image with Atropos posteriors: a ratio, so the same truth
    assert metrics["cjv"] == pytest.approx(truth["cjv"], rel=0.1)
    assert metrics["fwhm_avg"] == pytest.approx(
        (metrics["fwhm_x"] + metrics["fwhm_y"] + metrics["fwhm_z"]) / 3.0)
    assert metrics["fwhm_avg_mm"] == pytest.approx(metrics["fwhm_avg"] * phantom.voxel_size[0])


def test_suppressed_background_falls_back_to_the_noise_in_the_brain(phantom,
                                                                   phantom_masks) -> None:
    image = phantom.image.copy()
    image[phantom.labels == Label.BACKGROUND] = 0.0  # background zeroed, as FreeSurfer does
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    # the brain is the same as the phantom's: its segmentation is reused
    found = dataclasses.replace(phantom_masks,
                                **masks.background_masks(image, phantom.voxel_size, brain))
    assert found.noise_source == "brain"
    assert "no measurable background" in found.note
    metrics = anat.anat_metrics(image, phantom.voxel_size, masks=found)
    truth = _truth()
    for key in ("snr", "snrd_gm", "cnr"):
        assert metrics[f"isyb_{key}"] == pytest.approx(truth[key], rel=0.10), key
    with pytest.raises(anat.NoBackgroundError):
        masks.air_mask(image, found.head, phantom.voxel_size, brain=brain)


def test_brain_noise_sd_of_white_noise() -> None:
    rng = np.random.default_rng(5)
    image = 100.0 + 3.0 * rng.standard_normal((60, 60, 60))
    mask = np.zeros(image.shape, dtype=bool)
    mask[5:55, 5:55, 5:55] = True
    assert anat.brain_noise_sd(image, mask) == pytest.approx(3.0, rel=0.03)


# ---------------------------------------------------------------------------
# Cross-checks against independent implementations


def test_robust_sd_matches_statsmodels_mad_as_mriqc_uses_it() -> None:
    scale = pytest.importorskip("statsmodels.robust.scale")
    rng = np.random.default_rng(6)
    image = np.where(rng.random((30, 30, 30)) < 0.5, rng.normal(75, 5, (30, 30, 30)),
                     rng.normal(110, 4, (30, 30, 30)))
    gm, wm = image < 92, image >= 92
    assert anat.robust_sd(image[gm]) == pytest.approx(float(scale.mad(image[gm])), rel=1e-12)
    assert anat.robust_sd(image[wm]) == pytest.approx(float(scale.mad(image[wm])), rel=1e-12)


def test_mixture_fit_matches_scikit_learn() -> None:
    mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.normal(30, 8, 20_000), rng.normal(75, 6, 50_000),
                             rng.normal(110, 5, 40_000)])
    ours = tissue.fit_mixture(values)
    theirs = mixture.GaussianMixture(3, random_state=0).fit(values.reshape(-1, 1))
    order = np.argsort(theirs.means_.ravel())
    np.testing.assert_allclose(ours.means, theirs.means_.ravel()[order], rtol=0.01)
    np.testing.assert_allclose(ours.sds, np.sqrt(theirs.covariances_.ravel()[order]),
                               rtol=0.03)
    np.testing.assert_allclose(ours.weights, theirs.weights_[order], atol=0.01)


def test_mixture_fit_finds_every_class_when_one_tissue_dominates() -> None:
    """80 % white matter (a 1.5 mm phantom brain): the percentile start alone puts two
    classes in the white matter; the best of both starts matches scikit-learn's k-means
    initialised EM."""
    mixture = pytest.importorskip("sklearn.mixture")
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.normal(30, 4, 10_000), rng.normal(73, 3, 30_000),
                             rng.normal(108, 3, 160_000)])
    ours = tissue.fit_mixture(values)
    np.testing.assert_allclose(ours.means, [30, 73, 108], atol=1.0)
    theirs = mixture.GaussianMixture(3, n_init=3, random_state=0).fit(values.reshape(-1, 1))
    np.testing.assert_allclose(ours.means, np.sort(theirs.means_.ravel()), rtol=0.01)


def test_erode18_and_empty_mask_match_scipy_morphology() -> None:
    rng = np.random.default_rng(9)
    mask = ndi.binary_closing(rng.random((30, 32, 34)) < 0.6, iterations=2)
    expected = ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(3, 2))
    np.testing.assert_array_equal(morphology.erode18(mask), expected)
    data = np.where(rng.random((30, 32, 34)) < 0.3, 0.0, 5.0)
    data[5:15, 5:20, 10:30] = 0.0
    opened = ndi.binary_opening(data <= 0, structure=np.ones((3, 3, 3), dtype=bool))
    inner = (slice(2, -2),) * 3  # scipy and isyb differ only in how the FOV edge counts
    np.testing.assert_array_equal(masks.empty_mask(data)[inner], opened[inner])
    assert masks.empty_mask(data)[5:15, 5:20, 10:30].all()


# ---------------------------------------------------------------------------
# Bad input


def test_bad_input_gives_clear_errors(phantom) -> None:
    zooms = phantom.voxel_size
    brain = phantom.brain_mask
    with pytest.raises(ValueError, match="3-D"):
        anat.anat_metrics(np.zeros((4, 4, 4, 3)), zooms, brain=brain)
    bad = phantom.image.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        anat.anat_metrics(bad, zooms, brain=brain)
    with pytest.raises(ValueError, match="no positive values"):
        anat.anat_metrics(np.zeros(phantom.shape), zooms, brain=brain)
    with pytest.raises(ValueError, match="brain mask is empty"):
        anat.anat_masks(phantom.image, zooms, brain=np.zeros(phantom.shape, dtype=bool))
    with pytest.raises(ValueError, match="contrast"):
        tissue.segment_tissues(phantom.image, brain, zooms, contrast="FLAIR")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="air"):
        anat.snr(phantom.image, brain, np.zeros(phantom.shape, dtype=bool))


def test_t2w_contrast_reverses_the_class_order() -> None:
    phantom = make_phantom(voxel_size=3.0, noise_sd=NOISE_SD, seed=1)  # 3 mm: 8 x cheaper
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    inverted = 150.0 - np.where(brain, phantom.image, 150.0)  # CSF bright, WM dark
    labels = tissue.segment_tissues(inverted, brain, phantom.voxel_size, contrast="T2w")
    assert dice(labels == tissue.GM, phantom.labels == Label.GM) > 0.8
    assert dice(labels == tissue.WM, phantom.labels == Label.WM) > 0.8
    assert dice(labels == tissue.CSF, phantom.labels == Label.CSF) > 0.8


# ---------------------------------------------------------------------------
# Defacing does not move the background metrics (phantom, all three methods)


@pytest.mark.slow
def test_defacing_the_phantom_leaves_background_metrics_unchanged(default_template) -> None:
    from isyb.deface.engine import DefaceOptions, align, deface_volume
    from isyb.io import volume_from_image
    from isyb.synthetic.phantom import to_nifti

    phantom = make_phantom(voxel_size=2.0, fov_mm=(240.0, 260.0, 270.0),
                           fov_center_mm=(0.0, 0.0, -10.0), noise_sd=NOISE_SD, seed=4)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    alignment = align(volume, default_template, brain=phantom.brain_mask)
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    found = anat.anat_masks(volume.data, volume.zooms, brain=brain)
    reference = anat.anat_metrics(volume.data, volume.zooms, masks=found)
    for method in ("blur", "remove", "noise"):
        result = deface_volume(volume, default_template, DefaceOptions(method=method),
                               alignment=alignment)
        assert (result.data != volume.data).sum() > 10_000  # the face did change
        # defacing leaves the brain alone: its segmentation is reused, the background redone
        copy = dataclasses.replace(found, **masks.background_masks(result.data, volume.zooms,
                                                                   brain))
        assert not (result.data != volume.data)[brain].any()
        metrics = anat.anat_metrics(result.data, volume.zooms, masks=copy)
        for key in ("isyb_snr", "isyb_snrd_gm", "isyb_cnr"):
            assert metrics[key] == pytest.approx(reference[key], rel=0.01), (method, key)


def test_qc_anat_refuses_a_4d_image_and_what_is_not_an_image() -> None:
    import nibabel as nib

    series = nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4))
    with pytest.raises(anat.QCInputError, match="3-D image"):
        anat.qc_anat(series)
    with pytest.raises(TypeError, match="path or a nibabel image"):
        anat.qc_anat(np.ones((8, 8, 8)))
