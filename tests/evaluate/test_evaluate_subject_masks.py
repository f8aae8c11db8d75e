"""evaluate_defacing with the subject masks the defacing already computed: the same record."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.deface.engine import DefaceOptions, align, deface_volume, subject_masks
from isyb.evaluate.anonymization import evaluate_defacing
from isyb.io import Volume, volume_from_image
from isyb.synthetic.phantom import make_phantom, to_nifti


def test_subject_masks_give_the_same_record(default_template) -> None:
    phantom = make_phantom(voxel_size=3.0, seed=6)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    brain = phantom.brain_mask
    masks = subject_masks(volume, brain, 10.0)
    result = deface_volume(volume, default_template, DefaceOptions(),
                           alignment=align(volume, default_template, brain=brain), subject=masks)
    defaced = Volume(result.data, volume.affine, volume.source)
    computed = evaluate_defacing(volume, defaced, result.region, brain=brain, detect=False)
    reused = evaluate_defacing(volume, defaced, result.region, brain=brain, detect=False,
                               subject=masks)
    assert reused == computed
    assert computed["face_reference"]["voxels"] > 0 and computed["changed_voxels"] > 0
    with pytest.raises(ValueError, match="5 mm"):
        evaluate_defacing(volume, defaced, result.region, brain=brain, detect=False,
                          guard_mm=5.0, subject=masks)
