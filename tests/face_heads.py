"""A 2 mm phantom head, a subject with its own face and that subject refaced with the
template's face, for the face-distance and face-frame tests (tests/evaluate)."""

from __future__ import annotations

import numpy as np

from isyb.evaluate.reid import face_frame
from isyb.io import volume_from_image
from isyb.synthetic import rescan
from isyb.synthetic.phantom import Label, make_phantom, to_nifti
from isyb.templates.face import derive_face_rule


def refaced_phantom(face_scale: float = 1.0) -> dict:
    """``template``, ``subject`` (the template with a varied face), ``mask`` (the face
    weight > 0), ``refaced`` (the subject with the template's face, its intensities times
    ``face_scale``) and ``frame`` (the template's face frame at 2 mm)."""
    phantom = make_phantom(voxel_size=2.0, fov_mm=rescan.PHANTOM_FOV_MM,
                           fov_center_mm=rescan.PHANTOM_FOV_CENTRE_MM)
    template = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    rule = derive_face_rule(brain, template.affine)
    weight = rescan.face_weight(template, np.eye(4), rule, brain=brain)
    subject = rescan.vary_face(template, weight, np.random.default_rng(3), amplitude_mm=4.0)
    mask = weight > 0
    refaced = rescan.as_volume(np.where(mask, face_scale * template.data, subject.data),
                               subject.affine)
    return {"template": template, "subject": subject, "refaced": refaced, "mask": mask,
            "frame": face_frame(template, rule, spacing_mm=2.0)}
