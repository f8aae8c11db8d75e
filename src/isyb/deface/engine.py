"""Face masking of one head volume: brain, registration, face region, obscuring, checks.

This module is pure numerics on a :class:`isyb.io.Volume` and a prepared
:class:`isyb.templates.registry.Template`; reading and writing files is the
business of :mod:`isyb.deface.file`. The exceptions are the template's
smoothed outline, which ``blur`` and ``noise`` give the face (read from, or
built into, the template's cache folder by :mod:`isyb.templates.outline`), and,
in the ``template`` face-region mode, the template's own face
(:meth:`isyb.templates.registry.Template.face`, cached the same way).
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

import numpy as np

from isyb.deface.maskface_roi import maskface_obscure, place_face_box, region_box
from isyb.deface.obscure import BLEND_MM, obscure
from isyb.deface.obscure import METHODS as OBSCURE_METHODS
from isyb.errors import IsybError
from isyb.head.brain import check_brain_mask, extract_brain
from isyb.head.face_reference import face_reference
from isyb.head.morphology import bounding_box, brain_guard, head_mask, skin_surface, skin_threshold
from isyb.head.register import Registration, SubjectGrid, register_template
from isyb.io import Volume
from isyb.templates.face import (
    FACE_MARGIN_MM,
    FACE_REGIONS,
    chin_below,
    face_region,
    within_template_face,
)
from isyb.templates.outline import outline_for
from isyb.templates.registry import Template

#: Below this ratio of face tissue found to face tissue expected from the
#: template, the input is reported as having little or no face to mask.
LITTLE_FACE_RATIO = 0.35
#: Every defacing method: those of :mod:`isyb.deface.obscure`, and NRG mask_face's
#: normalized anterior filtering (:mod:`isyb.deface.maskface`).
METHODS = (*OBSCURE_METHODS, "maskface")


class FaceStats(TypedDict):
    """What :func:`deface_volume` measured: registration, brain, face region and tissue, timings.

    Volumes in mL, timings in s; ``registration.subject_to_template_mm`` is a
    4×4 list (subject mm → template mm). Part of the provenance record as is.
    """

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
    maskface: NotRequired[dict[str, Any]]


@dataclass(frozen=True)
class DefaceOptions:
    """Settings of one defacing run (see ``isyb deface --help``).

    Lengths are mm: ``guard_mm`` the brain guard margin, ``layer_mm`` the
    half-thickness of the rebuilt skin layer, ``smooth_mm`` the Gaussian sigma
    of the outlines, ``blend_mm`` the band inside the face region's border
    where the template's outline gives way to the subject's
    (:func:`isyb.deface.obscure.obscure`). ``face_region`` is ``rule`` (the
    default: the template's half-spaces) or ``template`` (the template's own
    face grown by ``face_margin_mm`` template mm, within those half-spaces;
    see :mod:`isyb.templates.face`); ``face_margin_mm`` is unused by ``rule``.
    The region reaches over the lips and the chin to below the lower edge of
    the mandible; ``keep_chin`` stops it at the mouth (the region of isyb
    before issue 20 on the MNI templates, whose field of view ends there).
    ``maskface`` keeps mask_face's own geometry (15 mm grid, ±8 mm layer;
    :mod:`isyb.deface.maskface`) and ignores ``layer_mm``, ``smooth_mm`` and
    ``blend_mm``; where a CAPIIO matrix places its face box
    (:mod:`isyb.deface.maskface_roi`) it also ignores ``face_region``,
    ``face_margin_mm``, ``ears`` and ``neck``. ``seed`` seeds its jitter.
    """

    method: str = "blur"
    ears: bool = False
    neck: bool = False
    keep_chin: bool = False
    face_region: str = "rule"
    face_margin_mm: float = FACE_MARGIN_MM
    guard_mm: float = 10.0
    layer_mm: float = 8.0
    smooth_mm: float = 16.0
    blend_mm: float = BLEND_MM
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise IsybError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        for name in ("guard_mm", "layer_mm", "smooth_mm", "blend_mm", "face_margin_mm"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
                # NaN compares false with everything: an unchecked NaN guard protects nothing
                raise IsybError(f"{name} must be a finite number ≥ 0 mm, got {value!r}")
        if self.face_region not in FACE_REGIONS:
            raise IsybError(f"unknown face region {self.face_region!r}: use one of "
                            f"{', '.join(FACE_REGIONS)}")


@dataclass
class Defacing:
    """Outputs of :func:`deface_volume`, all RAS arrays on the input grid.

    ``guard`` (the subject's brain guard) and ``skin`` (skin-surface voxels)
    are kept in the work box around the face region, where every change
    happens, and are False elsewhere. ``reference`` is the subject's own face surface by third
    (:func:`isyb.head.face_reference.face_reference` of the solid head, no
    template) and ``reference_guard`` the subject's whole brain guard
    (:attr:`SubjectMasks.guard`; only its values on ``reference`` are read).
    """

    data: np.ndarray
    allowed: np.ndarray
    region: np.ndarray
    guard: np.ndarray
    brain: np.ndarray
    head: np.ndarray
    skin: np.ndarray
    report: FaceStats
    reference: np.ndarray
    reference_guard: np.ndarray


@dataclass
class SubjectMasks:
    """What defacing needs of a subject that no template changes, computed once per subject.

    ``threshold`` is the skin threshold (image units,
    :func:`isyb.head.morphology.skin_threshold`), ``head`` the solid head
    (:func:`isyb.head.morphology.head_mask`), ``guard`` the brain dilated by
    ``guard_mm`` mm over the whole volume (:func:`isyb.head.morphology.brain_guard`)
    and ``reference`` the subject's own face surface by third
    (:func:`isyb.head.face_reference.face_reference`). ``seconds`` is the time
    :func:`subject_masks` took. ``isyb study`` computes it once and passes it
    to the defacing with every template; each template's defacing reads only
    slices of it, so the outputs are the same as when it is computed per call.
    """

    threshold: float
    head: np.ndarray
    guard: np.ndarray
    guard_mm: float
    reference: np.ndarray
    seconds: float


def subject_masks(volume: Volume, brain: np.ndarray, guard_mm: float) -> SubjectMasks:
    """The :class:`SubjectMasks` of ``volume`` with its boolean RAS ``brain`` mask.

    The guard is exact (a Euclidean distance transform in the brain's box
    grown by the margin): it is the fail-closed protection of the brain, so
    it is never approximated on a coarse grid.
    """
    clock = time.perf_counter()
    threshold = skin_threshold(volume.data)
    head = head_mask(volume.data, threshold)
    guard = brain_guard(brain, volume.zooms, guard_mm)
    reference = face_reference(head, brain, volume.affine)
    return SubjectMasks(threshold, head, guard, float(guard_mm), reference,
                        time.perf_counter() - clock)


@dataclass
class Alignment:
    """What defacing needs of a subject besides the method: brain mask and registration.

    It does not depend on the method or its options, so one alignment can
    serve several defacings of the same image (``isyb study``, the tests).
    """

    brain: np.ndarray
    brain_ml: float
    registration: Registration
    timings: dict[str, float]


def align(volume: Volume, template: Template, *, brain: np.ndarray | None = None,
          stage: Callable[[str], None] | None = None,
          subject_grid: SubjectGrid | None = None) -> Alignment:
    """Brain-extract ``volume`` (unless ``brain`` is given) and register ``template`` to it.

    ``stage`` is told, in words, when each of the two (long) steps starts.
    ``subject_grid``: ``volume`` and ``brain`` already on the registration's
    working grid (:class:`isyb.head.register.SubjectGrid`), shared by the
    templates of one subject (``isyb study``); the registration is the same.
    Raises :class:`isyb.errors.BrainExtractionError` or
    :class:`isyb.errors.RegistrationError` when either looks wrong.
    """
    clock = time.perf_counter()
    if brain is None:
        if stage:
            stage("brain: extracting the brain (deepbet)")
        brain = extract_brain(volume.data, volume.zooms)
    brain_ml = check_brain_mask(brain, volume.zooms, in_fov_fraction=0.3)
    brain_s = time.perf_counter() - clock
    if stage:
        stage(f"registration: aligning template {template.name} to the head")
    clock = time.perf_counter()
    registration = register_template(volume.data, volume.affine, brain, template.working_grid(),
                                     subject_grid=subject_grid)
    timings = {"brain_s": brain_s, "registration_s": time.perf_counter() - clock}
    return Alignment(brain, brain_ml, registration, timings)


def deface_volume(volume: Volume, template: Template, options: DefaceOptions,
                  *, alignment: Alignment | None = None,
                  subject: SubjectMasks | None = None) -> Defacing:
    """Obscure the face of ``volume`` with ``template``'s face region.

    ``alignment`` may be reused from :func:`align`, and ``subject`` from
    :func:`subject_masks` of the same volume, brain mask and
    ``options.guard_mm`` (checked: another margin raises ``ValueError``); by
    default both are computed. The report holds timings (s: ``brain_s``,
    ``registration_s``, ``subject_s`` for :func:`subject_masks`, 0 when
    reused, ``region_s`` for the face region and its guard, ``obscure_s``,
    ``statistics_s``), the registration score and the face statistics; the
    brain-guard check is done on the stored values by
    :func:`isyb.deface.checked.deface_checked`, which every writer and the
    Python API go through.
    """
    alignment = alignment if alignment is not None else align(volume, template)
    registration, brain = alignment.registration, alignment.brain
    timings = dict(alignment.timings)
    zooms = volume.zooms
    if subject is None:
        subject = subject_masks(volume, brain, options.guard_mm)
        timings["subject_s"] = subject.seconds
    else:
        if subject.guard_mm != options.guard_mm:
            raise ValueError(f"subject masks were computed with a {subject.guard_mm:g} mm guard, "
                             f"the options ask for {options.guard_mm:g} mm")
        timings["subject_s"] = 0.0
    clock = time.perf_counter()
    voxel_to_template = registration.subject_to_template @ volume.affine
    face_box = (place_face_box(template, volume.shape, zooms, voxel_to_template)
                if options.method == "maskface" else None)
    rule = template.rule
    if subject.reference.any():
        # the chin plane goes under the subject's own chin (issue 20)
        lowest = (np.argwhere(subject.reference > 0) @ voxel_to_template[2, :3]
                  + voxel_to_template[2, 3])
        rule = chin_below(rule, float(lowest.min()))
    if face_box is not None:
        full_region = face_box.mask(volume.shape)
    else:
        full_region = face_region(rule, volume.shape, voxel_to_template,
                                  ears=options.ears, neck=options.neck,
                                  keep_chin=options.keep_chin)
        if options.face_region == "template":
            full_region = within_template_face(full_region, template.face(),
                                               voxel_to_template, options.face_margin_mm)
    # Only the face region's bounding box, grown by the guard margin and the
    # smoothing reach, can change; the guard is the subject's whole one, kept in that box.
    reach = max(options.guard_mm, options.layer_mm + 3 * options.smooth_mm, options.blend_mm)
    box = bounding_box(full_region, np.ceil(reach / zooms).astype(int) + 1)
    guard = np.zeros(volume.shape, dtype=bool)
    guard[box] = subject.guard[box]
    region = full_region & ~guard
    threshold = subject.threshold
    # Tissue in the face region counts as head even when a dark gap cuts it off
    # from the largest piece: otherwise blur and noise would leave it untouched.
    head = subject.head | ((volume.data > threshold) & full_region)
    timings["region_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    maskface_record = None
    if options.method == "maskface":
        face_box = face_box or region_box(full_region, voxel_to_template)
        new_box, allowed_box, maskface_record = maskface_obscure(
            volume.data[box], region[box], head[box], zooms, face_box, seed=options.seed)
    else:
        outline = (None if options.method == "remove"
                   else outline_for(template, options.smooth_mm))
        box_to_voxel = np.eye(4)
        box_to_voxel[:3, 3] = [part.start for part in box]
        new_box, allowed_box = obscure(volume.data[box], region[box], options.method, zooms,
                                       head=head[box], layer_mm=options.layer_mm,
                                       smooth_mm=options.smooth_mm, seed=options.seed,
                                       outline=outline,
                                       voxel_to_template=voxel_to_template @ box_to_voxel,
                                       face=full_region[box], blend_mm=options.blend_mm,
                                       guard=guard[box])
    new_data = volume.data.copy()
    new_data[box] = new_box
    allowed = np.zeros(volume.shape, dtype=bool)
    allowed[box] = allowed_box
    timings["obscure_s"] = time.perf_counter() - clock

    clock = time.perf_counter()
    voxel_ml = float(np.prod(zooms)) / 1000.0
    face_tissue_ml = float((region & head).sum()) * voxel_ml
    scale = abs(np.linalg.det(np.linalg.inv(registration.subject_to_template)[:3, :3]))
    expected_ml = float(template.info.get("face_tissue_ml", 0.0)) * scale
    skin = np.zeros(volume.shape, dtype=bool)
    skin[box] = skin_surface(head[box])
    timings["statistics_s"] = time.perf_counter() - clock
    report: FaceStats = {
        "registration": {
            "score_brain_dice": round(registration.score, 4),
            "start": registration.start,
            "attempts": registration.attempts,
            "subject_to_template_mm": np.round(registration.subject_to_template, 6).tolist(),
        },
        "brain_mask_ml": round(alignment.brain_ml, 1),
        "face_region_voxels": int(region.sum()),
        "allowed_voxels": int(allowed.sum()),
        "face_tissue_ml": round(face_tissue_ml, 1),
        "template_face_tissue_ml": round(expected_ml, 1),
        "little_or_no_face": bool(expected_ml > 0
                                  and face_tissue_ml < LITTLE_FACE_RATIO * expected_ml),
        "face_surface_voxels": int((skin & region).sum()),
        "face_surface_voxels_in_guard": int((skin & full_region & guard).sum()),
        "timings_s": {key: round(value, 2) for key, value in timings.items()},
    }
    if maskface_record is not None:
        report["maskface"] = maskface_record
    return Defacing(new_data, allowed, region, guard, brain, head, skin, report,
                    subject.reference, subject.guard)
