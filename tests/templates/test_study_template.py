"""The study-specific template: built from the cohort's own heads with ANTsPy.

Phantom tests: three phantom heads of different shapes, stored in different
voxel orders with shifted origins, give a template whose width, length and
height (skin bounding box) are the mean of theirs within a few mm. Builds are
reproducible with the same seed, and ``n_subjects`` heads are drawn. Real-data
tests: a template of three real heads has a brain that deepbet finds, a face
that the stock face detector finds, and goes through the same preparation as
any other template.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.errors import IsybError
from isyb.head.morphology import head_mask, skin_threshold
from isyb.io import load_volume
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.templates.build import build_study_template, select_subjects

#: (length, width, height, voxel order, origin shift in mm) of the phantom cohort.
PHANTOMS = (
    (175.0, 140.0, 210.0, "RAS", (0.0, 0.0, 0.0)),
    (190.0, 150.0, 225.0, "LIA", (35.0, -20.0, 50.0)),
    (205.0, 160.0, 240.0, "LPS", (-40.0, 60.0, -30.0)),
)
#: Full-face real heads (see tests/test_deface_real.py).
REAL_HEADS = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz")
#: How far (mm) the template's head dimensions may be from the cohort's mean.
DIMENSION_TOLERANCE_MM = 5.0


def head_dimensions(path: Path) -> np.ndarray:
    """Left-right width, front-back length and vertex-to-chin height (mm) of a head image.

    Width and length are the skin bounding box (ears and nose included).
    Height runs from the top of the head to the lowest head voxel in the front
    quarter of the head (the chin), since the neck is cut by the field of view.
    """
    volume = load_volume(path)
    head = head_mask(volume.data, skin_threshold(volume.data))
    idx = np.argwhere(head)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    front = idx[idx[:, 1] >= hi[1] - 0.25 * (hi[1] - lo[1])]
    extent = np.array([hi[0] - lo[0], hi[1] - lo[1], hi[2] - front[:, 2].min()]) + 1
    return extent * volume.zooms


@pytest.fixture(scope="module")
def phantom_heads(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("phantom_cohort")
    paths = []
    for number, (length, width, height, order, shift) in enumerate(PHANTOMS):
        phantom = make_phantom(voxel_size=2.0, length=length, width=width, height=height,
                               fov_mm=(220.0, 260.0, 280.0), fov_center_mm=(0.0, 8.0, -20.0),
                               seed=number)
        path = folder / f"sub-{number + 1:02d}_T1w.nii.gz"
        nib.save(to_nifti(phantom, order, shift), path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def phantom_template(phantom_heads: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom_template") / "tpl-study_T1w.nii.gz"
    return build_study_template(phantom_heads, out, iterations=2)


@pytest.mark.slow
def test_template_has_the_mean_head_dimensions(phantom_heads: list[Path],
                                               phantom_template: Path) -> None:
    subjects = np.array([head_dimensions(path) for path in phantom_heads])
    template = head_dimensions(phantom_template)
    # The phantoms' heights are what built them (the height runs vertex to chin).
    heights = [height for _, _, height, _, _ in PHANTOMS]
    assert np.allclose(subjects[:, 2], heights, atol=DIMENSION_TOLERANCE_MM)
    assert np.all(np.abs(template - subjects.mean(axis=0)) <= DIMENSION_TOLERANCE_MM), (
        f"template {template} vs mean {subjects.mean(axis=0)}")


@pytest.mark.slow
def test_template_is_a_ras_float_nifti(phantom_template: Path) -> None:
    image = nib.load(phantom_template)
    assert image.get_data_dtype() == np.float32
    assert nib.aff2axcodes(image.affine) == ("R", "A", "S")
    assert np.allclose(image.header.get_zooms(), 2.0)
    assert np.allclose(image.get_sform(), image.affine)
    assert not list(phantom_template.parent.glob(".*part*"))  # written atomically


@pytest.mark.slow
def test_same_seed_same_template_and_n_subjects(phantom_heads: list[Path], tmp_path: Path) -> None:
    messages: list[str] = []
    kwargs = {"n_subjects": 2, "iterations": 1, "resolution_mm": 4.0, "seed": 3}
    first = build_study_template(phantom_heads, tmp_path / "a.nii.gz", progress=messages.append,
                                 **kwargs)
    second = build_study_template(list(reversed(phantom_heads)), tmp_path / "b.nii.gz", **kwargs)
    assert np.array_equal(np.asarray(nib.load(first).dataobj),
                          np.asarray(nib.load(second).dataobj))
    assert messages[0].startswith("study template: 2 heads at 4 mm")
    chosen = select_subjects(phantom_heads, 2, 3)
    aligned = [m for m in messages if "pre-aligned" in m]
    assert len(aligned) == 1 and chosen[1].name in aligned[0]


def test_select_subjects_is_reproducible(tmp_path: Path) -> None:
    paths = [tmp_path / f"sub-{i:02d}_T1w.nii.gz" for i in range(10)]
    picked = select_subjects(paths, 4, seed=7)
    assert picked == select_subjects(list(reversed(paths)), 4, seed=7)  # order-free
    assert len(picked) == 4 and picked == sorted(picked, key=str)
    assert set(picked) <= set(paths)
    assert any(select_subjects(paths, 4, seed=s) != picked for s in range(8))
    assert select_subjects(paths, None, seed=7) == sorted(paths, key=str)
    assert select_subjects(paths, 50, seed=7) == sorted(paths, key=str)
    with pytest.raises(IsybError, match="at least 2"):
        select_subjects(paths, 1, seed=7)
    with pytest.raises(IsybError, match="at least 2"):
        select_subjects(paths[:1], None, seed=7)


def test_bad_settings_are_refused(phantom_heads: list[Path], tmp_path: Path) -> None:
    with pytest.raises(IsybError, match="iterations"):
        build_study_template(phantom_heads, tmp_path / "t.nii.gz", iterations=0)
    with pytest.raises(IsybError, match="resolution_mm"):
        build_study_template(phantom_heads, tmp_path / "t.nii.gz", resolution_mm=0.0)
    with pytest.raises(IsybError, match="no such file"):
        build_study_template([*phantom_heads, tmp_path / "missing.nii.gz"], tmp_path / "t.nii.gz")
    assert not (tmp_path / "t.nii.gz").exists()


@pytest.mark.slow
@pytest.mark.realdata
def test_real_heads_template_is_prepared_like_any_other(data_root: Path, isyb_home: Path,
                                                        tmp_path: Path) -> None:
    from isyb.head.brain import check_brain_mask
    from isyb.templates.registry import prepare
    from isyb.viz.faces import face_detected

    heads = [data_root / "heads" / name for name in REAL_HEADS]
    missing = [p.name for p in heads if not p.is_file()]
    if missing:
        pytest.skip(f"real heads {missing} not in the test data")
    out = build_study_template(heads, tmp_path / "tpl-study_T1w.nii.gz", iterations=1)
    volume = load_volume(out)
    assert face_detected(volume.data, volume.zooms)["detected"], "no face on the average head"
    # prepare() derives the brain mask with deepbet and checks it (check_brain_mask).
    template = prepare("studytest", out, None, source="study template of 3 real heads")
    brain = load_volume(template.brain_mask).data > 0
    assert 1000.0 < check_brain_mask(brain, volume.zooms) < 2000.0
    assert template.info["face_tissue_ml"] > 50.0
    assert isyb_home in template.head.parents


def test_fov_weight_feathers_the_edges_only() -> None:
    from isyb.templates.build import FEATHER_MM, _fov_weight

    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    weight = _fov_weight((40, 30, 20), affine)
    assert weight.shape == (40, 30, 20)
    assert weight[20, 15, 10] == 1.0
    assert 0.0 < weight[0, 15, 10] < 0.2 and weight[0, 0, 0] < weight[0, 15, 10]
    inner = int(np.ceil(FEATHER_MM / 2.0))
    assert np.all(weight[inner:-inner, inner:-inner, inner:-inner] == 1.0)
    assert np.allclose(weight, weight[::-1, ::-1, ::-1])
