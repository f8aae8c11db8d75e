"""The chin plane goes under the subject's own chin (issue 20: mne-sample, MNI templates)."""

from __future__ import annotations

import numpy as np

from isyb.templates.face import CHIN_MARGIN_MM, FaceRule, chin_below, face_region

RULE = FaceRule(face_normal=(0.0, 1.0, 0.0), face_offset=0.0, back_y=-1e9, chin_z=-10.0,
                ear_inner_x=(0.0, 0.0), ear_y=(0.0, 0.0), ear_z=(0.0, 45.0))


def test_the_plane_is_lowered_under_a_low_chin_and_never_raised() -> None:
    assert chin_below(RULE, -30.0).chin_z == -30.0 - CHIN_MARGIN_MM
    assert chin_below(RULE, 50.0) == RULE
    assert chin_below(RULE, -30.0, margin_mm=2.0).chin_z == -32.0
    assert chin_below(RULE, -30.0).mouth_z == RULE.mouth_z  # keep_chin's plane stays


def test_the_region_reaches_the_lowered_plane() -> None:
    affine = np.eye(4)
    affine[:3, 3] = [-5.0, 1.0, -60.0]  # a 1 mm grid, all in front of the face plane
    shape = (10, 10, 60)
    before = face_region(RULE, shape, affine)
    after = face_region(chin_below(RULE, -30.0), shape, affine)
    z = np.arange(shape[2]) - 60.0
    assert np.array_equal(before.any(axis=(0, 1)), z > -10.0)
    assert np.array_equal(after.any(axis=(0, 1)), z > -40.0)
