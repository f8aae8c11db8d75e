"""The ray caster skips the air in front of the head without changing a single depth.

The reference marches every ray through every sample from the front of the box in one
``map_coordinates`` call (no chunks, no skipping), with the caster's geometry and its
linear refinement of the crossing; the caster must give the same float32 depths,
misses included.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.viz import render


def _full_march(scene, yaw: float, pitch: float, pixel_mm: float):
    """Every sample of every ray (rays x ys, float32) and the caster's grid (xs, zs, ys)."""
    rotation = render._rotation(yaw, pitch)
    rotated = scene.corners_mm @ rotation.T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    xs = np.arange(hi[0], lo[0] - 1e-6, -pixel_mm)
    zs = np.arange(hi[2], lo[2] - 1e-6, -pixel_mm)
    step = render.RAY_STEP_MM
    ys = np.arange(hi[1] + step, lo[1] - step, -step, dtype=np.float32)
    zz, xx = np.meshgrid(zs, xs, indexing="ij")
    inverse, scale = rotation.T, 1.0 / scene.zooms
    offset = (scene.centre_mm - scene.origin_mm) * scale
    base = ((xx.ravel()[:, None] * inverse[:, 0] + zz.ravel()[:, None] * inverse[:, 2]) * scale
            + offset).astype(np.float32)
    along = (inverse[:, 1] * scale).astype(np.float32)
    coords = base[:, None, :] + ys[None, :, None] * along
    values = ndimage.map_coordinates(scene.volume, coords.reshape(-1, 3).T, order=1,
                                     mode="constant", cval=0.0, prefilter=False,
                                     output=np.float32).reshape(base.shape[0], ys.size)
    return values, rotation, xs, zs, ys


def _reference_depth(scene, yaw: float, pitch: float, pixel_mm: float) -> np.ndarray:
    values, _, xs, zs, ys = _full_march(scene, yaw, pitch, pixel_mm)
    threshold = np.float32(scene.threshold)
    above = values > threshold
    depth = np.full(values.shape[0], np.nan, dtype=np.float32)
    for ray in np.flatnonzero(above.any(axis=1)):
        k = int(above[ray].argmax())
        v1, v0 = values[ray, k], (values[ray, k - 1] if k else np.float32(0.0))
        frac = np.clip((v1 - threshold) / np.maximum(v1 - v0, 1e-12), 0.0, 1.0)
        depth[ray] = ys[k] + frac * render.RAY_STEP_MM
    return depth.reshape(zs.size, xs.size)


def _blobs(seed: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Smoothed noise with a few bright lumps: concave, holed surfaces, some at the edge."""
    rng = np.random.default_rng(seed)
    data = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    for _ in range(4):
        centre = rng.uniform(0, shape)
        grid = np.indices(shape).reshape(3, -1).T
        data += 0.5 * np.exp(-((grid - centre) ** 2).sum(1) / 60.0).reshape(shape)
    return (100.0 * np.clip(data, 0, None)).astype(np.float32)


@pytest.mark.parametrize(("seed", "zooms"), [(0, (1.0, 1.0, 1.0)), (1, (1.5, 2.0, 3.0)),
                                             (2, (0.9, 0.9, 1.2))])
def test_skipping_gives_the_depths_of_a_full_march(seed: int, zooms) -> None:
    data = _blobs(seed, (34, 40, 30))
    scene = render._scene(data, zooms, float(np.percentile(data, 70)))
    assert scene.boundary_mm.shape[0] > 0
    for yaw, pitch, pixel_mm in ((0.0, 0.0, 1.0), (15.0, -10.0, 0.7), (-40.0, 25.0, 1.3),
                                 (90.0, 0.0, 1.0), (180.0, 5.0, 2.0)):
        expected = _reference_depth(scene, yaw, pitch, pixel_mm)
        depth = render._cast(scene, yaw, pitch, pixel_mm)
        assert np.isfinite(expected).any() and np.isnan(expected).any()
        assert np.array_equal(depth, expected, equal_nan=True), (yaw, pitch, pixel_mm)


@pytest.mark.parametrize(("seed", "zooms"), [(0, (1.0, 1.0, 1.0)), (1, (1.5, 2.0, 3.0)),
                                             (2, (0.9, 0.9, 1.2)), (3, (1.0, 1.0, 1.0))])
def test_every_sample_above_the_threshold_lies_in_the_span(seed: int, zooms) -> None:
    """``_sample_span``'s first and last index hold every sample above the threshold, on
    every ray: the caster may start a ray at ``first - 1`` and drop it after ``last``."""
    data = _blobs(seed, (34, 40, 30))
    scene = render._scene(data, zooms, float(np.percentile(data, 70)))
    for yaw, pitch, pixel_mm in ((0.0, 0.0, 1.0), (15.0, -10.0, 0.7), (-40.0, 25.0, 1.3),
                                 (90.0, 0.0, 1.0), (180.0, 5.0, 2.0), (33.0, 61.0, 0.5)):
        values, rotation, xs, zs, ys = _full_march(scene, yaw, pitch, pixel_mm)
        first, last = render._sample_span(scene, rotation, xs, zs, ys, pixel_mm)
        above = values > np.float32(scene.threshold)
        rays = above.any(axis=1)
        assert rays.any() and (~rays).any()
        index = np.arange(ys.size)
        lowest = np.where(above, index, ys.size).min(axis=1)
        highest = np.where(above, index, -1).max(axis=1)
        assert np.all(first[rays] <= lowest[rays]), (yaw, pitch, pixel_mm)
        assert np.all(last[rays] >= highest[rays]), (yaw, pitch, pixel_mm)
        assert np.all(first[first >= ys.size] == ys.size)


@pytest.mark.parametrize(("reach", "pixel_mm"), [(3**0.5, 1.0), (float(np.linalg.norm(
    (1.5, 2.0, 3.0))), 0.7), (1.2, 1.3), (3**0.5, 2.0), (3**0.5, 0.5)])
def test_the_footprint_holds_every_pixel_within_reach(reach: float, pixel_mm: float) -> None:
    """A point's pixels within ``reach`` (mm) all lie in ``_footprint`` around its nearest
    pixel, and the footprint holds nothing that no point can reach."""
    footprint = render._footprint(reach, pixel_mm)
    half = footprint.shape[0] // 2
    rng = np.random.default_rng(0)
    points = rng.uniform(-0.5, 0.5, size=(200_000, 2))  # pixel units, about pixel (0, 0)
    points[:1000] = rng.choice([-0.5, 0.5], size=(1000, 2))  # the worst corners
    reached = np.zeros_like(footprint)
    for i in range(-half - 2, half + 3):
        for j in range(-half - 2, half + 3):
            near = np.hypot(points[:, 0] - i, points[:, 1] - j) * pixel_mm <= reach
            if near.any():
                assert abs(i) <= half and abs(j) <= half and footprint[i + half, j + half]
                reached[i + half, j + half] = True
    assert np.array_equal(reached, footprint)
