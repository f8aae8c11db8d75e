"""The crease at the brain guard's edge (issue 15 item 1), on small slabs.

On pycortex-S1 with the default template the rebuilt face stood 2.9 mm in
front of the skin where the guard's edge crosses the forehead: the guard keeps
the subject's skin, the region next to it had the template's outline, and the
depth map stepped by 2.4 mm there (a Haar face box sat on it). ``blur`` and
``noise`` now pass from the kept skin to the new outline over
:data:`isyb.deface.obscure.JOIN_MM` outside the guard (:func:`join_skin`).
Here: a 1 mm slab (tissue up to y = 30 mm, air in front along +y), a guard
reaching the skin over part of it, and a template outline 3 mm in front of the
skin. The crease shows where the guard's edge runs just under the skin and
crosses it in patches, as a dilated brain does under a forehead.
"""

from __future__ import annotations

import numpy as np
import pytest

from isyb.deface import obscure as obscure_module
from isyb.deface.obscure import JOIN_MM, join_skin, obscure, seen_skin
from isyb.templates.outline import TemplateOutline
from isyb.viz.seams import border_step_mm, border_steps, front_depth

ZOOMS = np.ones(3)
SHAPE = (40, 50, 30)
SKIN_Y = 30


def _outline(front_mm: float) -> TemplateOutline:
    """A template outline on the plane y = ``front_mm``, falling 2.5 % per mm as the real ones."""
    y = np.arange(SHAPE[1], dtype=float)[None, :, None]
    field = np.clip(0.5 - 0.025 * (y - front_mm), 0.0, 1.0)
    return TemplateOutline(np.broadcast_to(field, SHAPE).astype(np.float32).copy(), np.eye(4))


def _slab(guard_x: int = 20) -> tuple[np.ndarray, np.ndarray]:
    y = np.arange(SHAPE[1])[None, :, None]
    data = np.broadcast_to(np.where(y <= SKIN_Y, 100.0, 0.0), SHAPE).astype(np.float32).copy()
    guard = np.zeros(SHAPE, dtype=bool)
    guard[:guard_x, :SKIN_Y + 1] = True
    return data, guard


def _patchy_guard() -> np.ndarray:
    """A guard whose edge runs under the skin at a shallow angle, wavy along z."""
    x = np.arange(SHAPE[0])[:, None, None]
    y = np.arange(SHAPE[1])[None, :, None]
    z = np.arange(SHAPE[2])[None, None, :]
    return np.broadcast_to(y <= SKIN_Y + 1 + 0.1 * (15 - x) + 1.5 * np.sin(z / 2.0),
                           SHAPE).copy()


def _deface(data: np.ndarray, guard: np.ndarray, method: str, front_mm: float,
            head: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    return obscure(data, ~guard, method, ZOOMS, head=data > 50 if head is None else head,
                   outline=_outline(front_mm), voxel_to_template=np.eye(4),
                   face=np.ones(SHAPE, dtype=bool), guard=guard)


@pytest.mark.parametrize("method", ["blur", "noise"])
def test_the_new_outline_joins_the_skin_the_guard_keeps(method: str) -> None:
    data, guard = _slab()
    out, allowed = _deface(data, guard, method, SKIN_Y + 3.5)
    assert not allowed[guard].any()
    assert np.array_equal(out[guard], data[guard])
    depth, _ = front_depth(out, ZOOMS, threshold=50.0)
    profile = np.nanmedian(depth[:, 5:-5], axis=1)
    # the skin the guard keeps, then the template's outline (3 mm in front) from JOIN_MM on
    assert np.allclose(profile[:20], SKIN_Y + 0.5, atol=0.1)
    assert np.allclose(profile[20 + int(JOIN_MM):], SKIN_Y + 3.5, atol=0.1)
    # in between the surface rises steadily, with no step
    assert np.all(np.diff(profile) >= -0.05)
    assert np.abs(np.diff(profile)).max() <= 0.8
    steps = border_steps(out, ZOOMS, ~guard, original=data, threshold=50.0)
    assert steps.size >= 20
    assert steps.max() <= 0.5


@pytest.mark.parametrize("method", ["blur", "noise"])
def test_no_crease_where_the_guard_edge_crosses_the_skin_in_patches(method: str,
                                                                   monkeypatch) -> None:
    data = _slab()[0]
    guard = _patchy_guard()
    out, _ = _deface(data, guard, method, SKIN_Y + 3.5)
    assert np.array_equal(out[guard], data[guard])
    steps = border_steps(out, ZOOMS, ~guard, original=data, threshold=50.0)
    assert steps.size >= 40
    assert steps.max() <= 0.5
    # the intensity blend alone (the new outline up to the guard) left a crease
    monkeypatch.setattr(obscure_module, "join_skin",
                        lambda field, *args, **kwargs: field > 0.5)
    out, _ = _deface(data, guard, method, SKIN_Y + 3.5)
    assert border_step_mm(out, ZOOMS, ~guard, original=data, threshold=50.0) > 1.0


def test_a_sinus_under_a_thin_scalp_is_not_opened_next_to_the_guard() -> None:
    # mne-sample (MNI templates): air under a 2-voxel scalp, which the solid head leaves
    # out (it opens to the airway); the template's outline passes behind the scalp. Joined
    # towards a skin that counted the sinus as outside, the scalp became air and the
    # render saw the guard's tissue 20 mm deeper.
    data, guard = _slab()
    sinus = np.zeros(SHAPE, dtype=bool)
    sinus[10:30, SKIN_Y - 6:SKIN_Y - 1, 5:-5] = True
    data[sinus] = 0.0
    guard[:20, SKIN_Y - 6:] = False  # the guard stops under the sinus, as there
    guard[:20, :SKIN_Y - 6] = True
    head = data > 50
    head[~guard & ~sinus & (np.arange(SHAPE[1])[None, :, None] > SKIN_Y)] = False
    out, _ = _deface(data, guard, "blur", SKIN_Y - 2.0, head=head)
    depth, _ = front_depth(out, ZOOMS, threshold=50.0)
    inner = depth[2:-2, 6:-6]
    assert np.nanmin(inner) >= SKIN_Y - 4.0  # never down into the sinus or the guard behind


def test_seen_skin_fills_air_under_the_skin_only() -> None:
    head = np.zeros((5, 20, 5), dtype=bool)
    head[:, :6] = True
    head[:, 10:12] = True  # a scalp over air (6..9), air in front (12..)
    inside = np.zeros_like(head)
    inside[:, :16] = True
    outward = [np.zeros(head.shape), np.ones(head.shape), np.zeros(head.shape)]
    seen = seen_skin(head, inside, outward, np.ones(3), 8.0)
    assert seen[:, :12].all()  # the pocket under the scalp counts as head
    assert not seen[:, 12:].any()  # the air in front does not


def test_join_skin_reaches_only_around_the_skin_the_guard_keeps() -> None:
    data, guard = _slab()
    head = data > 50
    y = np.arange(SHAPE[1], dtype=np.float32)[None, :, None]
    field = np.broadcast_to(np.clip(0.5 - 0.025 * (y - 33.0), 0, 1), SHAPE).astype(np.float32)
    far = np.zeros_like(guard)
    far[:2, :5] = True  # 25 mm from the skin
    assert np.array_equal(join_skin(field, head, ~far, far, ZOOMS), field > 0.5)
    assert np.array_equal(join_skin(field, head, np.ones_like(guard), np.zeros_like(guard),
                                    ZOOMS), field > 0.5)
    # a guard under the skin that keeps none of it: the outline is the template's, not the
    # subject's forehead (joining wherever the guard was near re-identified 5 of 12 faces)
    # (head voxels on the array's border count as surface, as in skin_surface: a head cut by
    # the field of view; so the guard stays inside the head's other faces)
    under = np.zeros_like(guard)
    under[3:-3, 1:SKIN_Y - 1, 3:-3] = True
    assert np.array_equal(join_skin(field, head, ~under, under, ZOOMS), field > 0.5)
    # one kept patch: the join reaches JOIN_MM around it, no farther
    patch = under.copy()
    patch[18:22, :SKIN_Y + 1, 13:17] = True
    joined = join_skin(field, head, ~patch, patch, ZOOMS)
    changed = np.argwhere(joined != (field > 0.5))
    assert changed.size
    assert np.abs(changed[:, 0] - 19.5).max() <= JOIN_MM + 2
    assert np.abs(changed[:, 2] - 14.5).max() <= JOIN_MM + 2
