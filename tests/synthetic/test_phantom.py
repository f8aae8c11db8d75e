"""Tests of the synthetic head phantom (isyb.synthetic.phantom)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from isyb.synthetic.phantom import (
    BRAIN_LABELS,
    DEFAULT_INTENSITIES,
    FACE_LABELS,
    LENS_INTENSITY,
    Label,
    Phantom,
    labels_to_nifti,
    make_phantom,
    to_nifti,
)


@pytest.fixture(scope="module")
def ph1() -> Phantom:
    """Default phantom at 1 mm."""
    return make_phantom(voxel_size=1.0)


@pytest.fixture(scope="module")
def ph2() -> Phantom:
    """Default phantom at 2 mm, noise-free."""
    return make_phantom(voxel_size=2.0, noise_sd=0.0)


def _axes_mm(p: Phantom) -> list[np.ndarray]:
    """World mm of the voxel centres along x, y, z (the phantom affine is diagonal)."""
    return [p.affine[i, 3] + np.arange(n) * p.affine[i, i] for i, n in enumerate(p.shape)]


def _extent(mask: np.ndarray, axis_mm: np.ndarray, axis: int) -> tuple[float, float]:
    """Lowest and highest world coordinate (voxel centres, mm) of ``mask`` along ``axis``."""
    other = tuple(i for i in range(3) if i != axis)
    idx = np.flatnonzero(mask.any(axis=other))
    return float(axis_mm[idx[0]]), float(axis_mm[idx[-1]])


def _head_size(p: Phantom) -> tuple[float, float, float]:
    """Width (x), length (y) of the SKIN label and vertex-to-chin height, in mm."""
    xs, ys, zs = _axes_mm(p)
    vs = p.voxel_size
    skin = p.labels == Label.SKIN
    x0, x1 = _extent(skin, xs, 0)
    y0, y1 = _extent(skin, ys, 1)
    _, z_top = _extent(skin, zs, 2)
    # the chin is the lowest head point well in front of the neck
    front = p.head_mask & (ys[None, :, None] > 55.0 * p.length / 190.0)
    z_chin, _ = _extent(front, zs, 2)
    return x1 - x0 + vs[0], y1 - y0 + vs[1], z_top - z_chin + vs[2]


def _min_distance_mm(p: Phantom, a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance in mm between voxel centres of masks a and b."""
    return float(ndi.distance_transform_edt(~b, sampling=p.voxel_size)[a].min())


def test_labels_exact_and_all_present(ph2: Phantom) -> None:
    assert ph2.labels.dtype == np.uint8
    assert ph2.image.dtype == np.float32
    assert ph2.image.shape == ph2.labels.shape == (100, 116, 128)
    counts = np.bincount(ph2.labels.ravel(), minlength=256)
    assert set(np.flatnonzero(counts)) == {int(lab) for lab in Label}
    # two eyes and two ears, each one connected piece
    for lab in (Label.EYES, Label.EARS):
        _, n = ndi.label(ph2.labels == lab)
        assert n == 2, lab
    for lab in (Label.NOSE, Label.LIPS):
        _, n = ndi.label(ph2.labels == lab)
        assert n == 1, lab


def test_noise_free_image_is_a_function_of_labels(ph2: Phantom) -> None:
    lut = np.zeros(256, dtype=np.float32)
    for lab, value in DEFAULT_INTENSITIES.items():
        lut[int(lab)] = value
    expected = lut[ph2.labels]
    differ = ph2.image != expected
    # only the eye lenses differ from the label intensity
    assert differ.any()
    assert np.all(ph2.labels[differ] == Label.EYES)
    assert np.all(ph2.image[differ] == LENS_INTENSITY)


def test_layers_are_nested(ph2: Phantom) -> None:
    labels = ph2.labels
    brain = ph2.brain_mask
    near_brain = ndi.binary_dilation(brain, iterations=1)
    neighbours = set(np.unique(labels[near_brain & ~brain]).tolist())
    assert neighbours <= {int(Label.CSF)}  # CSF shell all around the brain
    wm = labels == Label.WM
    near_wm = ndi.binary_dilation(wm) & ~wm
    assert set(np.unique(labels[near_wm]).tolist()) <= {int(Label.GM), int(Label.CSF)}
    # the skin is outermost: no skull, CSF or brain touches the background
    outside = ndi.binary_dilation(labels == Label.BACKGROUND) & (labels != Label.BACKGROUND)
    inner = np.isin(labels[outside], (Label.SKULL, Label.CSF, *BRAIN_LABELS, Label.EYES))
    assert not inner.any()


def test_brain_enclosed_and_far_from_face(ph2: Phantom) -> None:
    brain = ph2.brain_mask
    assert not (ndi.binary_dilation(brain, iterations=3) & (ph2.labels == Label.BACKGROUND)).any()
    face = ph2.mask(*FACE_LABELS)
    assert _min_distance_mm(ph2, brain, face) >= 10.0
    # the brain also stays >= 10 mm inside the head surface
    assert _min_distance_mm(ph2, brain, ~ph2.head_mask) >= 10.0


@pytest.mark.parametrize(("length", "width", "height"),
                         [(160.0, 125.0, 190.0), (230.0, 180.0, 275.0), (160.0, 180.0, 275.0)])
def test_brain_far_from_face_for_other_head_sizes(length: float, width: float,
                                                  height: float) -> None:
    p = make_phantom(voxel_size=2.0, length=length, width=width, height=height,
                     fov_mm=(240.0, 290.0, 320.0), fov_center_mm=(0.0, 10.0, -20.0), noise_sd=0)
    assert np.all(np.bincount(p.labels.ravel(), minlength=len(Label)) > 0)
    assert _min_distance_mm(p, p.brain_mask, p.mask(*FACE_LABELS)) >= 10.0
    got = _head_size(p)
    np.testing.assert_allclose(got, (width, length, height), atol=3.0)


def test_default_head_size(ph1: Phantom) -> None:
    np.testing.assert_allclose(_head_size(ph1), (150.0, 190.0, 225.0), atol=2.0)


def test_dimensions_move_face_features(ph2: Phantom) -> None:
    big = make_phantom(voxel_size=2.0, length=209.0, width=165.0, height=247.5, noise_sd=0,
                       fov_mm=(220.0, 260.0, 280.0))
    np.testing.assert_allclose(_head_size(big), (165.0, 209.0, 247.5), atol=3.0)
    ratio = np.array([1.1, 1.1, 1.1])
    for lab in (Label.NOSE, Label.LIPS):
        np.testing.assert_allclose(big.centroid(lab), ph2.centroid(lab) * ratio, atol=3.0)
    for name in ("nose_tip", "eye_left", "menton", "vertex"):
        np.testing.assert_allclose(big.landmarks[name], ph2.landmarks[name] * ratio, atol=1e-9)
    # each dimension scales its own axis only
    longer = make_phantom(voxel_size=2.0, length=209.0, noise_sd=0)
    np.testing.assert_allclose(_head_size(longer), (150.0, 209.0, 225.0), atol=3.0)


def test_face_geometry(ph1: Phantom) -> None:
    xs, ys, zs = _axes_mm(ph1)
    labels = ph1.labels
    y_max = {lab: _extent(labels == lab, ys, 1)[1] for lab in (Label.NOSE, Label.EYES, Label.LIPS)}
    assert y_max[Label.NOSE] > y_max[Label.EYES] + 15.0
    assert y_max[Label.NOSE] > y_max[Label.LIPS] + 10.0
    nose_tip = ph1.landmarks["nose_tip"]
    assert abs(y_max[Label.NOSE] - nose_tip[1]) <= 1.5
    # nose protrudes ~20-25 mm from the face surface under it (the upper lip region)
    z_sub = np.argmin(np.abs(zs - (ph1.landmarks["nose_tip"][2] - 8.0)))
    x0 = np.argmin(np.abs(xs))
    column = labels[x0, :, z_sub]
    face_y = ys[np.flatnonzero(column != Label.BACKGROUND)[-1]]
    assert 15.0 <= y_max[Label.NOSE] - face_y <= 30.0
    # order from top to bottom: eyes, nose tip, lips, chin
    z_eye = ph1.centroid(Label.EYES)[2]
    z_lips = ph1.centroid(Label.LIPS)[2]
    assert z_eye > nose_tip[2] > z_lips > ph1.landmarks["menton"][2]
    # eyes: two balls of ~24 mm diameter, covered by a thin eyelid of skin
    for name in ("eye_left", "eye_right"):
        i, j, k = np.rint(np.linalg.solve(ph1.affine, [*ph1.landmarks[name], 1.0])[:3]).astype(int)
        assert labels[i, j, k] == Label.EYES
        column = labels[i, :, k]
        eye_front = np.flatnonzero(column == Label.EYES)[-1]
        surface = np.flatnonzero(column != Label.BACKGROUND)[-1]
        assert 1 <= surface - eye_front <= 5
        assert np.all(column[eye_front + 1:surface + 1] == Label.SKIN)
    eye_vol = np.count_nonzero(labels == Label.EYES) / 2.0
    assert eye_vol == pytest.approx(4.0 / 3.0 * np.pi * 12.0**3, rel=0.05)
    # ears stick out sideways by ~15-20 mm
    ear_x = _extent(labels == Label.EARS, xs, 0)
    skin_x = _extent(labels == Label.SKIN, xs, 0)
    assert 12.0 <= ear_x[1] - skin_x[1] <= 22.0
    assert 12.0 <= skin_x[0] - ear_x[0] <= 22.0
    # the neck reaches the bottom of the FOV
    assert (labels[:, :, 0] == Label.NECK).any()
    assert (labels[:, :, 0] == Label.SKIN).any()


@pytest.mark.parametrize("orientation", ["RAS", "LIA", "LSA", "LPS", "PIR"])
def test_to_nifti_round_trip(ph2: Phantom, orientation: str) -> None:
    shift = (3.0, -7.5, 12.0)
    img = to_nifti(ph2, orientation, origin_shift_mm=shift)
    assert nib.aff2axcodes(img.affine) == tuple(orientation)
    assert img.get_data_dtype() == np.int16
    canon = nib.as_closest_canonical(img)
    expected = np.rint(ph2.image).astype(np.int16)
    np.testing.assert_array_equal(np.asanyarray(canon.dataobj), expected)
    moved = ph2.affine.copy()
    moved[:3, 3] += shift
    np.testing.assert_allclose(canon.affine, moved, atol=1e-9)

    lab_img = labels_to_nifti(ph2, orientation)
    assert lab_img.get_data_dtype() == np.uint8
    lab = np.asanyarray(lab_img.dataobj)
    np.testing.assert_array_equal(np.asanyarray(nib.as_closest_canonical(lab_img).dataobj),
                                  ph2.labels)
    # the nose centroid computed in the stored voxel order lands at the same world point
    ijk = np.argwhere(lab == Label.NOSE).mean(axis=0)
    world = nib.affines.apply_affine(lab_img.affine, ijk)
    np.testing.assert_allclose(world, ph2.centroid(Label.NOSE), atol=1e-6)


def test_to_nifti_file_round_trip(ph2: Phantom, tmp_path) -> None:
    path = tmp_path / "head.nii.gz"
    to_nifti(ph2, "LIA", dtype=np.float32).to_filename(path)
    img = nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("L", "I", "A")
    assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
    canon = nib.as_closest_canonical(img)
    np.testing.assert_array_equal(np.asanyarray(canon.dataobj), ph2.image)
    np.testing.assert_allclose(canon.affine, ph2.affine, atol=1e-5)


def test_to_nifti_rejects_bad_orientation(ph2: Phantom) -> None:
    for bad in ("RAX", "RRS", "RA"):
        with pytest.raises(ValueError):
            to_nifti(ph2, bad)


def test_voxel_sizes_and_affine() -> None:
    p = make_phantom(voxel_size=(1.5, 2.0, 2.5), noise_sd=0)
    np.testing.assert_allclose(p.voxel_size, (1.5, 2.0, 2.5))
    assert p.shape == (133, 116, 102)
    # the world origin is inside the brain
    i, j, k = np.rint(np.linalg.solve(p.affine, [0.0, 0.0, 0.0, 1.0])[:3]).astype(int)
    assert p.labels[i, j, k] in (Label.WM, Label.CSF)
    np.testing.assert_allclose(p.centroid(Label.NOSE), make_phantom(
        voxel_size=2.0, noise_sd=0).centroid(Label.NOSE), atol=2.0)


def test_noise_and_bias() -> None:
    a = make_phantom(voxel_size=3.0, noise_sd=4.0, seed=1)
    b = make_phantom(voxel_size=3.0, noise_sd=4.0, seed=1)
    c = make_phantom(voxel_size=3.0, noise_sd=4.0, seed=2)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    np.testing.assert_array_equal(a.labels, c.labels)
    background = a.image[a.labels == Label.BACKGROUND]
    assert background.mean() == pytest.approx(4.0 * np.sqrt(np.pi / 2.0), rel=0.05)  # Rayleigh
    wm = a.image[a.labels == Label.WM]
    assert np.median(wm) == pytest.approx(110.0, abs=2.0)
    biased = make_phantom(voxel_size=3.0, noise_sd=0.0, bias=0.2)
    wm = biased.image[biased.labels == Label.WM]
    assert 88.0 <= wm.min() < wm.max() <= 132.0
    assert wm.max() - wm.min() > 10.0


def test_rejects_bad_dimensions() -> None:
    with pytest.raises(ValueError):
        make_phantom(voxel_size=2.0, width=300.0)
    with pytest.raises(ValueError):
        make_phantom(voxel_size=0.0)
