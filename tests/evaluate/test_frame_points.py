"""Sampling only the face-frame voxels the study needs gives the whole-frame values, to the bit.

``isyb study`` resampled the applied face mask onto each template's face frame per
subject x template pair (about 2.5 million frame voxels at 1 mm) only to read it at the
original's and the defaced head's skin points, two per frame pixel. It now samples the
mask only there (:func:`isyb.evaluate.face_distance._mask_at_depth`). That is exact only
if :func:`isyb.evaluate.reid.frame_coordinates` repeats SciPy's ``affine_transform``
arithmetic: checked here against whole-frame resamplings, bit for bit.

(Sampling the defaced head only where the defacing changed it, and patching the
original's smoothed samples, was tried too: exact, but finding those voxels cost as much
as the resampling it saved, 0.31 against 0.29 CPU s per pair; not kept.)
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from face_heads import refaced_phantom
from isyb.evaluate import face_distance, reid
from isyb.head.register import resample_to


def _transform(degrees: tuple[float, float, float], shift: tuple[float, float, float]):
    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    out[:3, 3] = shift
    return out


#: an off-grid rotation and shift, and one that pushes the frame past the scan's edge
TRANSFORMS = [_transform((3.0, -2.0, 4.0), (0.7, -1.3, 0.4)),
              _transform((-5.0, 1.0, 2.0), (1.1, 60.0, -9.3))]


@pytest.fixture(scope="module")
def heads() -> dict:
    return refaced_phantom(face_scale=0.6)


def _whole_frame(data: np.ndarray, affine: np.ndarray, to_template: np.ndarray,
                 frame: reid.FaceFrame) -> np.ndarray:
    step = frame.spacing_mm
    grid = np.diag([step, -step, step, 1.0])
    grid[:3, 3] = (frame.xs[0], frame.ys[0], frame.zs[0])
    return resample_to(np.asarray(data, dtype=np.float32), affine,
                       (frame.xs.size, frame.ys.size, frame.zs.size), grid,
                       np.linalg.inv(to_template), order=1, cval=0.0)


@pytest.mark.parametrize("which", [0, 1])
def test_points_are_the_whole_frames_values(heads, which) -> None:
    subject, frame, to_template = heads["subject"], heads["frame"], TRANSFORMS[which]
    matrix, offset = reid.frame_mapping(subject.affine, to_template, frame)
    index = np.indices((frame.xs.size, frame.ys.size, frame.zs.size)).reshape(3, -1)
    for data in (subject.data, heads["mask"]):
        whole = _whole_frame(data, subject.affine, to_template, frame)
        points = reid.sample_frame_points(data, matrix, offset, index)
        assert points.dtype == np.float32
        assert points.tobytes() == whole.ravel().tobytes()
    assert (whole == 0).any() and (whole == 1).any()  # the mask: both sides in the frame


@pytest.mark.parametrize("which", [0, 1])
def test_mask_at_the_skin_is_the_whole_frames(heads, which) -> None:
    subject, frame, mask = heads["subject"], heads["frame"], heads["mask"]
    to_template = TRANSFORMS[which]
    whole = _whole_frame(mask, subject.affine, to_template, frame)
    for scan in (subject, heads["refaced"]):
        depth = reid.face_descriptor(scan, to_template, frame)
        finite = np.isfinite(depth)
        j = np.clip(np.rint((frame.ys[0] - np.where(finite, depth, frame.ys[0]))
                            / frame.spacing_mm), 0, frame.ys.size - 1).astype(int)
        rows, cols = np.indices(depth.shape)
        plain = finite & (whole[cols, j, rows] > 0.5)
        fast = face_distance._mask_at_depth(mask, subject.affine, to_template, frame, depth)
        np.testing.assert_array_equal(fast, plain)
        assert plain.any() or which == 1
