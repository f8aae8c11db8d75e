"""The template-independent face reference on the phantom, whose labels are known."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.deface.checked import deface_checked
from isyb.deface.engine import DefaceOptions, align
from isyb.head.face_reference import THIRDS, face_coverage, face_reference
from isyb.io import volume_from_image
from isyb.synthetic.phantom import Label, make_phantom, to_nifti


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(voxel_size=1.5, seed=3)


@pytest.fixture(scope="module")
def reference(phantom):
    return face_reference(phantom.head_mask, phantom.brain_mask, phantom.affine)


def _world_z(phantom, ijk: np.ndarray) -> np.ndarray:
    return ijk @ phantom.affine[2, :3] + phantom.affine[2, 3]


def _front_surface(labels: np.ndarray) -> dict[tuple[int, int], int]:
    """Column (i, k) -> index j of its most anterior head voxel, by a plain loop."""
    front = {}
    for i in range(labels.shape[0]):
        for k in range(labels.shape[2]):
            column = np.nonzero(labels[i, :, k])[0]
            if column.size:
                front[(i, k)] = int(column[-1])
    return front


def test_reference_is_the_front_of_the_face_from_brows_to_chin(phantom, reference) -> None:
    labels = phantom.labels
    front = _front_surface(labels)
    visible = {lab: [(i, j, k) for (i, k), j in front.items() if labels[i, j, k] == lab]
               for lab in (Label.NOSE, Label.LIPS, Label.EARS, Label.NECK)}
    for lab in (Label.NOSE, Label.LIPS):
        inside = np.mean([reference[v] > 0 for v in visible[lab]])
        assert inside > 0.97, (lab.name, inside)
    for lab in (Label.EARS, Label.NECK):
        assert not any(reference[v] for v in visible[lab]), lab.name
    # every reference voxel is a column's front voxel
    for i, j, k in np.argwhere(reference > 0):
        assert front[(i, k)] == j
    z = _world_z(phantom, np.argwhere(reference > 0))
    assert abs(z.min() - phantom.landmarks["menton"][2]) < 6.0  # lower edge of the mandible
    eyes = _world_z(phantom, np.argwhere(labels == Label.EYES))
    assert z.max() > eyes.max()  # the brows are in
    # thirds run top to bottom: eyes in the upper, the nose tip in the middle, lips low
    tops = [_world_z(phantom, np.argwhere(reference == v)).mean() for v in (1, 2, 3)]
    assert tops[0] > tops[1] > tops[2]
    lower_lip = [v for v in visible[Label.LIPS]
                 if _world_z(phantom, np.array(v)) < phantom.landmarks["stomion"][2] - 6]
    assert np.mean([reference[v] == 3 for v in lower_lip]) > 0.9


def test_coverage_fractions_on_known_masks(reference) -> None:
    face = reference > 0
    changed = np.zeros(reference.shape, dtype=bool)
    guard = np.zeros(reference.shape, dtype=bool)
    changed[reference == 3] = True  # the lower third changed
    guard[reference == 1] = True  # the upper third in the guard
    record = face_coverage(reference, changed, guard)
    n = [int((reference == v).sum()) for v in (1, 2, 3)]
    assert record["voxels"] == int(face.sum()) == sum(n)
    assert record["changed_fraction"] == pytest.approx(n[2] / sum(n), abs=1e-4)
    assert record["guard_fraction"] == pytest.approx(n[0] / sum(n), abs=1e-4)
    assert record["unreached_fraction"] == pytest.approx(n[1] / sum(n), abs=1e-4)
    thirds = record["thirds"]
    assert list(thirds) == list(THIRDS)
    assert thirds["upper"]["guard_fraction"] == 1.0
    assert thirds["middle"]["unreached_fraction"] == 1.0
    assert thirds["lower"]["changed_fraction"] == 1.0
    empty = face_coverage(np.zeros_like(reference), changed, guard)
    assert empty["voxels"] == 0 and empty["changed_fraction"] is None


def test_provenance_reports_the_reference_as_an_independent_count(phantom,
                                                                  default_template) -> None:
    """The provenance figures equal a count over the phantom's labels, made here by a loop."""
    volume = volume_from_image(to_nifti(phantom, "LIA", dtype=np.float32))
    checked = deface_checked(volume, default_template, DefaceOptions(method="blur"),
                             alignment=align(volume, default_template,
                                             brain=phantom.brain_mask))
    record = checked.report.to_json()["face_reference"]
    changed = checked.defacing.data != volume.data
    guard = checked.defacing.reference_guard
    labels = phantom.labels
    brain = np.argwhere(phantom.brain_mask) @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    y_cut = brain[:, 1].max() - 0.2 * np.ptp(brain[:, 1])
    pole = np.median(brain[brain[:, 1] >= brain[:, 1].max() - 5.0, 2])
    counts = {"changed": 0, "guard": 0, "unreached": 0}
    for (i, k), j in _front_surface(labels).items():
        x, y, z = phantom.affine[:3, :3] @ (i, j, k) + phantom.affine[:3, 3]
        if (y > y_cut and z <= pole and brain[:, 0].min() <= x <= brain[:, 0].max()
                and labels[i, j, k] != Label.EARS):
            key = "changed" if changed[i, j, k] else "guard" if guard[i, j, k] else "unreached"
            counts[key] += 1
    total = sum(counts.values())
    assert record["voxels"] == pytest.approx(total, rel=0.02)
    for key, count in counts.items():
        assert record[f"{key}_fraction"] == pytest.approx(count / total, abs=0.01), key
    assert record["thirds"]["lower"]["changed_fraction"] >= 0.9
    # the old figure keeps its own name, over the defacing's own region
    assert checked.report.face_surface_changed_fraction is not None


def test_face_coverage_is_the_whole_grids_indexing() -> None:
    """One pass over the grid (issue 13's scale pass) gives what indexing the whole grid per
    third gave, on C-ordered and on transposed (source-order) arrays."""
    from isyb.head.face_reference import THIRDS, _shares, face_coverage

    rng = np.random.default_rng(4)
    reference = np.where(rng.random((30, 26, 22)) < 0.1, rng.integers(1, 4, (30, 26, 22)), 0)
    reference = reference.astype(np.uint8)
    changed, guard = rng.random(reference.shape) < 0.5, rng.random(reference.shape) < 0.3
    for ref, ch, gd in ((reference, changed, guard),
                        (reference.T, changed.T, guard.T)):
        where = ref > 0
        plain = dict(_shares(ch[where], gd[where]))
        plain["thirds"] = {name: _shares(ch[ref == value], gd[ref == value])
                           for value, name in enumerate(THIRDS, start=1)}
        assert face_coverage(ref, ch, gd) == plain
