"""The smoothed head outline of a prepared template, cached next to its files.

``blur`` and ``noise`` give every defaced face the registered template's
smoothed outline (:class:`isyb.deface.obscure.TemplateOutline`). Building it
reads the 1 mm template and finds its head (about 2.5 s on one core), so the
result (a float32 field on a ~2 mm grid, about 6 MB) is kept as
``tpl-<name>_desc-outline_smooth-<mm>mm.npz`` beside the prepared template,
keyed by the head's SHA-256 and :data:`OUTLINE_VERSION`, and in memory per
process. A stale or unreadable file is rebuilt; a cache folder that cannot be
written only costs the rebuild in every process.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from isyb.deface.obscure import TemplateOutline, head_mask, template_outline
from isyb.io import cached_arrays, load_volume
from isyb.render import skin_threshold

if TYPE_CHECKING:
    from isyb.templates.registry import Template

#: Bump when the way the outline is built changes, so cached files are rebuilt.
OUTLINE_VERSION = 1


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

    arrays = cached_arrays(path, f"{digest}:{OUTLINE_VERSION}", build)
    return TemplateOutline(arrays["field"], arrays["affine"])
