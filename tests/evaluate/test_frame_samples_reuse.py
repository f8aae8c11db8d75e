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

from face_heads import refaced_phantom
from isyb.evaluate import face_distance, reid
from isyb.head.morphology import skin_threshold


@pytest.fixture(scope="module")
def heads() -> dict:
    # a darker face: the defaced head's own skin threshold is not the original's
    heads = refaced_phantom(face_scale=0.6)
    shift = np.eye(4)
    shift[:3, 3] = (0.7, -1.3, 0.4)  # an off-grid subject -> template map
    return {**heads, "to_template": shift}


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
