"""The renderer's boundary voxels come from an erosion by the 3x3x3 cube; the shifted-slice
erosion (:func:`isyb.viz.render._eroded_by_cube`, issue 13's scale pass) must give SciPy's
minimum filter's voxels, on thin and empty arrays too, and the same scene."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.viz import render


def _scipy(mask: np.ndarray) -> np.ndarray:
    return ndimage.minimum_filter(mask.view(np.uint8), size=3, mode="constant", cval=0) != 0


@pytest.mark.parametrize("shape", [(30, 40, 20), (1, 5, 5), (2, 3, 4), (3, 3, 3), (7, 1, 9)])
def test_erosion_by_the_cube_is_scipys(shape) -> None:
    rng = np.random.default_rng(sum(shape))
    for density in (0.2, 0.8, 1.0):
        mask = rng.random(shape) < density
        if min(shape) > 2:
            mask = ndimage.binary_closing(mask) | mask
        np.testing.assert_array_equal(render._eroded_by_cube(mask), _scipy(mask))


def test_the_scenes_boundary_is_the_minimum_filters() -> None:
    rng = np.random.default_rng(5)
    data = (100 * ndimage.gaussian_filter(rng.random((40, 44, 36)), 3)).astype(np.float32)
    scene = render._scene(data, (1.0, 1.2, 0.9), float(np.percentile(data, 60)))
    above = scene.volume > np.float32(scene.threshold)
    lo = np.rint(scene.origin_mm / scene.zooms).astype(int)
    expected = (np.argwhere(above & ~_scipy(above)) + lo) * scene.zooms - scene.centre_mm
    assert expected.shape[0] > 100
    assert scene.boundary_mm.tobytes() == expected.tobytes()
