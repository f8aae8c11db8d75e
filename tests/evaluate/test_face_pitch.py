"""The face reference follows the head's pitch (issue 20, mne-sample scanned chin-up)."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.head.face_reference import MAX_PITCH_DEG, MNI_BRAIN_AXIS_DEG, _unpitch, head_pitch_deg


def _ellipsoid(axis_deg: float, n: int = 20000, seed: int = 0) -> np.ndarray:
    """Points of a brain-like ellipsoid (mm): 85 mm long, 70 wide, 60 tall, long axis tilted up."""
    rng = np.random.default_rng(seed)
    unit = rng.normal(size=(n, 3))
    unit *= rng.uniform(0, 1, size=(n, 1)) ** (1 / 3) / np.linalg.norm(unit, axis=1, keepdims=True)
    points = unit * [70.0, 85.0, 60.0] + [0.0, -20.0, 10.0]
    return _unpitch(points, np.array([0.0, -20.0, 10.0]), -axis_deg)


@pytest.mark.parametrize(("axis_deg", "pitch"), [
    (MNI_BRAIN_AXIS_DEG + 20.0, 20.0),  # chin up, like mne-sample
    (MNI_BRAIN_AXIS_DEG, 0.0),          # the MNI pose
    (MNI_BRAIN_AXIS_DEG - 15.0, 0.0),   # chin down: not corrected
    (MNI_BRAIN_AXIS_DEG + 33.0, MAX_PITCH_DEG),  # beyond the clip
])
def test_pitch_is_the_brain_axis_above_mni(axis_deg: float, pitch: float) -> None:
    assert head_pitch_deg(_ellipsoid(axis_deg)) == pytest.approx(pitch, abs=1.0)


def test_unpitch_undoes_a_rotation() -> None:
    points = _ellipsoid(25.0, n=50)
    centre = points.mean(axis=0)
    back = _unpitch(_unpitch(points, centre, 25.0), centre, -25.0)
    np.testing.assert_allclose(back, points, atol=1e-9)
    assert head_pitch_deg(points[:2]) == 0.0
