"""The groove mne-sample showed with the MNI templates (issue 15 item 1), on a small slab.

On the 3 mm mne-sample head the registered template's forehead outline
crossed a thin scalp over a brain guard whose front lies in dark bone: where
the outline passed behind the scalp, ``blur`` wrote air over it and the front
render looked through the dark bone at the brain, a 14-19 mm groove in the
depth map. Here: a 3 mm slab (brain, dark bone, 6 mm scalp, air along +y),
the guard ending in the bone, and a template outline tilted across the scalp.
"""

from __future__ import annotations

import numpy as np
import pytest

from isyb.deface.obscure import guard_cover, obscure
from isyb.templates.outline import TemplateOutline
from isyb.viz.seams import front_depth

ZOOMS = np.array([3.0, 3.0, 3.0])
SHAPE = (24, 30, 20)
SCALP = (16, 17)  # y indices of the scalp; bone 12-15, brain below


def _slab() -> tuple[np.ndarray, np.ndarray, np.ndarray, TemplateOutline]:
    y = np.arange(SHAPE[1])[None, :, None]
    data = np.where(y <= 11, 100.0, np.where(y <= 15, 5.0, np.where(y <= 17, 80.0, 0.0)))
    data = np.broadcast_to(data, SHAPE).astype(np.float32).copy()
    guard = np.broadcast_to(y <= 15, SHAPE).copy()
    # template outline: 0.5 on the plane y_mm = 36 + 0.75 x_mm, falling 2.5 % per mm
    x_mm = np.arange(SHAPE[0])[:, None, None] * 3.0
    y_mm = np.arange(SHAPE[1])[None, :, None] * 3.0
    field = np.clip(0.5 - 0.025 * (y_mm - (36.0 + 0.75 * x_mm)), 0.0, 1.0)
    outline = TemplateOutline(np.broadcast_to(field, SHAPE).astype(np.float32).copy(),
                              np.diag([3.0, 3.0, 3.0, 1.0]))
    return data, guard, data > 40.0, outline


def _defaced(guard_given: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data, guard, head, outline = _slab()
    out, allowed = obscure(data, ~guard, "blur", ZOOMS, head=head, outline=outline,
                           voxel_to_template=np.diag([3.0, 3.0, 3.0, 1.0]),
                           face=np.ones(SHAPE, dtype=bool),
                           guard=guard if guard_given else None)
    return data, out, allowed


def test_without_the_cover_the_outline_opens_a_groove_down_to_the_brain() -> None:
    _, out, _ = _defaced(guard_given=False)
    depth, _ = front_depth(out, ZOOMS, threshold=40.0)
    inner = depth[2:-2, 2:-2]
    assert np.nanmin(inner) < 12 * 3.0 + 3.0  # the surface fell to the brain, 12 mm deeper


def test_the_scalp_over_the_guard_stays_and_the_surface_has_no_step() -> None:
    data, out, allowed = _defaced(guard_given=True)
    depth, _ = front_depth(out, ZOOMS, threshold=40.0)
    inner = depth[2:-2, 2:-2]
    assert np.nanmin(inner) >= SCALP[0] * 3.0  # never behind the first scalp voxel
    # no jump between neighbouring columns beyond the outline's own slope (0.75 mm/mm,
    # 2.25 mm per 3 mm column) plus one voxel's quantisation
    assert np.abs(np.diff(inner, axis=0)).max() <= 2.25 + 3.0
    assert np.abs(np.diff(inner, axis=1)).max() <= 1.0
    guard = _slab()[1]
    assert not allowed[guard].any()
    assert np.array_equal(out[guard], data[guard])


def test_guard_cover_keeps_at_least_one_voxel_on_a_coarse_grid() -> None:
    # the Euclidean distance of a 3 mm neighbour reads 3.000000000000011 mm
    _, guard, head, _ = _slab()
    cover = guard_cover(~guard, guard, head, ZOOMS, cover_mm=3.0)
    assert cover[:, SCALP[0]].all() and not cover[:, SCALP[1]].any()
    assert not guard_cover(~guard, guard, np.zeros(SHAPE, dtype=bool), ZOOMS).any()


@pytest.mark.parametrize("zoom", [1.0, 3.0])
def test_guard_cover_is_empty_without_a_guard(zoom: float) -> None:
    region = np.ones((6, 6, 6), dtype=bool)
    assert not guard_cover(region, np.zeros_like(region), region, np.full(3, zoom)).any()


def test_remove_seals_the_cut_on_a_3mm_grid_too() -> None:
    # the same distance reading left the sealing wall empty on 3 mm voxels (mne-sample)
    data, guard, head, _ = _slab()
    out, _ = obscure(data, ~guard, "remove", ZOOMS, head=head | guard)
    assert (out[:, SCALP[0]] > 0).all() and (out[:, SCALP[1]] == 0).all()
