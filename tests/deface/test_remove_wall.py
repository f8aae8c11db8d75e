"""``remove``'s wall spans the cavities its cut opens (issue 15 item 3).

On mne-sample (3 mm) the wall along the region's back surface lined the
nasal cavity and the sinuses behind the cut instead of closing them: they
open to the outside air through the nostrils and the airway, so the solid
head does not hold them, and the front render showed dark pits where the
face's openings had been, in which MTCNN found a face (p 0.89). Here: a 2 mm
slab, air along +y, cut by a region in front of a plane, with an air tunnel
(a nasal cavity and airway) from the front surface back past the cut plane and
down to the bottom of the field of view.
"""

from __future__ import annotations

import numpy as np

from isyb.deface.obscure import obscure, sealing_layer
from isyb.head.morphology import head_mask
from isyb.viz.seams import front_depth

ZOOMS = np.array([2.0, 2.0, 2.0])
SHAPE = (30, 40, 30)
SKIN_Y = 30   # tissue at y <= 30, air in front
CUT_Y = 20    # the region: y >= 20, outside the guard
GUARD_Y = 12  # the brain guard: y <= 12
TUNNEL = (slice(12, 18), slice(14, 33), slice(0, 21))  # 12 mm wide, 10 mm behind the cut


def _slab() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.arange(SHAPE[1])[None, :, None]
    data = np.broadcast_to(np.where(y <= SKIN_Y, 80.0, 0.0), SHAPE).astype(np.float32).copy()
    data[TUNNEL] = 0.0
    guard = np.broadcast_to(y <= GUARD_Y, SHAPE).copy()
    region = np.broadcast_to(y >= CUT_Y, SHAPE) & ~guard
    return data, region, guard


def _cut_depth(out: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Front depth (mm) of the columns that cross the region, away from the array's edges."""
    depth, _ = front_depth(out, ZOOMS, threshold=40.0)
    return depth[2:-2, 2:-2][region.any(axis=1)[2:-2, 2:-2]]


def test_the_tunnel_is_outside_the_solid_head() -> None:
    data, _, _ = _slab()
    head = head_mask(data, 40.0)
    assert not head[TUNNEL].any()


def test_a_wall_along_the_head_alone_leaves_the_tunnel_open() -> None:
    data, region, _ = _slab()
    head = head_mask(data, 40.0)
    out = data.copy()
    out[region] = 0.0
    out[sealing_layer(region, head, ZOOMS, span_mm=0.0)] = 80.0
    depth = _cut_depth(out, region)
    assert depth.max() - depth.min() >= 10.0  # the pit goes down to the tunnel's end


def test_remove_closes_the_tunnel_with_a_plain_wall() -> None:
    data, region, guard = _slab()
    head = head_mask(data, 40.0)
    out, allowed = obscure(data, region, "remove", ZOOMS, head=head)
    depth = _cut_depth(out, region)
    assert depth.max() - depth.min() <= ZOOMS[1]  # one voxel of rendering quantisation
    assert np.array_equal(allowed, region)
    assert np.array_equal(out[~region], data[~region])
    assert np.array_equal(out[guard], data[guard])
    # the tunnel beyond the region keeps its air; only the region is written
    assert (out[TUNNEL][~region[TUNNEL]] == 0).all()
