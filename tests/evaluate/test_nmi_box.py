"""``face_nmi`` reads the mask's voxels in its bounding box: the same NMI, to the bit, as
reading them from the whole grids (the formulation before the box)."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.evaluate import nmi


def _whole_grid_nmi(original: np.ndarray, defaced: np.ndarray, mask: np.ndarray,
                    method: str) -> float:
    inside = mask.astype(bool)
    a = original[inside].astype(np.float64)
    removed = a - defaced[inside].astype(np.float64)
    bins = nmi.BINS
    labels_a, labels_r = nmi.quantize(a, bins), nmi.quantize(removed, bins)
    joint = np.bincount(labels_a * bins + labels_r, minlength=bins * bins).astype(np.float64)
    h_a = nmi._entropy(np.bincount(labels_a, minlength=bins).astype(np.float64))
    h_r = nmi._entropy(np.bincount(labels_r, minlength=bins).astype(np.float64))
    h_ar = nmi._entropy(joint)
    if method == "studholme":
        return (h_a + h_r) / h_ar if h_ar > 0 else 1.0
    if h_r == 0.0 or h_a == 0.0:
        return 0.0
    return max(h_a + h_r - h_ar, 0.0) / ((h_a + h_r) / 2.0)


@pytest.mark.parametrize("method", nmi.METHODS)
@pytest.mark.parametrize("case", ["blob", "edges", "scattered", "one voxel"])
def test_the_box_gives_the_whole_grid_nmi(case: str, method: str) -> None:
    rng = np.random.default_rng(len(case))
    shape = (23, 31, 19)
    original = rng.normal(100.0, 30.0, shape).astype(np.float32)
    defaced = original.copy()
    grid = np.indices(shape)
    if case == "blob":
        mask = ((grid - np.array([11, 20, 9])[:, None, None, None]) ** 2).sum(0) < 40
    elif case == "edges":
        mask = (grid[0] == 0) | (grid[1] == shape[1] - 1) | (grid[2] > 15)
    elif case == "scattered":
        mask = rng.random(shape) < 0.05
    else:
        mask = np.zeros(shape, dtype=bool)
        mask[4, 30, 0] = True
    change = mask & (rng.random(shape) < 0.6)
    defaced[change] = rng.normal(20.0, 5.0, int(change.sum()))
    expected = _whole_grid_nmi(original, defaced, mask, method)
    assert nmi.face_nmi(original, defaced, mask.astype(np.uint8), method=method) == expected
