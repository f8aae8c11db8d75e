"""The one fail-closed step: deface a volume into its stored values and check the brain guard.

:func:`deface_checked` runs :func:`isyb.deface.engine.deface_volume`, puts the
result into the input's *stored* values (dtype, scaling and voxel order of the
file, :func:`isyb.io.edit_stored`) and checks there, after rounding, that no
voxel inside the brain guard changed. The Python API
(:func:`isyb.deface.api.deface`) and the file writer
(:func:`isyb.deface.file.deface_file`) both go through it, so neither can hand
out or write a result whose guard check failed: it raises
:class:`BrainGuardError` instead.
"""

from __future__ import annotations

import datetime as dt
import platform
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from isyb import __version__
from isyb.deface.engine import Alignment, DefaceOptions, Defacing, SubjectMasks, deface_volume
from isyb.errors import IsybError
from isyb.head.face_reference import face_coverage
from isyb.io import Volume, edit_stored, stored_data, to_source_order
from isyb.templates.registry import Template

#: Libraries whose versions shape the result, recorded in every report.
DEPENDENCIES = ("numpy", "scipy", "nibabel", "antspyx", "deepbet", "torch")
#: The report's note when the face region holds little face tissue.
LITTLE_FACE_NOTE = ("little or no face tissue was found in the face region: "
                    "the input may already be defaced or its FOV may exclude the face")


class BrainGuardError(IsybError):
    """A voxel inside the brain guard would change: nothing is returned or written."""


def versions() -> dict[str, str]:
    """Versions of isyb, Python and the libraries that shape the result."""
    out = {"isyb": __version__, "python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class BrainGuardCheck:
    """The brain-guard check on the stored values.

    The guard is the brain mask dilated by ``margin_mm`` mm;
    ``guard_voxels_checked`` counts its voxels (inside the work box around the
    face region, where every change happens) and ``changed_voxels_in_guard``
    those whose stored value differs from the input's. A returned check has
    passed: a failing one raises :class:`BrainGuardError`.
    """

    margin_mm: float
    guard_voxels_checked: int
    changed_voxels_in_guard: int
    passed: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class DefaceReport:
    """Provenance of one defacing: what was done, with what, and the checks on the result.

    Counts are voxels of the input grid, volumes mL, times s. ``template``
    names the template (name, source, SHA-256 of its head, brain-mask source);
    ``options`` the :class:`~isyb.deface.engine.DefaceOptions` used;
    ``changed_voxels`` the stored voxels that differ from the input;
    ``face_surface_changed_fraction`` the share of the head's skin-surface
    voxels in the defacing's own face region that changed (None without any:
    it cannot see what the region missed); ``face_skin_in_guard_fraction``
    the share of the skin-surface voxels in the whole face region (before the
    guard is taken out of it) that the brain guard keeps unchanged: where the
    guard reaches the face, the brows and upper orbits (None without face
    skin; ``face_surface_voxels_in_guard`` is its numerator, that plus
    ``face_surface_voxels`` its denominator); ``face_reference`` the
    template-independent figures over the subject's own face surface
    (:func:`isyb.head.face_reference.face_coverage`: changed, left for the
    brain guard, left unreached; whole and by thirds); the fields
    from ``registration`` to ``timings_s`` are those of
    :class:`~isyb.deface.engine.FaceStats`; ``maskface`` (method ``maskface`` only)
    how its face box was placed, its grid, layer, seed and jitter, and the note
    that the brain guard stayed on where the ISYB descriptor's runs had none.
    ``input``, ``output`` and
    ``qc_png`` are the names written in the record (None: left out);
    ``total_s`` is the wall time of the whole call, from reading to writing.
    :meth:`to_json` is the ``*_isyb.json`` provenance record.
    """

    input: str | None = None
    output: str | None = None
    template: dict[str, Any]
    method: str
    options: dict[str, Any]
    changed_voxels: int
    brain_guard: BrainGuardCheck
    face_surface_changed_fraction: float | None
    face_skin_in_guard_fraction: float | None
    face_reference: dict[str, Any]
    registration: dict[str, Any]
    brain_mask_ml: float
    face_region_voxels: int
    allowed_voxels: int
    face_tissue_ml: float
    template_face_tissue_ml: float
    little_or_no_face: bool
    face_surface_voxels: int
    face_surface_voxels_in_guard: int
    timings_s: dict[str, float]
    created: str
    versions: dict[str, str]
    qc_png: str | None = None
    total_s: float | None = None
    maskface: dict[str, Any] | None = None

    @property
    def note(self) -> str | None:
        """A warning for the user when little or no face was found, else None."""
        return LITTLE_FACE_NOTE if self.little_or_no_face else None

    def to_json(self) -> dict[str, Any]:
        """The provenance record, a JSON-ready dict (the ``*_isyb.json`` file's content)."""
        record = asdict(self)
        total_s, qc_png = record.pop("total_s"), record.pop("qc_png")
        for key in ("input", "output", "maskface"):
            if record[key] is None:
                del record[key]
        if total_s is not None:
            record["timings_s"]["total_s"] = total_s
        if self.note:
            record["note"] = self.note
        if qc_png is not None:
            record["qc_png"] = qc_png
        return record


@dataclass(frozen=True)
class CheckedDefacing:
    """A defacing whose brain-guard check on the stored values passed.

    ``raw`` is the defaced image in the input's stored voxel order, dtype and
    scaling (what is written); ``defacing`` the RAS arrays of
    :func:`~isyb.deface.engine.deface_volume`.
    """

    volume: Volume
    defacing: Defacing
    raw: np.ndarray
    report: DefaceReport


def _template_record(template: Template) -> dict[str, Any]:
    return {"name": template.name, "source": template.info.get("source"),
            "head_sha256": template.info.get("head_sha256"),
            "brain_mask": template.info.get("brain_mask")}


def _options_record(options: DefaceOptions) -> dict[str, Any]:
    return {"ears": options.ears, "neck": options.neck, "keep_chin": options.keep_chin,
            "face_region": options.face_region,
            "face_margin_mm": (options.face_margin_mm
                               if options.face_region == "template" else None),
            "guard_mm": options.guard_mm,
            "layer_mm": options.layer_mm, "smooth_mm": options.smooth_mm,
            "blend_mm": options.blend_mm, "seed": options.seed}


def _share(kept: int, others: int) -> float | None:
    """``kept / (kept + others)`` to 4 decimals; None when both are 0."""
    return round(kept / (kept + others), 4) if kept + others else None


def deface_checked(volume: Volume, template: Template, options: DefaceOptions, *,
                   alignment: Alignment | None = None,
                   subject: SubjectMasks | None = None) -> CheckedDefacing:
    """Deface ``volume`` into its stored values; refuse the result if the brain guard changed.

    ``alignment`` reuses a brain mask and registration of the same volume
    (:func:`isyb.deface.engine.align`), ``subject`` its head and guard masks
    (:func:`isyb.deface.engine.subject_masks`, for several methods or templates).
    Raises :class:`BrainGuardError` (naming ``volume.path``, or ``image`` for an
    in-memory one) when any voxel inside the brain guard differs from the input
    after rounding to the stored dtype.
    """
    result = deface_volume(volume, template, options, alignment=alignment, subject=subject)
    raw_in, _, _ = stored_data(volume.source)
    raw_out = edit_stored(volume, result.data, result.allowed)
    changed = raw_out != raw_in
    changed3 = changed[..., 0] if changed.ndim == 4 else changed
    guard_src = to_source_order(result.guard, volume.source)
    changed_in_guard = int((changed3 & guard_src).sum())
    if changed_in_guard:
        name = volume.path if volume.path is not None else "image"
        raise BrainGuardError(f"{name}: {changed_in_guard} voxels inside the brain guard would "
                              "change; nothing was written (fail closed)")
    surface_src = to_source_order(result.skin & result.region, volume.source)
    surface_total = int(surface_src.sum())
    surface_changed = int((surface_src & changed3).sum())
    report = DefaceReport(
        template=_template_record(template),
        method=options.method,
        options=_options_record(options),
        changed_voxels=int(changed3.sum()),
        brain_guard=BrainGuardCheck(options.guard_mm, int(guard_src.sum()), changed_in_guard,
                                    True),
        face_surface_changed_fraction=(round(surface_changed / surface_total, 4)
                                       if surface_total else None),
        face_skin_in_guard_fraction=_share(result.report["face_surface_voxels_in_guard"],
                                           result.report["face_surface_voxels"]),
        face_reference=face_coverage(to_source_order(result.reference, volume.source), changed3,
                                     to_source_order(result.reference_guard, volume.source)),
        **result.report,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        versions=versions(),
    )
    return CheckedDefacing(volume, result, raw_out, report)
