"""Unit tests of the obscuring methods and their helpers, on synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.obscure import (
    BLEND_MM,
    blended_envelope,
    obscure,
    outline_fraction,
    outline_weight,
    tissue_blur,
)
from isyb.head.morphology import downsample, head_mask, signed_distance, smooth_envelope, upsample
from isyb.synthetic.phantom import Label, make_phantom
from isyb.templates.outline import SIDE_MM, template_outline


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


def _ball_head(bumps: list[tuple[tuple[int, int, int], int]]) -> np.ndarray:
    """A 2 mm grid (60³) holding a ball of radius 40 mm plus cubic bumps (centre, half-size)."""
    grid = np.indices((60, 60, 60))
    head = ((grid - 30) ** 2).sum(axis=0) <= 20**2
    for centre, half in bumps:
        head |= np.all([np.abs(grid[a] - centre[a]) <= half for a in range(3)], axis=0)
    return head


def test_template_outline_gives_different_faces_the_same_surface() -> None:
    zooms = np.full(3, 2.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    template = template_outline(_ball_head([((30, 50, 30), 5)]), affine, 8.0)
    region = np.zeros((60, 60, 60), dtype=bool)
    region[:, 38:, :] = True  # the front: y > 76 mm
    deep = np.zeros_like(region)
    deep[:, 38 + 10:, :] = True  # more than the 10 mm blend (plus a voxel) inside
    faces = [_ball_head([((30, 52, 30), 2)]),  # a thin nose
             _ball_head([((30, 50, 22), 6), ((22, 48, 36), 4)])]  # a chin and a cheek
    surfaces, own_surfaces = [], []
    for head in faces:
        data = np.where(head, 100.0, 0.0).astype(np.float32)
        out, _ = obscure(data, region, "blur", zooms, head=head, smooth_mm=8.0,
                         outline=template, voxel_to_template=affine)
        surfaces.append(out[deep] > 50.0)
        own, _ = obscure(data, region, "blur", zooms, head=head, smooth_mm=8.0)
        own_surfaces.append(own[deep] > 50.0)
    # the template's field is padded beyond its field of view: sample it at the data's voxels
    mapping = np.linalg.inv(template.affine) @ affine
    carried = ndimage.affine_transform(template.field, mapping[:3, :3], offset=mapping[:3, 3],
                                       output_shape=(60, 60, 60), order=1)
    expected = carried[deep] > 0.5
    assert np.array_equal(surfaces[0], expected) and np.array_equal(surfaces[1], expected)
    # the subject's own smoothed outline still differs between the two faces
    assert (own_surfaces[0] != own_surfaces[1]).sum() > 50


def test_outline_weight_rises_from_the_region_border() -> None:
    face = np.zeros((4, 40, 4), dtype=bool)
    face[:, 20:, :] = True
    weight = outline_weight(face, np.full(3, 1.0), 10.0)
    profile = weight[2, :, 2]
    assert np.all(profile[:20] == 0.0)
    assert np.all(np.diff(profile[20:]) >= 0.0)
    assert 0.0 < profile[20] < 0.05 and np.all(profile[30:] == 1.0)
    # the array border is not the region's border
    assert np.all(outline_weight(np.ones((5, 5, 5), dtype=bool), np.ones(3), 10.0) == 1.0)


def test_blended_envelope_continues_past_the_template_fov_then_gives_way_smoothly() -> None:
    """Issue 20: the template's outline goes on past its field of view (air above it, here),
    and where even that ends the subject's outline takes over without a step."""
    head = _ball_head([((30, 52, 30), 2)])
    zooms = np.full(3, 2.0)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    small = template_outline(_ball_head([])[:, :, :30], affine, 8.0)
    face = np.ones(head.shape, dtype=bool)
    mixed = blended_envelope(head, zooms, 8.0, face, small, affine)
    own = smooth_envelope(head, zooms, 8.0)
    reach = 30 + int(SIDE_MM / 2.0)  # the padded field's last slice
    assert np.array_equal(mixed[:, :, reach:], own[:, :, reach:])
    mapping = np.linalg.inv(small.affine) @ affine
    carried = ndimage.affine_transform(small.field, mapping[:3, :3], offset=mapping[:3, 3],
                                       output_shape=head.shape, order=1)
    deep = reach - int(BLEND_MM / 2.0) - 1
    assert np.allclose(mixed[:, :, :deep], carried[:, :, :deep], atol=1e-5)
    # the template's own FOV edge (z index 30) and the hand-over leave no step: the field
    # changes per 2 mm voxel at most as much as the outlines do plus a smoothstep's steepest
    # slope (1.5 / BLEND_MM per mm) over their full difference (at most 1)
    steepest = max(np.abs(np.diff(field, axis=2)).max() for field in (own, carried))
    assert np.abs(np.diff(mixed, axis=2)).max() <= steepest + 1.5 * 2.0 / BLEND_MM


def test_tissue_blur_is_not_darkened_far_from_tissue() -> None:
    data = np.full((40, 4, 4), 100.0, dtype=np.float32)
    tissue = np.zeros(data.shape, dtype=bool)
    tissue[:5] = True
    blurred = tissue_blur(data, tissue, np.ones(3), 2.0)
    assert np.allclose(blurred, 100.0, rtol=1e-4)


def test_outline_fraction_is_the_share_of_each_voxel_inside_the_outline() -> None:
    """Issue 15: the new surface is written as partial volume, not whole-voxel terraces."""
    # an outline falling by 0.05 per mm along y on a 2 mm coarse grid, 1 mm voxels
    coarse_zooms = np.full(3, 2.0)
    y = np.arange(20) * 2.0 + 1.0  # coarse voxel c sits at fine index (mm) 2c + 1
    field = np.broadcast_to((1.0 - 0.05 * (y - 9.5))[None, :, None], (6, 20, 6))
    field = field.astype(np.float32)
    shape = (12, 40, 12)
    fine = upsample(field, np.array([2, 2, 2]), shape)
    treat = np.ones(shape, dtype=bool)
    envelope = fine > 0.5
    share = outline_fraction(field, fine, envelope, treat, np.array([2, 2, 2]), coarse_zooms,
                             np.ones(3)).reshape(shape)
    profile = share[6, :, 6]
    # the 0.5 level lies at fine index 19.5, between voxels 19 and 20
    assert fine[6, 19, 6] == pytest.approx(0.525) and fine[6, 20, 6] == pytest.approx(0.475)
    assert profile[19] == pytest.approx(1.0) and profile[20] == pytest.approx(0.0)
    assert profile[:19].min() == 1.0 and profile[21:].max() == 0.0
    # a voxel the surface crosses: the share along the normal that lies inside
    moved = fine + np.float32(0.0125)  # the surface 0.25 mm further out
    share = outline_fraction(field + np.float32(0.0125), moved, moved > 0.5, treat,
                             np.array([2, 2, 2]), coarse_zooms, np.ones(3)).reshape(shape)
    assert share[6, 20, 6] == pytest.approx(0.25, abs=1e-4)
    # voxels the guard's cover keeps count as wholly inside, whatever the outline says
    covered = envelope.copy()
    covered[:, 30, :] = True
    share = outline_fraction(field, fine, covered, treat, np.array([2, 2, 2]), coarse_zooms,
                             np.ones(3)).reshape(shape)
    assert share[6, 30, 6] == 1.0
