"""``skin_surface_in``: the skin surface inside a region, from the region's box only, is the
whole grid's skin surface inside the region, voxel for voxel."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.head.morphology import skin_surface, skin_surface_in


def _blobs(seed: int, shape=(23, 19, 17)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    head = ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.5
    region = ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.52
    return head, region


@pytest.mark.parametrize("seed", range(6))
def test_same_voxels_as_on_the_whole_grid(seed: int) -> None:
    head, region = _blobs(seed)
    assert region.any() and not region.all()
    assert np.array_equal(skin_surface_in(head, region), skin_surface(head) & region)


def test_regions_on_the_image_faces_and_corners() -> None:
    """Where the grown box is cut by the image's faces, the image's edge is air in both."""
    head = np.ones((9, 8, 7), dtype=bool)
    for region in (np.zeros(head.shape, dtype=bool), np.ones(head.shape, dtype=bool)):
        assert np.array_equal(skin_surface_in(head, region), skin_surface(head) & region)
    region = np.zeros(head.shape, dtype=bool)
    region[0, 3, 3] = region[8, 7, 6] = region[4, 0, 2] = True
    expected = skin_surface(head) & region
    assert expected.sum() == 3
    assert np.array_equal(skin_surface_in(head, region), expected)
    region[:] = False
    region[3:6, 3:5, 2:5] = True  # inside the solid block: no skin, even at the box's faces
    assert not skin_surface_in(head, region).any()


@pytest.mark.parametrize("shape", [(23, 19, 17), (1, 6, 5), (2, 3, 4), (0, 4, 4), (6, 1, 1)])
def test_skin_surface_is_the_cross_erosions(shape) -> None:
    """``skin_surface`` from shifted slices (issue 13's scale pass) gives
    ``head & ~binary_erosion(head)`` (SciPy's cross, outside = air), edges included."""
    rng = np.random.default_rng(sum(shape))
    for density in (0.3, 0.7, 1.0):
        head = rng.random(shape) < density
        if min(shape) > 2:
            head = ndimage.gaussian_filter(head.astype(float), 1.0) > 0.5
        np.testing.assert_array_equal(skin_surface(head), head & ~ndimage.binary_erosion(head))
