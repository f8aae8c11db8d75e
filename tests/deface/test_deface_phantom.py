"""Face masking on the synthetic phantom, whose face and brain voxels are known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.engine import DefaceOptions, align, deface_volume
from isyb.head.morphology import dilate_mm
from isyb.head.register import dice
from isyb.io import volume_from_image
from isyb.synthetic.phantom import Label, make_phantom, to_nifti
from isyb.templates.face import derive_face_rule, face_region

VOXEL_MM = 1.5


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(voxel_size=VOXEL_MM, seed=3)


@pytest.fixture(scope="module")
def case(phantom, default_template):
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    return volume, align(volume, default_template)


def _fraction_changed(changed: np.ndarray, where: np.ndarray) -> float:
    return float(changed[where].mean())


@pytest.mark.parametrize("method", ["blur", "remove", "noise"])
def test_brain_untouched_and_face_features_gone(phantom, case, default_template,
                                                method: str) -> None:
    volume, alignment = case
    result = deface_volume(volume, default_template, DefaceOptions(method=method),
                           alignment=alignment)
    changed = result.data != volume.data
    labels = phantom.labels
    assert changed[np.isin(labels, [Label.GM, Label.WM])].sum() == 0
    assert changed[result.guard].sum() == 0
    assert _fraction_changed(changed, labels == Label.NOSE) > 0.95
    assert _fraction_changed(changed, labels == Label.LIPS) > 0.95
    eyelid = (labels == Label.SKIN) & ndimage.binary_dilation(labels == Label.EYES,
                                                             iterations=2)
    assert _fraction_changed(changed, eyelid) > 0.9
    assert not result.report["little_or_no_face"]


def test_ears_and_neck_are_options(phantom, case, default_template) -> None:
    volume, alignment = case
    labels = phantom.labels
    plain = deface_volume(volume, default_template, DefaceOptions(method="remove"),
                          alignment=alignment)
    ears = deface_volume(volume, default_template, DefaceOptions(method="remove", ears=True),
                         alignment=alignment)
    neck = deface_volume(volume, default_template, DefaceOptions(method="remove", neck=True),
                         alignment=alignment)
    ear_voxels = labels == Label.EARS
    assert plain.allowed[ear_voxels].mean() < 0.05
    assert ears.allowed[ear_voxels].mean() > 0.5
    assert not (ears.allowed & np.isin(labels, [Label.GM, Label.WM])).any()
    # since issue 20 the chin plane lies below the lower edge of the mandible, here below
    # the FOV (15 mm of neck), so the neck option adds nothing on this phantom
    assert neck.region.sum() >= plain.region.sum()
    assert not (neck.allowed & ~neck.region).any()


@pytest.fixture(scope="module")
def reference(case, default_template):
    """The RAS phantom defaced with the default options (once for the three storages)."""
    volume, alignment = case
    return deface_volume(volume, default_template, DefaceOptions(), alignment=alignment)


@pytest.mark.parametrize("storage", ["LIA", "LSA", "shift"])
def test_orientation_and_origin_do_not_change_the_masked_region(phantom, case, reference,
                                                                default_template,
                                                                storage: str) -> None:
    volume, _ = case
    if storage == "shift":
        image = to_nifti(phantom, "RAS", origin_shift_mm=(50.0, -50.0, 50.0), dtype=np.float32)
    else:
        image = to_nifti(phantom, storage, dtype=np.float32)
    other = volume_from_image(image)
    assert np.array_equal(other.data, volume.data)  # same RAS grid, other storage
    result = deface_volume(other, default_template, DefaceOptions())
    assert dice(result.allowed, reference.allowed) >= 0.95


def test_face_rule_extends_beyond_the_template_fov() -> None:
    full = make_phantom(voxel_size=2.0)
    # a template whose FOV ends just in front of the brain, before the nose
    cut = make_phantom(voxel_size=2.0, fov_mm=(200.0, 176.0, 256.0),
                       fov_center_mm=(0.0, -10.0, -12.0))
    assert not (cut.labels == Label.NOSE).any()
    assert cut.brain_mask.sum() == full.brain_mask.sum()
    rule = derive_face_rule(cut.brain_mask, cut.affine)
    region = face_region(rule, full.labels.shape, full.affine)
    assert region[full.labels == Label.NOSE].mean() > 0.99
    assert region[full.labels == Label.LIPS].mean() > 0.99
    # the backs of the eyeballs lie behind the face plane; their fronts are inside
    assert region[full.labels == Label.EYES].mean() > 0.8
    # the rule cuts into the brain by design (the brain guard removes that part);
    # the top and back of the head and the ears stay outside it
    ijk = np.linalg.inv(full.affine)
    for name in ("vertex", "opisthocranion", "ear_left", "ear_right"):
        index = np.rint(ijk[:3, :3] @ full.landmarks[name] + ijk[:3, 3]).astype(int)
        assert not region[tuple(index)], name


def test_guard_dilation_matches_brute_force() -> None:
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[10:14, 12:15, 9:20] = True
    zooms = np.array([1.0, 1.5, 2.0])
    guard = dilate_mm(mask, zooms, 5.0)
    grid = np.indices(mask.shape).reshape(3, -1).T * zooms
    points = np.argwhere(mask) * zooms
    nearest = np.min(np.linalg.norm(grid[:, None, :] - points[None, :, :], axis=2), axis=1)
    assert np.array_equal(guard.ravel(), nearest <= 5.0)


def test_a_face_cut_off_from_the_head_is_still_obscured(phantom, case, default_template) -> None:
    """A dark gap between face and head must not leave the face untouched (fail open)."""
    volume, alignment = case
    data = volume.data.copy()
    labels = phantom.labels
    face = np.isin(labels, [Label.NOSE, Label.LIPS])
    gap = ndimage.binary_dilation(face, iterations=2) & ~face & (labels != Label.BACKGROUND)
    data[gap] = 0.0
    from isyb.io import Volume

    cut = Volume(data, volume.affine, volume.source)
    result = deface_volume(cut, default_template, DefaceOptions(method="blur"),
                           alignment=alignment)
    assert (result.data != data)[labels == Label.NOSE].mean() > 0.95
