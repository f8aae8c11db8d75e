"""Unit tests of the obscuring methods and their helpers, on synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.obscure import (
    downsample,
    head_mask,
    obscure,
    signed_distance,
    smooth_envelope,
    upsample,
)
from isyb.phantom import Label, make_phantom


def test_upsample_matches_scipy_linear_interpolation() -> None:
    coarse = np.random.default_rng(0).random((20, 17, 9)).astype(np.float32)
    factors = np.array([2, 3, 1])
    shape = (41, 50, 9)
    expected = ndimage.affine_transform(coarse, np.diag(1.0 / factors),
                                        offset=-(factors // 2) / factors, output_shape=shape,
                                        order=1, mode="nearest")
    assert np.allclose(upsample(coarse, factors, shape), expected, atol=1e-5)


def test_downsample_is_a_block_mean() -> None:
    array = np.arange(6 * 4 * 2, dtype=np.float32).reshape(6, 4, 2)
    coarse = downsample(array, np.array([3, 2, 1]))
    assert coarse.shape == (2, 2, 2)
    assert coarse[0, 0, 0] == pytest.approx(array[0:3, 0:2, 0].mean())


def test_signed_distance_is_negative_inside_and_in_mm() -> None:
    mask = np.zeros((21, 21, 21), dtype=bool)
    mask[5:16, 5:16, 5:16] = True
    distance = signed_distance(mask, np.array([2.0, 2.0, 2.0]))
    assert distance[10, 10, 10] == pytest.approx(-12.0)
    assert distance[10, 10, 0] == pytest.approx(10.0)


def test_head_mask_is_the_solid_head() -> None:
    phantom = make_phantom(voxel_size=2.0, seed=1)
    head = head_mask(phantom.image, threshold=20.0)
    # dark skull and eyes are inside the head; the air around it is not
    assert head[phantom.labels == Label.SKULL].mean() > 0.99
    assert head[phantom.labels == Label.EYES].mean() > 0.99
    assert head[phantom.labels == Label.BACKGROUND].mean() < 0.01


def test_smooth_envelope_flattens_a_nose_and_keeps_the_head() -> None:
    grid = np.indices((60, 60, 60)).astype(float)
    ball = ((grid - 30) ** 2).sum(axis=0) <= 20**2
    nose = (np.abs(grid[0] - 30) <= 2) & (np.abs(grid[2] - 30) <= 2) & (grid[1] > 30) \
        & (grid[1] <= 58)
    head = ball | nose
    envelope = smooth_envelope(head, np.ones(3), 4.0) > 0.5
    assert envelope[30, 30, 30] and envelope[30, 48, 30]
    assert not envelope[30, 56, 30]  # the thin protrusion is gone


@pytest.mark.parametrize("method", ["blur", "remove", "noise"])
def test_methods_change_only_allowed_voxels_inside_the_region(method: str) -> None:
    phantom = make_phantom(voxel_size=2.0, seed=2)
    data = phantom.image
    region = np.zeros(data.shape, dtype=bool)
    region[:, data.shape[1] // 2 + 20:, :] = True
    head = head_mask(data, 20.0)
    out, allowed = obscure(data, region, method, np.full(3, 2.0), head=head, seed=5)
    changed = out != data
    assert not changed[~allowed].any()
    assert not allowed[~region].any()
    assert changed[allowed].mean() > 0.9
    again, _ = obscure(data, region, method, np.full(3, 2.0), head=head, seed=5)
    assert np.array_equal(out, again)
