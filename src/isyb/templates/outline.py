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
from isyb.templates.verify import verified_arrays

if TYPE_CHECKING:
    from isyb.templates.registry import Template

#: Bump when the way the outline is built changes, so cached files are rebuilt.
#: 2: the outline continues beyond the template's field of view (:data:`EXTEND_MM`).
OUTLINE_VERSION = 2
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
    """The :class:`TemplateOutline` of ``template`` smoothed at ``smooth_mm`` (cached)."""
    return _cached(template.head, template.name, str(template.info["head_sha256"]),
                   float(smooth_mm))


@functools.lru_cache(maxsize=8)
def _cached(head_path: Path, name: str, digest: str, smooth_mm: float) -> TemplateOutline:
    path = head_path.parent / f"tpl-{name}_desc-outline_smooth-{smooth_mm:g}mm.npz"

    def build() -> dict[str, np.ndarray]:
        head = load_volume(head_path)
        outline = template_outline(head_mask(head.data, skin_threshold(head.data)),
                                   head.affine, smooth_mm)
        return {"field": outline.field.astype(np.float32), "affine": outline.affine}

    arrays = verified_arrays(path, f"{digest}:{OUTLINE_VERSION}", build)
    return TemplateOutline(arrays["field"], arrays["affine"])


@dataclass(frozen=True)
class TemplateOutline:
    """A template's smoothed head outline: the face shape every defaced head gets.

    ``field`` is :func:`smooth_envelope` of the template's head mask on a grid
    of about :data:`COARSE_MM` (float, > 0.5 is inside); ``affine`` maps that
    grid's voxel indices to template RAS mm. Build it with
    :func:`template_outline`.
    """

    field: np.ndarray
    affine: np.ndarray


def template_outline(head: np.ndarray, affine: np.ndarray, smooth_mm: float) -> TemplateOutline:
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
    return TemplateOutline(smooth_envelope(coarse, spacing, smooth_mm), affine @ grid)

