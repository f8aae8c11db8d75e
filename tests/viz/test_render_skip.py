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


def _reference_depth(scene, yaw: float, pitch: float, pixel_mm: float) -> np.ndarray:
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
    threshold = np.float32(scene.threshold)
    above = values > threshold
    depth = np.full(base.shape[0], np.nan, dtype=np.float32)
    for ray in np.flatnonzero(above.any(axis=1)):
        k = int(above[ray].argmax())
        v1, v0 = values[ray, k], (values[ray, k - 1] if k else np.float32(0.0))
        frac = np.clip((v1 - threshold) / np.maximum(v1 - v0, 1e-12), 0.0, 1.0)
        depth[ray] = ys[k] + frac * step
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
