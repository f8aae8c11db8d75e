"""How well one defacing worked: information removed, brain kept, face seen or not."""

from __future__ import annotations

import os

import numpy as np

from isyb.errors import IsybError
from isyb.evaluate.faces import face_detected
from isyb.evaluate.nmi import face_nmi
from isyb.head.brain import extract_brain
from isyb.head.morphology import brain_guard, head_mask, skin_surface, skin_threshold
from isyb.io import Volume, atomic_path
from isyb.templates.face import derive_face_rule, face_region
from isyb.viz.render import render_faces

YAWS = (-15.0, 0.0, 15.0)


def check_same_grid(a: Volume, b: Volume, names: tuple[str, str]) -> None:
    """Raise a one-line error unless two volumes share shape and affine."""
    if a.shape != b.shape or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise IsybError(f"{names[0]} and {names[1]} are on different grids "
                        f"({a.shape} vs {b.shape}); evaluate needs the defaced image on the "
                        "original's grid")


def evaluation_region(brain: np.ndarray, affine: np.ndarray, *,
                      guard_mm: float = 10.0) -> np.ndarray:
    """A face region that depends on the subject only: the voxel set to compare templates on.

    The face rule (:func:`isyb.templates.face.derive_face_rule`) is placed on
    the subject's own boolean RAS brain mask and evaluated on the subject's
    grid with the identity mapping (``affine`` is its voxel->world mm), then
    the subject's brain guard (the mask dilated by ``guard_mm`` mm) is
    removed. Every template's defacing of the subject is scored over the same
    voxels, so a template that obscures less of the face scores lower, which
    a score over each defacing's own applied mask cannot show (``remove``
    gives NMI 1 over its own mask, whatever it missed).
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    region = face_region(derive_face_rule(brain, affine), brain.shape, affine)
    return region & ~brain_guard(brain, zooms, guard_mm)


def evaluate_defacing(original: Volume, defaced: Volume, face_mask: np.ndarray, *,
                      brain: np.ndarray | None = None, nmi_method: str = "arithmetic",
                      detect: bool = True) -> dict:
    """Anonymization metrics of one original/defaced pair (RAS arrays on one grid).

    ``face_mask`` is the region the defacing was allowed to change (``isyb
    deface --save-mask``). ``brain`` is a reference brain mask; by default
    deepbet computes one from the original. Keys: ``nmi``,
    ``brain_changed_voxels``, ``face_surface_changed_fraction`` (skin-surface
    voxels of the original head inside the face mask that changed),
    ``face_detected_original`` and ``face_detected_defaced`` (stock Haar
    detector on front renders at yaw 0 and ±15 degrees).
    """
    changed = original.data != defaced.data
    brain_source = "given"
    if brain is None:
        brain = extract_brain(original.data, original.zooms)
        brain_source = "deepbet on the original"
    skin = skin_surface(head_mask(original.data, skin_threshold(original.data))) & face_mask
    record = {
        "nmi": face_nmi(original.data, defaced.data, face_mask, method=nmi_method),
        "nmi_method": nmi_method,
        "face_mask_voxels": int(face_mask.sum()),
        "changed_voxels": int(changed.sum()),
        "changed_voxels_outside_face_mask": int((changed & ~face_mask).sum()),
        "brain_changed_voxels": int((changed & brain).sum()),
        "brain_mask": brain_source,
        "face_surface_changed_fraction": (float(changed[skin].mean()) if skin.any() else None),
    }
    if detect:
        before = face_detected(original.data, original.zooms, yaws=YAWS)
        after = face_detected(defaced.data, defaced.zooms, yaws=YAWS)
        record.update(
            face_detected_original=bool(before["detected"]),
            face_detected_defaced=bool(after["detected"]),
            detections_defaced={str(yaw): boxes for yaw, boxes in after["yaws"].items()},
        )
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
