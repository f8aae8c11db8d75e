"""isyb.head.morphology.distance_mm against scipy's exact distance transform."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.head.morphology import _integer_spacing, distance_mm


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A head-like mask: smoothed noise cut at a level, so it has curved surfaces, holes
    and islands, and voxels on every side of the array."""
    noise = np.random.default_rng(seed).normal(size=shape)
    return ndimage.gaussian_filter(noise, 3.0) > 0.0


@pytest.mark.parametrize("zooms", [(1.0, 1.0, 1.0), (2.0, 2.0, 2.0), (0.5, 0.5, 0.5),
                                   (2.0, 2.0, 3.0), (1.0, 1.0, 1.5), (4.0, 2.0, 1.0)])
def test_dyadic_voxels_give_scipys_bits(zooms: tuple[float, ...]) -> None:
    mask = _blobs((37, 41, 29), seed=1)
    expected = ndimage.distance_transform_edt(mask, sampling=zooms)
    np.testing.assert_array_equal(distance_mm(mask, zooms), expected)
    np.testing.assert_array_equal(distance_mm(~mask, zooms),
                                  ndimage.distance_transform_edt(~mask, sampling=zooms))


@pytest.mark.parametrize("zooms", [(0.88, 0.88, 0.88), (1.6, 1.6, 1.6), (1.2, 1.2, 3.6),
                                   (0.9375, 0.9375, 1.2)])
def test_other_voxels_agree_with_scipy_to_rounding(zooms: tuple[float, ...]) -> None:
    mask = _blobs((33, 30, 31), seed=2)
    expected = ndimage.distance_transform_edt(mask, sampling=zooms)
    np.testing.assert_allclose(distance_mm(mask, zooms), expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("zooms", [(1.0, np.sqrt(2.0), 1.0),  # irrational
                                   (1.60000324, 1.59999997, 1.60000007),  # myconnectome's header
                                   (0.9765625, 0.9765625, 1.0),  # ds000240: 128/125, too fine
                                   (1.0, 1.00000005, 2.0000001)])
def test_spacings_edt_cannot_hold_exactly_give_scipys_bits(zooms: tuple[float, ...]) -> None:
    mask = _blobs((20, 22, 24), seed=3)
    assert _integer_spacing(np.array(zooms), mask.shape) is None
    for image in (mask, ~mask, mask[:, :, 7]):  # 3-D both ways, and 2-D
        sampling = zooms[:image.ndim]
        np.testing.assert_array_equal(distance_mm(image, sampling),
                                      ndimage.distance_transform_edt(image, sampling=sampling))


def test_spacings_edt_cannot_hold_exactly_are_recognised() -> None:
    # a grid so large that squared distances leave float32's exact integers
    assert _integer_spacing(np.array([1.0, 1.0, 64.0]), (256, 256, 256)) is None
    assert _integer_spacing(np.array([2.0, 2.0, 3.0]), (256, 256, 256)) is not None


def test_edge_cases_match_scipy() -> None:
    full = np.ones((6, 7, 8), dtype=bool)  # no False voxel: scipy's own convention
    np.testing.assert_array_equal(distance_mm(full, (1.0, 1.0, 2.0)),
                                  ndimage.distance_transform_edt(full, sampling=(1.0, 1.0, 2.0)))
    empty = np.zeros((6, 7, 8), dtype=bool)
    np.testing.assert_array_equal(distance_mm(empty, 1.0), np.zeros(empty.shape))
    mask = _blobs((30, 32, 34), seed=4)
    for view in (mask[3:25, ::2, 5:], np.asfortranarray(mask)):  # strided and Fortran order
        np.testing.assert_array_equal(distance_mm(view, (1.0, 2.0, 1.0)),
                                      ndimage.distance_transform_edt(view, sampling=(1, 2, 1)))
