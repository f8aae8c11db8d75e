"""VMHC, the symmetric-template check and whole-brain z-scores against known truth."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from isyb.derive.vmhc import (
    R_CLIP,
    VMHCInputError,
    check_symmetric,
    grid_mirror_error,
    mirror,
    vmhc,
    zscore_in_mask,
)

N = 200  # time points


def _grid(shape: tuple[int, int, int], voxel: float = 3.0, shift: float = 0.0) -> np.ndarray:
    """A RAS affine whose voxel centres are symmetric about x = 0 (then moved by ``shift`` mm)."""
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = [-(shape[0] - 1) * voxel / 2 + shift, -60.0, -40.0]
    return affine


def _world_x(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    return np.broadcast_to((affine[0, 0] * np.arange(shape[0]) + affine[0, 3])[:, None, None],
                           shape)


def test_mirror_maps_x_to_minus_x_in_world_coordinates() -> None:
    shape = (9, 4, 3)
    affine = _grid(shape)
    x = _world_x(shape, affine)
    np.testing.assert_array_equal(mirror(x, affine), -x)
    series = np.random.default_rng(0).normal(size=(*shape, 5))
    np.testing.assert_array_equal(mirror(series, affine)[2, 1, 0], series[6, 1, 0])
    with pytest.raises(VMHCInputError, match="grid not centred"):
        mirror(x, _grid(shape, shift=1.5))


def test_a_mirror_symmetric_signal_gives_r_one_everywhere_in_the_mask() -> None:
    shape = (10, 5, 4)
    base = np.random.default_rng(1).normal(size=(*shape, N))
    series = base + base[::-1]  # series(x) == series(-x)
    z = vmhc(series, _grid(shape), np.ones(shape, bool))
    np.testing.assert_allclose(z, np.arctanh(R_CLIP), rtol=1e-12)
    assert np.arctanh(R_CLIP) == pytest.approx(8.406, abs=1e-3)


def test_independent_left_and_right_noise_gives_z_near_zero() -> None:
    """Measured with this seed over 1000 independent pairs (n = 200): mean z = 0.0037 and SD
    0.0724, against 0 and 1/sqrt(n - 3) = 0.0712. Bounds: |mean| < 0.01 (4.4 standard
    errors) and the SD within 10% of 1/sqrt(n - 3) (4.5 standard errors of an SD)."""
    shape = (20, 10, 10)
    series = np.random.default_rng(2).normal(size=(*shape, N))
    z = vmhc(series, _grid(shape), np.ones(shape, bool))
    np.testing.assert_array_equal(z, z[::-1])
    half = z[:10].ravel()  # each pair once
    assert abs(half.mean()) < 0.01
    assert half.std() == pytest.approx(1 / np.sqrt(N - 3), rel=0.10)


def test_a_known_correlation_is_recovered() -> None:
    """left = s + a n1 and right = s + a n2 (unit-variance, independent) correlate at
    r = 1 / (1 + a^2): 0.8, 0.5 and 0.2 for a = 0.5, 1 and 2. Over 800 pairs per value the
    mean z is within 0.01 of arctanh(r), 4 standard errors (measured: at most 0.0029 off)."""
    rng = np.random.default_rng(3)
    shape = (20, 20, 12)
    series = np.zeros((*shape, N))
    scales = (0.5, 1.0, 2.0)
    for k, a in enumerate(scales):
        block = slice(4 * k, 4 * k + 4)
        shared = rng.normal(size=(10, 20, 4, N))
        series[:10, :, block] = shared + a * rng.normal(size=shared.shape)
        series[10:, :, block] = (shared + a * rng.normal(size=shared.shape))[::-1]
    z = vmhc(series, _grid(shape), np.ones(shape, bool))
    for k, a in enumerate(scales):
        measured = z[:10, :, 4 * k: 4 * k + 4].mean()
        assert measured == pytest.approx(np.arctanh(1 / (1 + a ** 2)), abs=0.01)


def test_one_voxel_matches_scipy_and_the_mask_applies_to_both_sides() -> None:
    rng = np.random.default_rng(4)
    shape = (7, 5, 4)
    series = rng.normal(size=(*shape, 40)) + 0.3 * rng.normal(size=(1, 1, 1, 40))
    mask = np.ones(shape, bool)
    mask[1, 2, 3] = False  # its mirror (5, 2, 3) is in the mask but loses its partner
    series[0, 0, 0] = 7.0  # flat: r undefined at (0, 0, 0) and at its mirror (6, 0, 0)
    z = vmhc(series, _grid(shape), mask)
    r, _ = stats.pearsonr(series[2, 3, 1], series[4, 3, 1])
    assert z[2, 3, 1] == pytest.approx(np.arctanh(r), abs=1e-12)
    assert z[4, 3, 1] == z[2, 3, 1]
    assert np.isnan(z[[1, 5, 0, 6], [2, 2, 0, 0], [3, 3, 0, 0]]).all()
    assert np.isfinite(z).sum() == mask.size - 4
    assert z[3, 2, 2] == pytest.approx(np.arctanh(R_CLIP))  # the midline is its own mirror


def test_vmhc_refuses_a_grid_that_is_not_centred_and_bad_shapes() -> None:
    shape = (8, 4, 4)
    series = np.random.default_rng(5).normal(size=(*shape, 20))
    with pytest.raises(VMHCInputError, match=r"grid not centred.*6.00 mm"):
        vmhc(series, _grid(shape, shift=3.0), np.ones(shape, bool))
    with pytest.raises(VMHCInputError, match="4-D"):
        vmhc(series[..., 0], _grid(shape), np.ones(shape, bool))
    with pytest.raises(VMHCInputError, match="mask shape"):
        vmhc(series, _grid(shape), np.ones((8, 4, 3), bool))


@pytest.fixture(scope="module")
def nilearn_template() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets

    image = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    return image.get_fdata(), image.affine, mask


def test_the_symmetric_nilearn_template_passes(nilearn_template) -> None:
    template, affine, mask = nilearn_template
    check_symmetric(template, affine)
    check_symmetric(template, affine, mask=mask)
    assert grid_mirror_error(template.shape, affine) == 0.0


def test_a_shifted_or_oblique_grid_fails(nilearn_template) -> None:
    template, affine, _ = nilearn_template
    nudged = affine.copy()
    nudged[0, 3] += 0.05  # misses by 0.1 mm, under 0.1 voxel (0.2 mm)
    check_symmetric(template, nudged)
    shifted = affine.copy()
    shifted[0, 3] += 1.0  # half a voxel: the mirrored centres miss by 2 mm
    with pytest.raises(VMHCInputError, match=r"grid not centred.*2.00 mm"):
        check_symmetric(template, shifted)
    angle = np.deg2rad(3.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    with pytest.raises(VMHCInputError, match="grid not centred"):
        check_symmetric(template, rotation @ affine)


def test_a_lateralised_image_on_a_symmetric_grid_fails(nilearn_template) -> None:
    template, affine, mask = nilearn_template
    lopsided = template.copy()
    lopsided[20:45] *= 1.5  # brighten a slab of the left hemisphere (x = -58..-10 mm)
    with pytest.raises(VMHCInputError, match=r"image asymmetric: correlation with its mirror"):
        check_symmetric(lopsided, affine, mask=mask)


@pytest.mark.realdata
def test_the_asymmetric_2009c_template_fails(data_root: Path) -> None:
    """MNI152NLin2009cAsym (1 mm) lies on a centred grid (x = -96..96 mm), so only the image
    check can catch it. Its correlation with its mirror is 0.981 over the whole head image
    (head-versus-air contrast dominates) and 0.739 inside its brain mask, against 1.000000 for
    the symmetric template: the default threshold 0.99 rejects both, while the brief's 0.9
    would pass the unmasked image."""
    folder = data_root / "templates"
    head = folder / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz"
    brain = folder / "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz"
    if not (head.is_file() and brain.is_file()):
        pytest.skip(f"{head.name} or its brain mask not in the test data")
    image = nib.load(head)
    template = image.get_fdata(dtype=np.float32)
    mask = nib.load(brain).get_fdata(dtype=np.float32) > 0
    assert grid_mirror_error(template.shape, image.affine) < 1e-6
    with pytest.raises(VMHCInputError, match=r"image asymmetric: correlation .* 0\.98"):
        check_symmetric(template, image.affine)
    check_symmetric(template, image.affine, min_correlation=0.9)  # the unmasked image passes
    with pytest.raises(VMHCInputError, match=r"mirror 0\.7[0-9]+ < 0\.9 "):
        check_symmetric(template, image.affine, mask=mask, min_correlation=0.9)


def test_zscore_in_mask_has_mean_zero_and_sd_one_exactly() -> None:
    rng = np.random.default_rng(6)
    metric = rng.gamma(2.0, 3.0, size=(9, 8, 7))
    mask = rng.random(metric.shape) > 0.3
    metric[~mask] = np.nan  # what lies outside the mask does not matter
    z = zscore_in_mask(metric, mask)
    assert z[mask].mean() == pytest.approx(0.0, abs=1e-12)
    assert z[mask].std(ddof=1) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(z[mask], stats.zscore(metric[mask], ddof=1), atol=1e-12)
    assert (z[~mask] == 0).all()


def test_zscore_refuses_non_finite_values_or_no_spread_in_the_mask() -> None:
    metric = np.arange(24.0).reshape(2, 3, 4)
    metric[0, 0, 0] = np.nan
    with pytest.raises(VMHCInputError, match="1 non-finite"):
        zscore_in_mask(metric, np.ones(metric.shape, bool))
    with pytest.raises(VMHCInputError, match="no spread"):
        zscore_in_mask(np.ones((2, 3, 4)), np.ones((2, 3, 4), bool))
