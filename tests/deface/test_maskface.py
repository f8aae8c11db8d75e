"""``maskface`` (NRG mask_face's normalized anterior filtering) on the phantom, whose face is known.

The array tests run :func:`isyb.deface.maskface.normfilter` on the phantom's face
box at 2 mm (about a second each); one slow test runs the whole defacing with
registration and the brain guard.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.deface.engine import METHODS, DefaceOptions, align
from isyb.deface.maskface import box_blur_thin, grid_settings, normfilter, tetrahedra
from isyb.deface.maskface_roi import (
    CAPIIO_TO,
    FACE_LINES,
    FACE_ORIGIN,
    GUARD_NOTE,
    MNI152LIN_AFFINE,
    MNI152LIN_SHAPE,
    capiio_to_template,
    fsl_voxel_to_scaled,
    landmark_box,
    roi_margin_mm,
)
from isyb.io import load_volume, volume_from_image
from isyb.synthetic.phantom import Label, make_phantom, to_nifti

VOXEL_MM = 2.0
#: The phantom's face box at 2 mm (voxels): in front of the ears, above the neck.
FACE_BOX = (slice(16, 84), slice(60, 116), slice(14, 84))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(voxel_size=VOXEL_MM, seed=3)


@pytest.fixture(scope="module")
def masked(phantom):
    box = phantom.image[FACE_BOX].astype(np.float32)
    head = phantom.labels[FACE_BOX] != Label.BACKGROUND
    return box, head, normfilter(box, head, np.full(3, VOXEL_MM), 1, 1, seed=7)


def _skin_heights(image: np.ndarray, threshold: float = 50.0) -> tuple[np.ndarray, np.ndarray]:
    """Index along y (anterior, vertical) of the first voxel above ``threshold`` from the front."""
    above = image > threshold
    hit = above.any(axis=1)
    heights = image.shape[1] - 1 - np.argmax(above[:, ::-1, :], axis=1)
    return heights.astype(float), hit


def test_surface_detail_gone(phantom, masked) -> None:
    """Fine detail in the layer is blurred away; the nose and lips lose most of their relief.

    Image detail: the mean absolute Laplacian of Gaussian (sigma one voxel) over
    the layer falls under 40 % (measured 30 %). Surface detail: at the nose
    and lips, the skin height's deviation from itself smoothed at 4 mm falls
    under 70 % (measured 57 %); coarser shape follows the 15 mm grid, as in
    mask_face.
    """
    box, _, result = masked
    labels = phantom.labels[FACE_BOX]

    def detail(image: np.ndarray) -> float:
        return float(np.abs(ndimage.gaussian_laplace(image, 1.0))[result.layer].mean())

    assert detail(result.data) < 0.4 * detail(box)
    before, hit = _skin_heights(box)
    after, _ = _skin_heights(result.data)
    features = np.isin(labels, [Label.NOSE, Label.LIPS]).any(axis=1) & hit

    def relief(heights: np.ndarray) -> float:
        return float(np.abs(heights - ndimage.gaussian_filter(heights, 2.0 / VOXEL_MM))[features]
                     .mean())

    assert relief(after) < 0.7 * relief(before)
    assert (result.data != box)[labels == Label.NOSE].mean() > 0.8
    assert (result.data != box)[labels == Label.LIPS].mean() > 0.9


def test_head_shape_kept(masked) -> None:
    """The face outline moves by about a voxel on average and the face keeps its place and size."""
    box, _, result = masked
    before, hit = _skin_heights(box)
    after, hit_after = _skin_heights(result.data)
    both = hit & hit_after
    assert both.sum() > 0.9 * hit.sum()
    distance_mm = np.abs(after - before)[both] * VOXEL_MM
    assert np.median(distance_mm) <= VOXEL_MM
    assert np.mean(distance_mm) < 4.0


def test_nothing_outside_the_layer_changes(masked) -> None:
    """Changes only in the layer, which stays near the skin (±8 mm, jitter, inflation)."""
    box, head, result = masked
    changed = result.data != box
    assert changed.any()
    assert not (changed & ~result.layer).any()
    skin_distance = ndimage.distance_transform_edt(head) * VOXEL_MM
    air_distance = ndimage.distance_transform_edt(~head) * VOXEL_MM
    _, _, h = grid_settings(np.full(3, VOXEL_MM))
    reach = 2 * h * VOXEL_MM + 4 * np.sqrt(3) * VOXEL_MM + VOXEL_MM
    assert skin_distance[result.layer].max() <= reach
    assert air_distance[result.layer].max() <= reach
    deep = skin_distance > reach
    assert deep.any() and not changed[deep].any()


def test_deterministic_with_the_seed(masked) -> None:
    box, head, result = masked
    again = normfilter(box, head, np.full(3, VOXEL_MM), 1, 1, seed=7)
    other = normfilter(box, head, np.full(3, VOXEL_MM), 1, 1, seed=8)
    assert np.array_equal(again.data, result.data)
    assert not np.array_equal(other.data, result.data)
    assert result.record["seed"] == 7
    assert result.record["jitter_voxels"] == [-4.0, 4.0]
    assert result.record["layer_half_voxels"] == 4  # round(8 mm / 2 mm)
    assert result.record["grid_step_voxels"] == [8, 8]  # round(15 mm / 2 mm)


def test_orientation_does_not_matter(masked) -> None:
    """The face looking down the vertical axis (flipped storage) gives the flipped result."""
    box, head, result = masked
    flipped = normfilter(box[:, ::-1], head[:, ::-1], np.full(3, VOXEL_MM), 1, -1, seed=7)
    assert np.array_equal(flipped.data[:, ::-1], result.data)


def test_tetrahedra_tile_a_cell() -> None:
    """The six tetrahedra of a unit cell of height 1 have volumes summing to the cell's."""
    cells = np.array([[0, 0]])
    tets = tetrahedra(cells, 2)
    lower = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 1, 0]], dtype=float)
    upper = lower + np.array([0.0, 0.0, 1.0])
    points = np.where((tets >= 0)[..., None], lower[np.maximum(tets, 0)],
                      upper[np.maximum(-1 - tets, 0)])
    volumes = np.abs(np.linalg.det(points[:, 1:] - points[:, :1])) / 6
    assert len(tets) == 6
    assert volumes.sum() == pytest.approx(1.0)
    assert (volumes > 0).all()


def test_box_blur_of_a_point() -> None:
    """blur3_thin's outer layers: half-widths ceil(0.1 n) in plane, max(2, ceil(h/2)) across."""
    h = 8
    box = np.zeros((40, 30, 2 * h + 1), dtype=np.float32)
    box[20, 15, 12] = 1.0
    out = box_blur_thin(box, np.ones_like(box), h)
    support = np.argwhere(out > 1e-9)
    assert support.min(axis=0).tolist() == [16, 12, 8]  # fx = 4, fy = 3, fz = 4
    assert support.max(axis=0).tolist() == [24, 18, 16]
    assert out.sum() == pytest.approx(1.0, rel=1e-4)


def test_mni_face_box_from_capiio(data_root) -> None:
    """On the MNI152 grid itself the landmarks give mask_face's face box: face in, brain out."""
    path = data_root / "templates" / "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    volume = load_volume(path)

    class Named:
        name = "MNI152NLin6Asym"
        head = path

    capiio_to_mm, source = capiio_to_template(Named)  # type: ignore[arg-type]
    face = landmark_box(np.linalg.inv(volume.affine) @ capiio_to_mm, volume.shape,
                        volume.zooms, source)
    assert (face.vertical, face.outward) == (1, 1)
    assert face.hi[1] == volume.shape[1] - 1
    lo_mm = volume.affine @ np.array([*face.lo, 1.0])
    hi_mm = volume.affine @ np.array([*face.hi, 1.0])
    # MNI mm: from about 7 mm in front of the anterior commissure to the front edge,
    # from the bottom of the image to about 17 mm above the AC, about 147 mm wide
    assert lo_mm[2] == pytest.approx(-72.0)
    assert 0 < lo_mm[1] < 20
    assert 10 < hi_mm[2] < 30
    assert lo_mm[0] < -60 and hi_mm[0] > 60
    nose_tip = volume.data[:, :, 60:80].max(axis=2) > 0.3 * volume.data.max()
    front = np.argwhere(nose_tip)[:, 1].max()
    assert face.lo[1] < front <= face.hi[1]


def test_face_box_margin_rounds_like_matlab() -> None:
    """mask_surf_auto.m enlarges the box by round(6 * pixdim) voxels, MATLAB's round: 5 voxels
    at 0.75 mm (numpy's half-to-even would give 4), 6 at 1 mm, 8 at 1.25 mm."""
    shift = np.eye(4)
    shift[:3, 3] = 40.0  # every landmark line well inside a 300^3 grid, except where clipped
    bare = landmark_box(shift, (300, 300, 300), np.full(3, 0.01), "test")
    for voxel, expected in ((0.75, 5), (1.0, 6), (1.25, 8)):
        face = landmark_box(shift, (300, 300, 300), np.full(3, voxel), "test")
        assert bare.lo[0] - face.lo[0] == expected
        assert face.hi[0] - bare.hi[0] == expected


def test_mask_face_enlarges_its_roi_by_round_6_pixdim_voxels() -> None:
    """mask_surf_auto.m: ``nm = round(6 * pixdim)`` voxels, so ``round(6 p) * p`` mm: 6 mm on
    1 mm heads, and not 6 mm at other voxel sizes (MATLAB rounds halves up)."""
    assert roi_margin_mm(1.0) == 6.0
    assert roi_margin_mm(0.9) == pytest.approx(4.5)
    assert roi_margin_mm(1.25) == pytest.approx(10.0)  # round(7.5) = 8 voxels
    assert roi_margin_mm(2.0) == 24.0
    assert roi_margin_mm(3.0) == 54.0


def test_fsl_scaled_voxels() -> None:
    radiological = fsl_voxel_to_scaled(MNI152LIN_SHAPE, MNI152LIN_AFFINE)
    assert np.allclose(radiological, np.eye(4))
    neurological = fsl_voxel_to_scaled((10, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert np.allclose(neurological @ [0, 0, 0, 1], [18, 0, 0, 1])
    assert np.allclose(neurological @ [9, 1, 1, 1], [0, 2, 2, 1])


def test_constants_match_mask_face_files(data_root) -> None:
    folder = data_root / "transforms"
    if not (folder / "mask_face" / "face_atl.lst").is_file():
        pytest.skip(f"{folder}/mask_face is missing")
    points = np.loadtxt(folder / "mask_face" / "face_atl.lst")
    assert points.shape == (61, 3)
    assert np.allclose(points[0], FACE_ORIGIN)
    for line, (first, last) in enumerate(FACE_LINES):
        assert np.allclose(points[1 + 20 * line], first)
        assert np.allclose(points[20 * (line + 1)], last)
    for name, stem in (("MNI152", "mask_face/CAPIIO_to_mni152"), ("CN200", "CAPIIO_to_CN200"),
                       ("Chinese2020", "CAPIIO_to_CN2020")):
        assert np.allclose(np.loadtxt(folder / f"{stem}.mat"), CAPIIO_TO[name])


def test_registered_everywhere() -> None:
    from isyb.cli import build_parser

    assert "maskface" in METHODS
    assert DefaceOptions(method="maskface").method == "maskface"
    parser = build_parser()
    assert parser.parse_args(["deface", "in.nii.gz", "out.nii.gz", "--method",
                              "maskface"]).method == "maskface"
    assert parser.parse_args(["study", "bids", "out", "--templates", "a,b", "--method",
                              "maskface"]).method == "maskface"


@pytest.mark.slow
def test_deface_phantom_with_brain_guard(phantom, default_template) -> None:
    """The whole defacing: registration, isyb's face region (no CAPIIO matrix), brain guard."""
    from isyb.deface.checked import deface_checked

    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    alignment = align(volume, default_template, brain=phantom.brain_mask.astype(bool))
    checked = deface_checked(volume, default_template, DefaceOptions(method="maskface", seed=3),
                             alignment=alignment)
    result = checked.defacing
    changed = result.data != volume.data
    assert not changed[np.isin(phantom.labels, [Label.GM, Label.WM])].any()
    assert not changed[result.guard].any()
    assert not (changed & ~result.allowed).any()
    assert changed[phantom.labels == Label.NOSE].mean() > 0.8
    record = checked.report.to_json()["maskface"]
    assert record["brain_guard"] == GUARD_NOTE
    assert record["seed"] == 3
    assert record["face_box"].startswith("isyb face region")


def test_cn200_matrix_through_the_template_header(tmp_path) -> None:
    """CN200's matrix acts on FSL scaled voxels of its image (x flipped: neurological)."""
    import nibabel as nib

    shape = (60, 70, 50)
    affine = np.array([[2.0, 0, 0, -60], [0, 2, 0, -80], [0, 0, 2, -50], [0, 0, 0, 1]])
    path = tmp_path / "tpl-CN200_T1w.nii.gz"
    nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), affine).to_filename(path)

    class Named:
        name = "CN200"
        head = path

    capiio_to_mm, source = capiio_to_template(Named)  # type: ignore[arg-type]
    assert "CAPIIO_to_CN200.mat" in source
    point = np.array([*FACE_ORIGIN, 1.0])
    fsl = CAPIIO_TO["CN200"] @ point  # CAPIIO is Analyze (radiological), 1 mm: no flip
    voxel = np.array([(shape[0] - 1) - fsl[0] / 2, fsl[1] / 2, fsl[2] / 2, 1.0])
    assert np.allclose(capiio_to_mm @ point, affine @ voxel)
