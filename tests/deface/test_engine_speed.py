"""The deface engine's per-subject work, done once and reused for every template (issue 13 item 6).

:func:`isyb.deface.engine.subject_masks` computes the head, the brain guard and
the face reference once per subject; each template's defacing only slices them.
Reuse must not change any output, and the guard it reads must be the exact
10 mm dilation of the brain wherever it decides something.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.engine import DefaceOptions, align, deface_volume, subject_masks
from isyb.head.face_reference import face_reference
from isyb.head.morphology import bounding_box, brain_guard, head_mask, skin_threshold
from isyb.io import volume_from_image
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.templates.face import face_region

VOXEL_MM = 2.0
GUARD_MM = 10.0


@pytest.fixture(scope="module")
def case(default_template):
    phantom = make_phantom(voxel_size=VOXEL_MM, seed=5)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    alignment = align(volume, default_template, brain=phantom.brain_mask)
    return volume, alignment, subject_masks(volume, alignment.brain, GUARD_MM)


def _arrays(result) -> dict[str, np.ndarray]:
    return {name: getattr(result, name) for name in
            ("data", "allowed", "region", "guard", "brain", "head", "skin", "reference")}


@pytest.mark.parametrize(("method", "region_mode"), [("blur", "template"), ("remove", "rule")])
def test_reused_subject_masks_give_the_same_defacing(case, default_template, method: str,
                                                     region_mode: str) -> None:
    volume, alignment, masks = case
    options = DefaceOptions(method=method, face_region=region_mode, guard_mm=GUARD_MM)
    fresh = deface_volume(volume, default_template, options, alignment=alignment)
    reused = deface_volume(volume, default_template, options, alignment=alignment,
                           subject=masks)
    for name, array in _arrays(fresh).items():
        assert np.array_equal(array, getattr(reused, name)), name
    where = fresh.reference > 0
    assert np.array_equal(fresh.reference_guard[where], reused.reference_guard[where])
    assert {k: v for k, v in fresh.report.items() if k != "timings_s"} == \
        {k: v for k, v in reused.report.items() if k != "timings_s"}
    assert fresh.report["timings_s"]["subject_s"] > 0
    assert reused.report["timings_s"]["subject_s"] == 0
    assert {"region_s", "obscure_s", "statistics_s"} <= set(reused.report["timings_s"])


def test_guard_is_the_exact_brain_dilation_on_the_face_region(case, default_template) -> None:
    """Ground truth: a distance transform over the whole grid, no box."""
    volume, alignment, masks = case
    result = deface_volume(volume, default_template, DefaceOptions(guard_mm=GUARD_MM),
                           alignment=alignment, subject=masks)
    distance = ndimage.distance_transform_edt(~alignment.brain, sampling=volume.zooms)
    truth = distance <= GUARD_MM
    assert np.array_equal(masks.guard, truth)
    to_template = alignment.registration.subject_to_template @ volume.affine
    full = face_region(default_template.rule, volume.shape, to_template)
    assert full.any() and (full & truth).any()  # the guard cuts into the face region here
    assert np.array_equal(result.region, full & ~truth)
    assert not (result.allowed & truth).any()


def test_reference_and_its_guard_do_not_depend_on_the_template_settings(case,
                                                                        default_template) -> None:
    volume, alignment, masks = case
    rule, own = (deface_volume(volume, default_template,
                               DefaceOptions(method="remove", face_region=mode),
                               alignment=alignment, subject=masks)
                 for mode in ("rule", "template"))
    assert np.array_equal(rule.reference, own.reference)
    # the same reference as isyb.evaluate's reference_coverage computes from the original
    head = head_mask(volume.data, skin_threshold(volume.data))
    expected = face_reference(head, alignment.brain, volume.affine)
    assert expected.any() and np.array_equal(rule.reference, expected)
    # its guard on the reference is the one computed in the reference's own box (before)
    near = bounding_box(expected > 0, np.ceil(GUARD_MM / volume.zooms).astype(int) + 1)
    boxed = np.zeros(volume.shape, dtype=bool)
    boxed[near] = brain_guard(alignment.brain[near], volume.zooms, GUARD_MM)
    where = expected > 0
    assert np.array_equal(rule.reference_guard[where], boxed[where])


def test_masks_of_another_guard_margin_are_refused(case, default_template) -> None:
    volume, alignment, masks = case
    with pytest.raises(ValueError, match="guard"):
        deface_volume(volume, default_template, DefaceOptions(guard_mm=5.0),
                      alignment=alignment, subject=masks)
