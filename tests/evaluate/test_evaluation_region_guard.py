"""``evaluation_region`` with the subject's guard passed in (``isyb study`` has it from
``subject_masks``) is the region it computes itself."""

from __future__ import annotations

import numpy as np

from isyb.evaluate.anonymization import evaluation_region
from isyb.head.morphology import brain_guard
from isyb.synthetic.phantom import Label, make_phantom


def test_a_given_guard_gives_the_same_region() -> None:
    phantom = make_phantom(voxel_size=2.0, seed=2)
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    zooms = np.sqrt((phantom.affine[:3, :3] ** 2).sum(axis=0))
    own = evaluation_region(brain, phantom.affine, guard_mm=10.0)
    given = evaluation_region(brain, phantom.affine, guard_mm=10.0,
                              guard=brain_guard(brain, zooms, 10.0))
    assert own.sum() > 1000
    np.testing.assert_array_equal(given, own)
