"""maskface's faster steps (issue 13, scale) give the voxels and floats of the plain ones.

:func:`isyb.deface.maskface.normfilter` spent about half of its time in three places:
the in-plane morphology of the head mask (SciPy's binary erosion and dilation with a
disk), numpy's reductions over a length-3 axis in ``_barycentric_map``, and testing
every upper triangle in every round of ``_inflate``. Each shortcut is compared here
with the plain formulation it replaced (written out in this file), bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface import maskface
from isyb.synthetic.phantom import Label, make_phantom

VOXEL_MM = 2.0
FACE_BOX = (slice(16, 84), slice(60, 116), slice(14, 84))


@pytest.fixture(scope="module")
def box():
    phantom = make_phantom(voxel_size=VOXEL_MM, seed=3)
    return (phantom.image[FACE_BOX].astype(np.float32),
            phantom.labels[FACE_BOX] != Label.BACKGROUND)


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_plane_morphology_is_scipys(radius: int) -> None:
    """Erosion and dilation by the in-plane disk, borders included (outside = background)."""
    rng = np.random.default_rng(radius)
    mask = ndimage.binary_opening(rng.random((23, 19, 7)) > 0.35)
    mask[0, :, 2] = mask[:, -1, 3] = True  # foreground on the array's edges
    disk = maskface._disk(radius)
    offsets = np.argwhere(disk[:, :, 0]) - radius
    np.testing.assert_array_equal(maskface._plane_morphology(mask, offsets, erode=True),
                                  ndimage.binary_erosion(mask, disk))
    np.testing.assert_array_equal(maskface._plane_morphology(mask, offsets, erode=False),
                                  ndimage.binary_dilation(mask, disk))


@pytest.mark.parametrize("zooms", [(2.0, 2.0, 2.0), (1.0, 1.0, 1.0), (0.5, 0.5, 0.6)])
def test_clean_mask_is_mask_surfs_opening_and_closing(box, zooms) -> None:
    _, head = box
    cleaned, dilated, radius = maskface.clean_mask(head, np.asarray(zooms))
    disk = maskface._disk(radius)
    expected = ndimage.binary_closing(ndimage.binary_opening(head, disk), disk)
    np.testing.assert_array_equal(cleaned, expected)
    np.testing.assert_array_equal(dilated, ndimage.binary_dilation(expected, disk))


def _barycentric_plain(source: np.ndarray, target: np.ndarray, bounds: np.ndarray):
    """``_barycentric_map`` before the shortcuts (a stacked meshgrid; numpy reductions over
    axis 1)."""
    edges = (source[1:] - source[0]).T
    lo = np.maximum(np.floor(source.min(axis=0)).astype(int), 0)
    hi = np.minimum(np.ceil(source.max(axis=0)).astype(int), np.asarray(bounds) - 1)
    grid = np.stack(np.meshgrid(*(np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)),
                                indexing="ij"), axis=-1).reshape(-1, 3)
    lam = (grid - source[0]) @ np.linalg.inv(edges).T
    inside = (lam >= -1e-9).all(axis=1) & (lam.sum(axis=1) <= 1 + 1e-9)
    lam = lam[inside]
    weights = np.concatenate([1.0 - lam.sum(axis=1, keepdims=True), lam], axis=1)
    return grid[inside], weights @ target


def test_barycentric_map_is_the_plain_one() -> None:
    rng = np.random.default_rng(0)
    bounds = np.array([40, 40, 30])
    for _ in range(200):
        source = rng.uniform(0, 30, size=(4, 3))
        source[1:] = source[0] + rng.normal(scale=6.0, size=(3, 3))
        target = rng.uniform(0, 30, size=(4, 3))
        points, image = maskface._barycentric_map(source, target, bounds)
        plain_points, plain_image = _barycentric_plain(source, target, bounds)
        np.testing.assert_array_equal(points, plain_points)
        assert image.tobytes() == plain_image.tobytes()
    # integer vertices put grid points exactly on faces, where the tolerances decide
    source = np.array([[0.0, 0, 0], [8, 0, 0], [0, 8, 0], [0, 0, 8]])
    points, image = maskface._barycentric_map(source, source * 2, bounds)
    plain_points, plain_image = _barycentric_plain(source, source * 2, bounds)
    np.testing.assert_array_equal(points, plain_points)
    assert image.tobytes() == plain_image.tobytes()


def _inflate_plain(lower, upper, centre, normals, cells, n1, dilated):
    """``_inflate`` before the shortcut: every triangle sampled in every round."""
    upper = upper.copy()
    moves = np.zeros(len(upper), dtype=int)
    i, j = cells[:, 0], cells[:, 1]
    v1, v2, v3, v4 = i * n1 + j, (i + 1) * n1 + j, (i + 1) * n1 + j + 1, i * n1 + j + 1
    triangles = np.concatenate([np.stack([v1, v2, v3], 1), np.stack([v1, v4, v3], 1)])
    shape = np.asarray(dilated.shape)
    step = np.linalg.norm(centre - lower, axis=1) * 0.1
    for _ in range(maskface.INFLATE_STEPS):
        corners = upper[triangles]
        span = int(np.ceil(np.abs(corners - corners[:, :1]).max())) + 1 if len(corners) else 1
        a, b = np.meshgrid(np.linspace(0, 1, span + 1), np.linspace(0, 1, span + 1), indexing="ij")
        keep = a + b <= 1
        w = np.stack([1 - a[keep] - b[keep], a[keep], b[keep]], axis=1)
        samples = np.rint(np.einsum("sk,tkd->tsd", w, corners)).astype(int)
        valid = ((samples >= 0) & (samples < shape)).all(axis=2)
        clipped = np.clip(samples, 0, shape - 1)
        cuts = (dilated[clipped[..., 0], clipped[..., 1], clipped[..., 2]] & valid).any(axis=1)
        movers = np.unique(triangles[cuts])
        movers = movers[moves[movers] < maskface.INFLATE_STEPS]
        if not movers.size:
            break
        upper[movers] += normals[movers] * step[movers, None]
        moves[movers] += 1
    return upper


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_inflate_is_the_plain_one(box, monkeypatch, seed) -> None:
    """On the phantom's face box (at its own and at a thicker mask, so that vertices move
    for several rounds): the same upper surface as testing every triangle each round."""
    data, head = box
    calls = []
    fast = maskface._inflate

    def spy(*args):
        out = fast(*args)
        calls.append((args, out))
        return out

    monkeypatch.setattr(maskface, "_inflate", spy)
    maskface.normfilter(data, head, np.full(3, VOXEL_MM), 1, 1, seed=seed)
    thick = ndimage.binary_dilation(head, iterations=3)
    maskface.normfilter(data, thick, np.full(3, VOXEL_MM), 1, 1, seed=seed)
    moved = 0
    for args, out in calls:
        plain = _inflate_plain(*args)
        assert out.tobytes() == plain.tobytes()
        moved += int(np.any(out != args[1], axis=1).sum())
    assert moved > 0  # the test saw vertices move
