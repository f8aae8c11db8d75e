"""The guard's cost in the open (issue 20 item 3): the face skin the brain guard keeps."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.checked import deface_checked
from isyb.deface.engine import DefaceOptions, align
from isyb.io import volume_from_image
from isyb.synthetic.phantom import make_phantom, to_nifti


@pytest.fixture(scope="module")
def case(default_template):
    phantom = make_phantom(voxel_size=2.0, seed=3)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    return phantom, volume, align(volume, default_template, brain=phantom.brain_mask)


def test_face_skin_kept_by_the_guard_shrinks_with_the_margin(case, default_template) -> None:
    phantom, volume, alignment = case
    to_brain = ndimage.distance_transform_edt(~phantom.brain_mask, sampling=volume.zooms)
    shares = []
    # the phantom's scalp is thicker than a real brow: its face skin is > 10 mm from the brain
    for guard_mm in (20.0, 14.0, 0.0):
        checked = deface_checked(volume, default_template, DefaceOptions(guard_mm=guard_mm),
                                 alignment=alignment)
        report, result = checked.report, checked.defacing
        kept, reached = report.face_surface_voxels_in_guard, report.face_surface_voxels
        share = report.face_skin_in_guard_fraction
        assert share == pytest.approx(kept / (kept + reached), abs=1e-4)
        assert report.to_json()["face_skin_in_guard_fraction"] == share
        # the skin the guard keeps lies within the margin of the (known) brain, unchanged
        skin_in_guard = result.skin & result.guard & ~result.region
        assert (to_brain[skin_in_guard] <= guard_mm + 1e-6).all()
        assert not (result.data != volume.data)[skin_in_guard].any()
        shares.append(share)
    assert shares[0] > shares[1] > shares[2] == 0.0  # measured 0.223, 0.030, 0
