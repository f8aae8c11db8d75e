"""The smoothed head outline of a prepared template, cached next to its files.

``blur`` and ``noise`` give every defaced face the registered template's
smoothed outline (:class:`isyb.templates.outline.TemplateOutline`). Building it
reads the 1 mm template and finds its head (about 2.5 s on one core), so the
result (a float32 field on a ~2 mm grid, about 6 MB) is kept as
``tpl-<name>_desc-outline_smooth-<mm>mm.npz`` beside the prepared template,
keyed by the head's SHA-256 and :data:`OUTLINE_VERSION`, and in memory per
process. A stale or unreadable file, or one without the SHA-256 recorded in its
``.sha256`` sidecar, is rebuilt; a cache folder that cannot be written only
costs the rebuild in every process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isyb.head.morphology import (
    coarse_factors,
    downsample,
    head_mask,
    skin_threshold,
    smooth_envelope,
)
from isyb.io import load_volume
from isyb.templates.face import FaceRule, face_region
from isyb.templates.verify import verified_arrays

if TYPE_CHECKING:
    from isyb.templates.registry import Template

#: Bump when the way the outline is built changes, so cached files are rebuilt.
#: 2: the outline continues beyond the template's field of view (:data:`EXTEND_MM`).
#: 3: its level is set so that it lies on the template's face skin (:func:`skin_level`).
OUTLINE_VERSION = 3
#: How far (mm) the outline continues beyond each face of the template's field
#: of view: past the face rule's chin plane below the MNI boxes (about 80 mm
#: under their lower edge, where the chin of a subject registered to them lies).
EXTEND_MM = 96.0
#: Below the template's field of view, the front of the head recedes this many
#: mm per mm of descent (a chin and throat at about 27 degrees from vertical).
TAPER = 0.5
#: Air (mm) added on the other five sides, so the outline is defined a little
#: beyond the template's field of view there too.
SIDE_MM = 24.0


def extend_down(edge: np.ndarray, count: int, shift_per_slice: float) -> np.ndarray:
    """``count`` axial slices (x, y, z) that continue the lowest slice ``edge`` (x, y) downwards.

    Slice ``count - 1 - n`` lies ``n + 1`` slices below ``edge``: it is
    ``edge`` with its front (largest y) moved back by ``(n + 1) *
    shift_per_slice`` voxels, kept only where ``edge`` is head.
    """
    out = np.zeros((*edge.shape, count), dtype=bool)
    for n in range(count):
        shift = round((n + 1) * shift_per_slice)
        moved = np.zeros_like(edge)
        if shift < edge.shape[1]:
            moved[:, : edge.shape[1] - shift] = edge[:, shift:]
        out[:, :, count - 1 - n] = moved & edge
    return out


def outline_for(template: Template, smooth_mm: float) -> TemplateOutline:
    """The :class:`TemplateOutline` of ``template`` smoothed at ``smooth_mm`` (cached),
    its level set on the skin of the template's face region (its ``rule``; a template
    without one gets the plain 0.5 level)."""
    return _cached(template.head, template.name, str(template.info["head_sha256"]),
                   float(smooth_mm), getattr(template, "rule", None))


@functools.lru_cache(maxsize=8)
def _cached(head_path: Path, name: str, digest: str, smooth_mm: float,
            rule: FaceRule | None = None) -> TemplateOutline:
    path = head_path.parent / f"tpl-{name}_desc-outline_smooth-{smooth_mm:g}mm.npz"
    stamp = f"{digest}:{OUTLINE_VERSION}:{'' if rule is None else repr(rule)}"

    def build() -> dict[str, np.ndarray]:
        head = load_volume(head_path)
        face = (None if rule is None
                else face_region(rule, head.data.shape, head.affine))
        outline = template_outline(head_mask(head.data, skin_threshold(head.data)),
                                   head.affine, smooth_mm, face=face)
        return {"field": outline.field.astype(np.float32), "affine": outline.affine}

    arrays = verified_arrays(path, stamp, build)
    return TemplateOutline(arrays["field"], arrays["affine"])


@dataclass(frozen=True)
class TemplateOutline:
    """A template's smoothed head outline: the face shape every defaced head gets.

    ``field`` is :func:`smooth_envelope` of the template's head mask on a grid
    of about :data:`COARSE_MM` (float, > 0.5 is inside), levelled on the skin of
    the template's face region when it has a face rule (:func:`skin_level`,
    :func:`outline_for`); ``affine`` maps that
    grid's voxel indices to template RAS mm. Build it with
    :func:`template_outline`.
    """

    field: np.ndarray
    affine: np.ndarray


def _front_first(columns: np.ndarray) -> np.ndarray:
    """Index of the first True along axis 0 of a boolean array, -1 where none."""
    return np.where(columns.any(axis=0), np.argmax(columns, axis=0), -1)


def skin_level(field: np.ndarray, head: np.ndarray, linear: np.ndarray,
               where: np.ndarray | None = None) -> float:
    """The level of ``field`` (``head`` smoothed, same grid) whose surface, seen from the
    front, lies on ``head``'s skin on average over ``where``.

    A Gaussian-smoothed outline cut at 0.5 recedes from the surface it smooths
    wherever that is convex, by about sigma squared over the radius of curvature:
    at 16 mm, 4.7 mm behind the default template's own face and 2.3 mm behind the
    MNI templates' (mean depth over their face windows), so a face given that
    outline was about 5 mm from *both* the subject's face and the template's
    (issue 15). The depth is taken as a face's depth map takes it: along the
    grid axis closest to the anterior axis (``linear``, 3x3, maps voxel steps to
    RAS mm), from the front, one ray per column; the skin is half a voxel in
    front of the first ``head`` voxel, the outline is where ``field`` first
    exceeds the level (linear between voxels). Columns whose first head voxel
    lies in ``where`` (default: all) count. The level is found by bisection, so
    that the mean of (outline depth - skin depth) is zero: a level fitted to the
    face as a whole, not to its nose or its eye sockets, which the smoothing
    flattens either way. 0.5 when no column counts.
    """
    linear = np.asarray(linear, dtype=float)
    axis = int(np.argmax(np.abs(linear[1])))
    front = slice(None, None, -1) if linear[1, axis] > 0 else slice(None)
    values = np.moveaxis(field, axis, 0)[front]
    solid = np.moveaxis(head, axis, 0)[front]
    first = _front_first(solid)
    counted = first > 0
    if where is not None:
        inside = np.take_along_axis(np.moveaxis(where, axis, 0)[front],
                                    np.maximum(first, 0)[None], axis=0)[0]
        counted &= inside
    if not counted.any():
        return 0.5
    values = values[:, counted]
    skin = first[counted] - 0.5

    def mean_offset(level: float) -> float:
        above = values > level
        crossing = _front_first(above)
        hit = crossing > 0
        if not hit.any():
            return float("inf")
        i = crossing[hit]
        column = np.flatnonzero(hit)
        before, after = values[i - 1, column], values[i, column]
        depth = i - 1 + (level - before) / np.maximum(after - before, 1e-12)
        return float(np.mean(depth - skin[hit]))

    low, high = 0.02, 0.98
    for _ in range(30):
        middle = 0.5 * (low + high)
        if mean_offset(middle) > 0.0:
            high = middle
        else:
            low = middle
    return 0.5 * (low + high)


def template_outline(head: np.ndarray, affine: np.ndarray, smooth_mm: float, *,
                     face: np.ndarray | None = None) -> TemplateOutline:
    """The :class:`TemplateOutline` of a template's boolean RAS head mask.

    ``affine`` is the mask's voxel->template RAS mm. The mask is block-averaged
    to about :data:`COARSE_MM` (a coarse voxel is head when more than half of
    it is) and smoothed by :func:`smooth_envelope` with ``smooth_mm``, as the
    subject's own outline would be, so the template's nose and lips flatten out
    too. The coarse grid is padded, so the outline reaches beyond the
    template's field of view (issue 20): with :data:`SIDE_MM` of air on five
    sides (a nose tip cut by the box stays cut), and by :data:`EXTEND_MM` below the box
    with the head's lowest slice continued downwards while its front recedes
    by :data:`TAPER` mm per mm (:func:`extend_down`), so that where a box cuts
    the face at the mouth (the MNI templates) the outline goes on smoothly
    over the subject's chin, as a generic receding chin, with no step at the
    box's edge. Coarse voxel ``c`` of the padded grid sits at fine index
    ``(c - pad) * factor + factor // 2``, as in :func:`upsample`.

    With ``face`` (the template's face region, boolean on the mask's grid) the
    field is shifted by a constant so that its 0.5 level lies on the template's
    skin there (:func:`skin_level`): the face keeps the smoothed *shape*, with no
    nose, lips or brows, but sits where the template's face is, not some
    millimetres behind it, so a defaced face is the template's rather than
    nobody's (issue 15 item 5). Without it the field is the plain smoothed mask.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = coarse_factors(zooms)
    spacing = zooms * factors
    side = np.ceil(SIDE_MM / spacing).astype(int)
    below = int(np.ceil(EXTEND_MM / spacing[2]))
    coarse = np.pad(downsample(head, factors) > 0.5,
                    [(side[0], side[0]), (side[1], side[1]), (below, side[2])])
    coarse[:, :, :below] = extend_down(coarse[:, :, below], below,
                                       TAPER * spacing[2] / spacing[1])
    grid = np.diag([*factors.astype(float), 1.0])
    grid[:3, 3] = factors // 2 - np.array([side[0], side[1], below]) * factors
    field = smooth_envelope(coarse, spacing, smooth_mm)
    if face is not None:
        where = np.pad(downsample(face, factors) > 0.5,
                       [(side[0], side[0]), (side[1], side[1]), (below, side[2])])
        level = skin_level(field, coarse, affine[:3, :3] @ np.diag(factors.astype(float)), where)
        field = field + np.float32(0.5 - level)
    return TemplateOutline(field.astype(np.float32, copy=False), affine @ grid)

