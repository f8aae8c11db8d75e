"""How well one defacing worked: information removed, brain kept, face seen or not."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from isyb.errors import IsybError
from isyb.evaluate.ensemble import ensemble_detect
from isyb.evaluate.face_distance import face_distances
from isyb.evaluate.nmi import face_nmi
from isyb.head.brain import extract_brain
from isyb.head.face_reference import face_coverage, face_reference
from isyb.head.morphology import (
    bounding_box,
    brain_guard,
    head_mask,
    skin_surface_in,
    skin_threshold,
)
from isyb.io import ImageLike, Volume, atomic_path, load_volume
from isyb.templates.face import derive_face_rule, face_region
from isyb.viz.faces import face_detected
from isyb.viz.render import render_faces

if TYPE_CHECKING:
    from isyb.deface.engine import SubjectMasks
    from isyb.templates.registry import Template

YAWS = (-15.0, 0.0, 15.0)


def check_same_grid(a: Volume, b: Volume, names: tuple[str, str]) -> None:
    """Raise a one-line error unless two volumes share shape and affine."""
    if a.shape != b.shape or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise IsybError(f"{names[0]} and {names[1]} are on different grids "
                        f"({a.shape} vs {b.shape}); evaluate needs the defaced image on the "
                        "original's grid")


def evaluation_region(brain: np.ndarray, affine: np.ndarray, *,
                      guard_mm: float = 10.0, guard: np.ndarray | None = None) -> np.ndarray:
    """A face region that depends on the subject only: the voxel set to compare templates on.

    The face rule (:func:`isyb.templates.face.derive_face_rule`) is placed on
    the subject's own boolean RAS brain mask and evaluated on the subject's
    grid with the identity mapping (``affine`` is its voxel->world mm), then
    the subject's brain guard (the mask dilated by ``guard_mm`` mm) is
    removed. Every template's defacing of the subject is scored over the same
    voxels, so a template that obscures less of the face scores lower, which
    a score over each defacing's own applied mask cannot show (``remove``
    gives NMI 1 over its own mask, whatever it missed). ``guard`` is that
    guard when the caller has it already (``isyb study``'s
    :class:`isyb.deface.engine.SubjectMasks` with the same margin).
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    region = face_region(derive_face_rule(brain, affine), brain.shape, affine)
    return region & ~(brain_guard(brain, zooms, guard_mm) if guard is None else guard)


def reference_coverage(original: Volume, changed: np.ndarray, brain: np.ndarray, *,
                       guard_mm: float = 10.0, head: np.ndarray | None = None) -> dict:
    """:func:`isyb.head.face_reference.face_coverage` of a defacing, with no template.

    The subject's own face surface (:func:`~isyb.head.face_reference.face_reference`
    of the original's head and ``brain``) and the brain guard (``brain``
    dilated by ``guard_mm`` mm) around it; ``changed`` marks the voxels that
    differ after defacing; ``head`` is the original's
    :func:`~isyb.head.morphology.head_mask` (computed when not given).
    """
    if head is None:
        head = head_mask(original.data, skin_threshold(original.data))
    reference = face_reference(head, brain, original.affine)
    guard = np.zeros(brain.shape, dtype=bool)
    if reference.any():
        near = bounding_box(reference > 0, np.ceil(guard_mm / original.zooms).astype(int) + 1)
        guard[near] = brain_guard(brain[near], original.zooms, guard_mm)
    return face_coverage(reference, changed, guard)


def _as_volume(image: Volume | ImageLike) -> Volume:
    return image if isinstance(image, Volume) else load_volume(image)


def _as_mask(mask: np.ndarray | Volume | ImageLike, original: Volume, name: str) -> np.ndarray:
    """A RAS boolean mask on the original's grid: an array as given, an image where > 0."""
    if isinstance(mask, np.ndarray):
        return mask
    volume = _as_volume(mask)
    check_same_grid(original, volume, ("original", name))
    return volume.data > 0


def evaluate_defacing(original: Volume | ImageLike, defaced: Volume | ImageLike,
                      face_mask: np.ndarray | Volume | ImageLike, *,
                      brain: np.ndarray | Volume | ImageLike | None = None,
                      nmi_method: str = "arithmetic", detect: bool = True,
                      ensemble: bool = True, template: Template | None = None,
                      guard_mm: float = 10.0, subject: SubjectMasks | None = None) -> dict:
    """Anonymization metrics of one original/defaced pair on one grid.

    ``original`` and ``defaced`` are :class:`~isyb.io.Volume` objects, NIfTI/MGZ
    paths or nibabel images; ``face_mask`` (the region the defacing was
    allowed to change: ``isyb deface --save-mask``, or
    :attr:`isyb.DefaceResult.mask`) and ``brain`` (a reference brain mask;
    by default deepbet computes one from the original) are boolean RAS arrays
    or such images (voxels > 0). Images must share the original's grid. Keys:
    ``nmi``, ``brain_changed_voxels``, ``face_surface_changed_fraction``
    (skin-surface voxels of the original head inside the face mask that
    changed: it cannot see what the mask missed), ``face_reference`` (the
    subject's own face surface, found without a template, and the fractions
    of it changed, left for the brain guard of ``guard_mm`` mm and left
    unreached, whole and by thirds: :func:`reference_coverage`) with its
    ``face_reference_changed_fraction`` and
    ``face_reference_lower_changed_fraction`` (mouth and chin third) also at
    the top level, ``face_detected_original`` and ``face_detected_defaced``
    (stock Haar detector on front renders at yaw 0 and ±15 degrees).

    With ``detect`` and ``ensemble``, also ``ensemble_original`` and
    ``ensemble_defaced``: the face-detector ensemble over 12 views, per detector
    and view (:meth:`isyb.evaluate.ensemble.EnsembleResult.to_json`). With a
    ``template`` (a prepared :class:`isyb.templates.registry.Template`, normally
    the one the defacing used), ``face_distance``: the defaced face's mean
    distance (mm) to the original face and to the registered template's face
    over the face mask (:func:`isyb.evaluate.face_distance.face_distances`;
    the original is registered to the template once for it).

    ``subject`` may pass the original's :func:`isyb.deface.engine.subject_masks`
    (of ``brain`` and ``guard_mm``, as ``isyb study`` has them from the
    defacing): its head, face reference and brain guard are then not computed
    again; the record is the same.
    """
    original, defaced = _as_volume(original), _as_volume(defaced)
    check_same_grid(original, defaced, ("original", "defaced"))
    face_mask = _as_mask(face_mask, original, "face_mask")
    if brain is not None:
        brain = _as_mask(brain, original, "brain")
    changed = original.data != defaced.data
    brain_source = "given"
    if brain is None:
        brain = extract_brain(original.data, original.zooms)
        brain_source = "deepbet on the original"
    if subject is None:
        head = head_mask(original.data, skin_threshold(original.data))
        reference = reference_coverage(original, changed, brain, guard_mm=guard_mm, head=head)
    elif subject.guard_mm != guard_mm:
        raise ValueError(f"subject masks were computed with a {subject.guard_mm:g} mm guard, "
                         f"the evaluation asks for {guard_mm:g} mm")
    else:
        head = subject.head
        reference = face_coverage(subject.reference, changed, subject.guard)
    skin = skin_surface_in(head, face_mask)
    record = {
        "nmi": face_nmi(original.data, defaced.data, face_mask, method=nmi_method),
        "nmi_method": nmi_method,
        "face_mask_voxels": int(face_mask.sum()),
        "changed_voxels": int(changed.sum()),
        "changed_voxels_outside_face_mask": int((changed & ~face_mask).sum()),
        "brain_changed_voxels": int((changed & brain).sum()),
        "brain_mask": brain_source,
        "face_surface_changed_fraction": (float(changed[skin].mean()) if skin.any() else None),
        "face_reference_changed_fraction": reference["changed_fraction"],
        "face_reference_lower_changed_fraction": reference["thirds"]["lower"]["changed_fraction"],
        "face_reference": reference,
    }
    if detect:
        before = face_detected(original.data, original.zooms, yaws=YAWS)
        after = face_detected(defaced.data, defaced.zooms, yaws=YAWS)
        record.update(
            face_detected_original=bool(before["detected"]),
            face_detected_defaced=bool(after["detected"]),
            detections_defaced={str(yaw): boxes for yaw, boxes in after["yaws"].items()},
        )
        if ensemble:
            record.update(
                ensemble_original=ensemble_detect(original.data, original.zooms).to_json(),
                ensemble_defaced=ensemble_detect(defaced.data, defaced.zooms).to_json(),
            )
    if template is not None:
        from isyb.deface.engine import align
        from isyb.evaluate.reid import frame_for

        registration = align(original, template, brain=brain).registration
        distance = face_distances(original, defaced, face_mask,
                                  registration.subject_to_template, frame_for(template))
        record.update(face_distance=distance.to_json(), face_distance_template=template.name)
    return record


def save_renders(defaced: Volume, path: str | os.PathLike) -> None:
    """A PNG of the *defaced* head rendered from the front at yaw -15, 0 and +15 degrees."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = render_faces(defaced.data, defaced.zooms, yaws=YAWS)
    figure, axes = plt.subplots(1, len(images), figsize=(4 * len(images), 4.6))
    for axis, yaw, image in zip(np.atleast_1d(axes), YAWS, images, strict=True):
        axis.imshow(image, cmap="gray")
        axis.set_title(f"defaced, yaw {yaw:+.0f}°")
        axis.set_axis_off()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    plt.close(figure)
