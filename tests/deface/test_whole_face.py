"""The whole face (issue 20 item 2, issue 15 items 2-3): past the template's field of view,
down over the lips and chin, ``--keep-chin``, and a plain surface after ``remove``."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.engine import DefaceOptions, align, deface_volume
from isyb.deface.obscure import sealing_layer
from isyb.head.morphology import skin_surface
from isyb.io import volume_from_image
from isyb.synthetic.phantom import Label, make_phantom, to_nifti
from isyb.templates.face import FaceRule, face_region
from isyb.templates.outline import EXTEND_MM, TAPER, extend_down, template_outline
from isyb.viz.seams import front_depth

RULE = FaceRule(face_normal=(0.0, 1.0, 0.0), face_offset=10.0, back_y=-100.0, chin_z=-40.0,
                ear_inner_x=(-50.0, 50.0), ear_y=(-20.0, 20.0), ear_z=(-20.0, 25.0))


def test_keep_chin_stops_the_region_at_the_mouth_plane() -> None:
    shape = (4, 40, 120)
    to_template = np.eye(4)
    to_template[:3, 3] = [0.0, 0.0, -80.0]  # voxel k sits at z = k - 80 mm
    whole = face_region(RULE, shape, to_template)
    kept = face_region(RULE, shape, to_template, keep_chin=True)
    z = np.arange(shape[2]) - 80.0
    # ear box height 45 mm -> brain length 100 mm, front half's lowest point -5 mm
    assert RULE.mouth_z == pytest.approx(-5.0 - 12.0)
    assert whole[:, 20:, :].any(axis=(0, 1)).tolist() == (z > RULE.chin_z).tolist()
    assert kept[:, 20:, :].any(axis=(0, 1)).tolist() == (z > RULE.mouth_z).tolist()


def test_outline_goes_on_below_the_field_of_view_with_a_receding_front() -> None:
    edge = np.zeros((10, 30), dtype=bool)
    edge[2:8, 5:25] = True
    slices = extend_down(edge, 6, 2.0)
    fronts = [np.nonzero(slices[:, :, k].any(axis=0))[0].max() for k in range(6)]
    assert fronts == [12, 14, 16, 18, 20, 22]  # 2 voxels back per slice, lowest first
    assert all(np.nonzero(slices[:, :, k].any(axis=0))[0].min() == 5 for k in range(6))
    # a template cut at the mouth: its outline is defined EXTEND_MM below the cut
    grid = np.indices((40, 50, 30))
    head = ((grid[0] - 20) ** 2 + (grid[1] - 25) ** 2 <= 15**2)  # a cylinder cut at z = 0
    outline = template_outline(head, np.diag([2.0, 2.0, 2.0, 1.0]), 8.0)
    lowest = (outline.affine @ [0, 0, 0, 1])[2]
    assert lowest <= -EXTEND_MM + 2.0
    column = outline.field[outline.field.shape[0] // 2] > 0.5  # (y, z) at the centre x
    k_cut = round((0.0 - lowest) / 2.0)
    front = [np.nonzero(column[:, k])[0].max() for k in (k_cut, k_cut - 10)]
    assert front[0] - front[1] == pytest.approx(10 * TAPER, abs=2)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(voxel_size=1.5, seed=3)


@pytest.fixture(scope="module")
def case(phantom, default_template):
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    return volume, align(volume, default_template, brain=phantom.brain_mask)


def test_the_whole_face_is_obscured_by_default_and_the_chin_kept_on_request(
        phantom, case, default_template) -> None:
    volume, alignment = case
    labels = phantom.labels
    whole = deface_volume(volume, default_template, DefaceOptions(), alignment=alignment)
    kept = deface_volume(volume, default_template, DefaceOptions(keep_chin=True),
                         alignment=alignment)
    lower = whole.reference == 3
    assert (whole.data != volume.data)[lower].mean() >= 0.9
    assert (kept.data != volume.data)[lower].mean() < 0.5
    assert (whole.data != volume.data)[labels == Label.LIPS].mean() > 0.95
    assert not (whole.allowed & phantom.brain_mask).any()
    assert kept.region.sum() < whole.region.sum()


def test_remove_leaves_a_plain_surface(case, default_template) -> None:
    """Every frontal ray that crosses the removed region stops at its wall or at the original
    skin (within a voxel: the renderer smooths), not at the cavities and the brain guard's
    outline behind the cut."""
    volume, alignment = case
    result = deface_volume(volume, default_template, DefaceOptions(method="remove"),
                           alignment=alignment)
    seal = sealing_layer(result.region, result.head, volume.zooms)
    assert seal.any() and not (seal & ~result.region).any()
    _, index = front_depth(result.data, volume.zooms)
    i, k = np.nonzero(index >= 0)
    behind = np.flip(np.logical_or.accumulate(np.flip(result.region, 1), axis=1), 1)
    j = index[i, k]
    crossed = behind[i, np.minimum(j + 1, volume.shape[1] - 1), k] & (j + 1 < volume.shape[1])
    assert crossed.sum() > 1000
    plain = ndimage.binary_dilation(seal | skin_surface(result.head))
    assert plain[i, j, k][crossed].all()
    assert seal[i, j, k][crossed].mean() > 0.5
