"""``isyb.deface``: deface one image, given by path or in memory, and get images back.

The notebook counterpart of ``isyb deface IN OUT`` (after nilearn's
``check_niimg`` and pydeface's ``deface_image``): it accepts a NIfTI/MGZ path
or a nibabel image and returns the defaced image, the mask of the voxels the
method was allowed to change and the provenance report, without writing
anything. It goes through the same checked step as the command line
(:func:`isyb.deface.checked.deface_checked`), so a result whose brain-guard
check failed is never returned: :class:`~isyb.deface.checked.BrainGuardError`
is raised instead.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib

from isyb.deface.checked import CheckedDefacing, DefaceReport, deface_checked
from isyb.deface.engine import DefaceOptions
from isyb.io import ImageLike, load_volume, mask_image, stored_image, write_stored
from isyb.templates.registry import Template, load_template

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefaceResult:
    """What :func:`deface` returns.

    ``image`` is the defaced image on the input's grid, voxel order, dtype,
    affine, header and scaling: what ``isyb deface IN OUT`` writes, read back.
    :meth:`to_filename` writes it as the command line does; nibabel's own
    ``image.to_filename`` gives the same bytes unless the input has a
    scaling (slope/intercept), which nibabel recomputes on saving, as for any
    loaded image. ``mask`` is the uint8 image (1 = may change) of the voxels
    the method was allowed to change, as ``isyb deface --save-mask`` writes
    it. ``report`` is the provenance
    (:class:`~isyb.deface.checked.DefaceReport`; ``report.to_json()`` is the
    ``*_isyb.json`` record).
    """

    image: nib.spatialimages.SpatialImage
    mask: nib.spatialimages.SpatialImage
    report: DefaceReport
    _checked: CheckedDefacing = field(repr=False, compare=False)

    def to_filename(self, path: str | os.PathLike) -> None:
        """Write the defaced image atomically, as ``isyb deface IN OUT`` writes OUT.

        The stored values and scaling of the input are kept; the format
        follows ``path``'s extension (NIfTI or MGZ).
        """
        write_stored(self._checked.raw, self._checked.volume, path)


def deface_options(method: str = "blur", **options: Any) -> DefaceOptions:
    """:class:`~isyb.deface.engine.DefaceOptions` from keywords; an unknown one is a TypeError."""
    known = {field.name for field in dataclasses.fields(DefaceOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown defacing option(s) {', '.join(unknown)}; use "
                        f"{', '.join(sorted(known - {'method'}))}")
    return DefaceOptions(method=method, **options)


def deface(image: ImageLike, template: str | os.PathLike | Template = "default",
           method: str = "blur", **options: Any) -> DefaceResult:
    """Obscure the face of a head image; return the defaced image, its mask and the report.

    Parameters
    ----------
    image:
        A 3-D head image: a NIfTI/MGZ path or a nibabel image.
    template:
        A built-in template name (``isyb templates list``), the path of a head
        image, or a prepared :class:`~isyb.templates.registry.Template`
        (:func:`~isyb.templates.registry.load_template`). A built-in is
        prepared and cached in ``$ISYB_HOME`` on first use.
    method:
        ``blur`` (default), ``remove``, ``noise`` or ``maskface`` (NRG
        mask_face's normalized anterior filtering, :mod:`isyb.deface.maskface`).
    **options:
        Any other field of :class:`~isyb.deface.engine.DefaceOptions`:
        ``ears``, ``neck``, ``keep_chin``, ``face_region``, ``face_margin_mm``, ``guard_mm``
        (mm), ``layer_mm``, ``smooth_mm``, ``blend_mm``, ``seed``.

    Returns
    -------
    DefaceResult
        ``image``, ``mask`` and ``report``; nothing is written.

    Raises
    ------
    isyb.IsybError
        For an unusable image or template, a failed brain extraction or
        registration, and (:class:`~isyb.deface.checked.BrainGuardError`) when
        a voxel inside the brain guard would change.
    """
    start = time.perf_counter()
    settings = deface_options(method, **options)
    volume = load_volume(image)
    prepared = template if isinstance(template, Template) else load_template(
        template, progress=log.info)
    checked = deface_checked(volume, prepared, settings)
    report = dataclasses.replace(
        checked.report, input=None if volume.path is None else str(volume.path),
        total_s=round(time.perf_counter() - start, 2))
    return DefaceResult(stored_image(checked.raw, volume),
                        mask_image(checked.defacing.allowed, volume), report, checked)
