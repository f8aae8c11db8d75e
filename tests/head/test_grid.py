"""strided_box_mean equals scipy's uniform filter followed by subsampling."""

import numpy as np
import pytest
from scipy import ndimage

from isyb.head.grid import strided_box_mean
from isyb.head.register import working_grid


@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror"])
@pytest.mark.parametrize("factors", [(4, 4, 4), (2, 3, 1), (5, 2, 4), (1, 1, 1)])
@pytest.mark.parametrize("first", ["zero", "half", "odd"])
def test_matches_filter_then_subsample(mode, factors, first):
    data = np.random.default_rng(1).normal(50, 20, (37, 41, 29)).astype(np.float32)
    start = {"zero": (0, 0, 0), "half": tuple(f // 2 for f in factors), "odd": (1, 2, 0)}[first]
    expected = ndimage.uniform_filter(data, factors, mode=mode)[
        tuple(slice(s, None, f) for s, f in zip(start, factors, strict=True))]
    got = strided_box_mean(data, factors, start, mode=mode)
    assert got.dtype == np.float32
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_working_grid_same_with_and_without_fast_path():
    """A whole-voxel step (1 -> 4 mm) takes the fast path; a 0.99999 mm grid the filter path."""
    data = np.random.default_rng(2).random((48, 52, 44)).astype(np.float32)
    fast, fast_affine = working_grid(data, np.eye(4), 4.0)
    slow, _ = working_grid(data, np.eye(4) * [0.99999, 0.99999, 0.99999, 1], 4.0)
    assert fast.shape == slow.shape == (12, 13, 11)
    np.testing.assert_allclose(fast, slow, atol=1e-3)
    np.testing.assert_allclose(np.diag(fast_affine)[:3], 4.0)
