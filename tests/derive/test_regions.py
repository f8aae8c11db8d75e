"""GMV per ``aparc+aseg`` region (:mod:`isyb.derive.regions`) on a synthetic atlas whose
region volumes are known: a head of nested spheres (cortical shell split into two
hemispheres, white matter, a deep-GM ball) above a cerebellar slab, carried to the subject
by a known displacement."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.derive.cortex import atlas_classes, cortical_segmentation, subject_classes
from isyb.derive.morphometry import CSF, GM, WM, MorphometryError, gm_volumes
from isyb.derive.regions import regional_gm_volumes, subject_regions

NAMES = {2: "Left-Cerebral-White-Matter", 8: "Left-Cerebellum-Cortex", 10: "Left-Thalamus",
         16: "Brain-Stem", 1001: "ctx-lh-bankssts", 1000: "ctx-lh-unknown",
         2001: "ctx-rh-bankssts"}
ZOOMS = (1.0, 1.0, 1.5)
AFFINE = np.diag([*ZOOMS, 1.0])


def _atlas(shape=(40, 40, 40)) -> np.ndarray:
    """The synthetic ``aparc+aseg`` (labels of :data:`NAMES`), voxel sizes :data:`ZOOMS`."""
    ijk = np.indices(shape).astype(float)
    centre = np.array([19.5, 19.5, 22.0])
    r = np.sqrt(sum(((ijk[a] - centre[a]) * ZOOMS[a]) ** 2 for a in range(3)))
    atlas = np.zeros(shape, dtype=np.uint16)
    atlas[r < 15] = 1001
    atlas[(r < 15) & (ijk[0] >= 20)] = 2001
    atlas[r < 11] = 2
    atlas[r < 5] = 10
    atlas[..., :3] = 8
    return atlas


def _subject(atlas: np.ndarray) -> np.ndarray:
    """CSF/GM/WM labels whose GM is exactly the atlas's GM regions."""
    labels = np.full(atlas.shape, CSF, dtype=np.uint8)
    labels[np.isin(atlas, (8, 10, 1001, 2001))] = GM
    labels[atlas == 2] = WM
    return labels


def _regions(labels: np.ndarray, atlas: np.ndarray,
             shift_mm=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """The subject's classes and regions, each atlas voxel carried to the subject at its
    world point + ``shift_mm``."""
    points = np.argwhere(np.ones(atlas.shape, dtype=bool)) @ AFFINE[:3, :3].T + shift_mm
    classes = subject_classes(labels, AFFINE, None, None, classes=atlas_classes(atlas),
                              points=points)
    return classes, subject_regions(labels, classes, AFFINE, points, atlas, NAMES)


def test_each_region_holds_exactly_its_grey_matter_when_the_atlas_fits() -> None:
    atlas = _atlas()
    labels = _subject(atlas)
    table = regional_gm_volumes(labels, _regions(labels, atlas)[1], ZOOMS, NAMES)
    voxel_ml = np.prod(ZOOMS) / 1000.0
    truth = {index: float((atlas == index).sum()) * voxel_ml for index in (1001, 2001, 10, 8)}
    assert min(truth.values()) > 0.5  # every region is there, in ml
    found = dict(zip(table["index"], table["gmv_ml"], strict=True))
    for index, ml in truth.items():
        assert found[index] == pytest.approx(ml, rel=1e-12)
    # every GM region of the lookup table is a row (the brainstem with 0 ml), "unknown" and
    # the WM are not
    assert list(table["index"]) == [1001, 2001, 10, 8, 16]
    assert list(table["structure"]) == ["cortex", "cortex", "subcortical", "hindbrain",
                                        "hindbrain"]
    assert found[16] == 0.0
    assert table.loc[table["index"] == 1001, "region"].item() == "ctx-lh-bankssts"
    assert table["gmv_ml"].sum() == pytest.approx(gm_volumes(labels, ZOOMS)["total"])


@pytest.mark.parametrize("shift_mm", [(0.0, 2.0, 2.0), (3.0, 0.0, 3.0)])
def test_a_misregistered_atlas_moves_borders_but_keeps_all_grey_matter(shift_mm) -> None:
    """The atlas lands 2.8-4.2 mm off: the GM still all goes to regions, the GM DiReCT
    measures (the cortex class) to cortical regions. Off along y and z the two hemispheres
    keep their volumes within 5 %; off to the right, the left hemisphere takes the cortex
    the border crossed."""
    atlas = _atlas()
    labels = _subject(atlas)
    classes, regions = _regions(labels, atlas, shift_mm=shift_mm)
    assert np.all(regions[labels == GM] > 0) and np.all(regions[labels != GM] == 0)
    table = regional_gm_volumes(labels, regions, ZOOMS, NAMES).set_index("index")
    assert table["gmv_ml"].sum() == pytest.approx(gm_volumes(labels, ZOOMS)["total"])
    assert table.loc[[1001, 2001], "gmv_ml"].sum() == pytest.approx(
        gm_volumes(cortical_segmentation(labels, classes), ZOOMS)["total"])
    truth = float((atlas == 1001).sum()) * np.prod(ZOOMS) / 1000.0  # = right hemisphere's
    left, right = table.loc[1001, "gmv_ml"], table.loc[2001, "gmv_ml"]
    if shift_mm[0] == 0:
        assert left == pytest.approx(truth, rel=0.05) and right == pytest.approx(left)
    else:
        assert left > 1.2 * truth and right < 0.8 * truth


def test_a_grey_matter_class_without_atlas_regions_is_refused() -> None:
    atlas = _atlas()
    labels = _subject(atlas)
    points = np.argwhere(np.ones(atlas.shape, dtype=bool)) @ AFFINE[:3, :3].T
    classes = subject_classes(labels, AFFINE, None, None, classes=atlas_classes(atlas),
                              points=points)
    no_thalamus = np.where(atlas == 10, 2, atlas)
    with pytest.raises(MorphometryError, match="no subcortical region"):
        subject_regions(labels, classes, AFFINE, points, no_thalamus, NAMES)
    with pytest.raises(MorphometryError, match="shape"):
        subject_regions(labels[:3], classes, AFFINE, points, atlas, NAMES)
