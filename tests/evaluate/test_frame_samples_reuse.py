"""One resampling into the face frame serves several thresholds (isyb.evaluate.reid,
isyb.evaluate.face_distance): the shortcuts ``isyb study`` takes give the same arrays.

``isyb study`` resamples a defaced head into the template's face frame once and
reads it at the original's skin threshold (face distances) and at its own (the
descriptor), and passes the original's descriptor, which it also stores for
re-identification, to :func:`face_distances`. Each result must be identical,
NaNs included, to the one computed from scratch.
"""

from __future__ import annotations

import numpy as np
import pytest

from isyb.evaluate import face_distance, reid
from isyb.head.morphology import skin_threshold
from isyb.io import volume_from_image
from isyb.synthetic import rescan
from isyb.synthetic.phantom import Label, make_phantom, to_nifti
from isyb.templates.face import derive_face_rule


@pytest.fixture(scope="module")
def heads() -> dict:
    phantom = make_phantom(voxel_size=2.0, fov_mm=rescan.PHANTOM_FOV_MM,
                           fov_center_mm=rescan.PHANTOM_FOV_CENTRE_MM)
    template = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    rule = derive_face_rule(brain, template.affine)
    weight = rescan.face_weight(template, np.eye(4), rule, brain=brain)
    subject = rescan.vary_face(template, weight, np.random.default_rng(3), amplitude_mm=4.0)
    mask = weight > 0
    # a darker face: the defaced head's own skin threshold is not the original's
    refaced = rescan.as_volume(np.where(mask, 0.6 * template.data, subject.data),
                               subject.affine)
    shift = np.eye(4)
    shift[:3, 3] = (0.7, -1.3, 0.4)  # an off-grid subject -> template map
    return {"subject": subject, "refaced": refaced, "mask": mask, "to_template": shift,
            "frame": reid.face_frame(template, rule, spacing_mm=2.0)}


def test_one_resampling_gives_the_descriptor_at_any_threshold(heads) -> None:
    frame, to_template, refaced = heads["frame"], heads["to_template"], heads["refaced"]
    samples = reid.frame_samples(refaced, to_template, frame)
    for threshold in (None, skin_threshold(heads["subject"].data)):
        direct = reid.face_descriptor(refaced, to_template, frame, threshold=threshold)
        shared = reid.samples_descriptor(samples, frame, skin_threshold(refaced.data)
                                         if threshold is None else threshold)
        assert np.isfinite(direct).sum() > 50
        np.testing.assert_array_equal(shared, direct)


def test_face_distances_with_the_callers_arrays_are_the_same(heads) -> None:
    subject, refaced, frame = heads["subject"], heads["refaced"], heads["frame"]
    to_template = heads["to_template"]
    fresh = face_distance.face_distances(subject, refaced, heads["mask"], to_template, frame)
    reused = face_distance.face_distances(
        subject, refaced, heads["mask"], to_template, frame,
        defaced_samples=reid.frame_samples(refaced, to_template, frame),
        original_descriptor=reid.face_descriptor(subject, to_template, frame))
    assert fresh.to_original is not None and fresh.to_original > 0.5
    assert reused == fresh
