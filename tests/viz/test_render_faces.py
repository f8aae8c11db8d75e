"""Tests of the surface renderer (isyb.viz.render) and the face-detectability check
(isyb.viz.faces).

Synthetic phantoms check the geometry: silhouettes, orientation, rotation and
anisotropic voxels. The real-data tests check that faces are found on original
full-face scans and not on defaced or face-zeroed ones. They need
``../shared/data`` (or ``$ISYB_TEST_DATA``), skip without it, and never write a
render of an original face anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from isyb.head.morphology import skin_threshold
from isyb.viz.faces import detect_faces, face_detected
from isyb.viz.render import face_depth, head_centre, qc_figure, render_face, render_faces

# --------------------------------------------------------------------------- phantoms


def ellipsoid(
    zooms: tuple[float, float, float],
    semi_axes_mm: tuple[float, float, float],
    fov_mm: float = 140.0,
    value: float = 100.0,
    offset_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """A solid ellipsoid (RAS grid, voxel size ``zooms`` mm) centred in a cubic FOV."""
    axes = [
        (np.arange(round(fov_mm / z)) + 0.5) * z - fov_mm / 2 - o
        for z, o in zip(zooms, offset_mm, strict=True)
    ]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    a, b, c = semi_axes_mm
    inside = (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1.0
    return np.where(inside, value, 0.0).astype(np.float32)


def silhouette_size_mm(image: np.ndarray, pixel_mm: float = 1.0) -> tuple[float, float]:
    """(width, height) in mm of the hit pixels of a render."""
    rows, cols = np.nonzero(image)
    return ((cols.max() - cols.min() + 1) * pixel_mm, (rows.max() - rows.min() + 1) * pixel_mm)


# --------------------------------------------------------------------------- renderer


def test_sphere_silhouette_is_a_disc_with_a_brighter_centre() -> None:
    radius = 40.0
    image = render_face(ellipsoid((1.0, 1.0, 1.0), (radius,) * 3), (1.0, 1.0, 1.0))
    assert image.dtype == np.uint8 and image.ndim == 2
    hit = image > 0
    assert abs(hit.sum() / (np.pi * radius**2) - 1.0) < 0.05
    rows, cols = np.nonzero(hit)
    r0, c0 = rows.mean(), cols.mean()
    rr, cc = np.indices(image.shape)
    dist = np.hypot(rr - r0, cc - c0)
    assert dist[hit].max() < radius + 1.5  # nothing outside the disc
    assert hit[dist < radius - 1.5].all()  # no hole inside it
    assert (image[~hit] == 0).all() and image[hit].min() >= 1
    centre = image[dist < 0.3 * radius].mean()
    rim = image[(dist > 0.85 * radius) & hit].mean()
    assert centre > rim + 60
    # the light is above the viewer: the upper half is brighter than the lower half
    upper = image[(rr < r0) & (dist < 0.8 * radius)].mean()
    lower = image[(rr > r0) & (dist < 0.8 * radius)].mean()
    assert upper > lower


def test_photo_orientation_subject_right_on_image_left_superior_on_top() -> None:
    zooms = (1.0, 1.0, 1.0)
    head = ellipsoid(zooms, (40.0, 40.0, 40.0))
    # a "nose" in front of the head, on the subject's right (+x) and superior (+z)
    bump = ellipsoid(zooms, (8.0, 8.0, 8.0), offset_mm=(20.0, 36.0, 20.0))
    depth = face_depth(np.maximum(head, bump), zooms)
    plain = face_depth(head, zooms)
    assert depth.shape == plain.shape
    raised = np.nan_to_num(depth - plain, nan=0.0) > 2.0  # the bump is nearer the viewer
    rows, cols = np.nonzero(raised)
    assert rows.size > 20
    assert rows.mean() < depth.shape[0] / 2  # superior = top half
    assert cols.mean() < depth.shape[1] / 2  # subject's right = image left


def test_yaw_and_pitch_of_a_sphere_keep_its_silhouette() -> None:
    zooms = (1.0, 1.0, 1.0)
    sphere = ellipsoid(zooms, (40.0, 40.0, 40.0))
    views = render_faces(sphere, zooms, yaws=(0.0, 15.0, -30.0))
    views.append(render_face(sphere, zooms, pitch_deg=20.0))
    areas = [(v > 0).sum() for v in views]
    sizes = [silhouette_size_mm(v) for v in views]
    for area, size in zip(areas[1:], sizes[1:], strict=True):
        assert abs(area / areas[0] - 1.0) < 0.02
        assert np.allclose(size, sizes[0], atol=2.0)


def test_yaw_turns_the_face_toward_the_subjects_left() -> None:
    zooms = (1.0, 1.0, 1.0)
    head = ellipsoid(zooms, (40.0, 40.0, 40.0))
    nose = ellipsoid(zooms, (6.0, 10.0, 6.0), offset_mm=(0.0, 40.0, 0.0))
    volume = np.maximum(head, nose)
    straight, turned = (face_depth(volume, zooms, yaw_deg=yaw) for yaw in (0.0, 30.0))

    def nose_column(depth: np.ndarray) -> float:
        # the nose tip is the nearest point; its column relative to the head's middle
        cols = np.nonzero(np.isfinite(depth).any(axis=0))[0]
        tip = np.unravel_index(np.nanargmax(depth), depth.shape)[1]
        return tip - (cols.min() + cols.max()) / 2

    assert abs(nose_column(straight)) < 2
    assert nose_column(turned) > 10  # the subject's left is the image's right


@pytest.mark.parametrize("zooms", [(2.0, 2.0, 3.0), (1.6, 1.6, 1.6), (3.0, 3.0, 3.0)])
def test_anisotropic_voxels_give_the_same_silhouette_in_mm(
    zooms: tuple[float, float, float],
) -> None:
    semi_axes = (45.0, 40.0, 55.0)  # width 90 mm, height 110 mm
    reference = silhouette_size_mm(
        render_face(ellipsoid((1.0, 1.0, 1.0), semi_axes), (1.0, 1.0, 1.0))
    )
    size = silhouette_size_mm(render_face(ellipsoid(zooms, semi_axes), zooms))
    assert np.allclose(reference, (90.0, 110.0), atol=2.5)
    assert np.allclose(size, reference, atol=max(zooms) + 1.0)
    coarse = render_face(ellipsoid(zooms, semi_axes), zooms, pixel_mm=2.0)
    assert np.allclose(silhouette_size_mm(coarse, 2.0), reference, atol=max(zooms) + 2.0)


def test_threshold_is_robust_to_dtype_scale_and_noisy_background() -> None:
    rng = np.random.default_rng(0)
    zooms = (1.5, 1.5, 1.5)
    sphere = ellipsoid(zooms, (40.0, 40.0, 40.0))
    # Rician-like background noise at 6 % of the tissue intensity
    noisy = np.abs(
        sphere + rng.normal(0.0, 6.0, sphere.shape) + 1j * rng.normal(0.0, 6.0, sphere.shape)
    ).astype(np.float32)
    thr = skin_threshold(noisy)
    assert 20.0 < thr < 80.0
    assert skin_threshold(noisy * 1000.0) == pytest.approx(thr * 1000.0, rel=1e-3)
    as_uint8 = np.clip(noisy * 2.0, 0, 255).astype(np.uint8)
    assert 40.0 < skin_threshold(as_uint8) < 160.0
    image = render_face(noisy, zooms)
    assert abs((image > 0).sum() / (np.pi * 40.0**2) - 1.0) < 0.06


def test_empty_volume_renders_black() -> None:
    image = render_face(np.zeros((20, 20, 20), np.float32), (2.0, 2.0, 2.0))
    assert image.ndim == 2 and image.size > 1 and not image.any()
    assert face_detected(np.zeros((20, 20, 20), np.float32), (2.0, 2.0, 2.0))["detected"] is False


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        render_face(np.zeros((4, 4)), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        render_face(np.ones((4, 4, 4)), (1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        render_face(np.ones((4, 4, 4)), (1.0, 1.0, 1.0), pixel_mm=0.0)
    with pytest.raises(ValueError):
        detect_faces(np.zeros((4, 4, 3), np.uint8))


def test_qc_figure_writes_a_png(tmp_path: Path) -> None:
    zooms = (2.0, 2.0, 3.0)
    volume = ellipsoid(zooms, (40.0, 45.0, 50.0))
    path = tmp_path / "qc" / "sub-01_desc-defaced_qc.png"
    qc_figure(volume, zooms, path, title="sub-01 defaced")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 5000
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left


# --------------------------------------------------------------------------- detector


def test_detector_finds_no_face_on_blank_images_and_blobs() -> None:
    assert detect_faces(np.zeros((200, 180), np.uint8)) == []
    assert detect_faces(np.zeros((3, 3), np.uint8)) == []
    zooms = (1.0, 1.0, 1.0)
    result = face_detected(ellipsoid(zooms, (70.0, 85.0, 95.0), fov_mm=220.0), zooms)
    assert result["detected"] is False
    assert set(result["yaws"]) == {-15.0, 0.0, 15.0}
    assert all(boxes == [] for boxes in result["yaws"].values())
    assert result["threshold"] > 0


# --------------------------------------------------------------------------- real data


def data_dir() -> Path:
    env = os.environ.get("ISYB_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"


def load_head(name: str):  # -> isyb.io.Volume
    path = data_dir() / "heads" / name
    if not path.exists():
        pytest.skip(f"real test data not found: {path} (set ISYB_TEST_DATA)")
    from isyb.io import load_volume

    return load_volume(path)


ORIGINALS = ["pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz"]


def anterior_mm(data: np.ndarray, zooms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, z) in mm relative to the head centre, broadcastable to ``data``."""
    centre = head_centre(data) * zooms
    y = (np.arange(data.shape[1]) * zooms[1] - centre[1])[None, :, None]
    z = (np.arange(data.shape[2]) * zooms[2] - centre[2])[None, None, :]
    return y, z


@pytest.mark.realdata
@pytest.mark.parametrize("name", ORIGINALS)
def test_face_found_on_original_scans(name: str) -> None:
    volume = load_head(name)
    result = face_detected(volume.data, volume.zooms)
    assert result["detected"], f"no face found on {name}: {result['yaws']}"
    for boxes in result["yaws"].values():
        assert len(boxes) <= 1  # one face per view, not texture
        for _x, _y, width, height in boxes:
            assert 60 < width < 220 and 60 < height < 220  # face-sized (1 mm pixels)


@pytest.mark.realdata
def test_no_face_on_an_already_defaced_scan() -> None:
    volume = load_head("ds000240-sub01_T1w_defaced.nii.gz")
    result = face_detected(volume.data, volume.zooms)
    assert not result["detected"], result["yaws"]


@pytest.mark.realdata
@pytest.mark.parametrize("name", ORIGINALS[:2])
def test_no_face_once_the_face_is_zeroed(name: str) -> None:
    volume = load_head(name)
    data, zooms = volume.data, volume.zooms
    y, z = anterior_mm(data, zooms)
    # everything anterior of the coronal plane 20 mm in front of the head centre
    plane = np.where(y > 20.0, 0.0, data)
    assert not face_detected(plane, zooms)["detected"]
    # only the anterior-inferior block (below the brow), like pydeface
    block = np.where((y > 20.0) & (z < 30.0), 0.0, data)
    assert not face_detected(block, zooms)["detected"]


@pytest.mark.realdata
@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limit of the stock Haar cascade: a 15 mm box blur keeps the coarse face "
        "(eye sockets, nose, mouth) the cascade keys on, so the blurred face is still found "
        "(its 20x20 px window puts 7-8 mm of face in a pixel); see isyb.viz.faces"
    ),
)
def test_no_face_once_the_face_is_box_blurred() -> None:
    volume = load_head("pycortex-S1_T1w.nii.gz")
    data, zooms = volume.data, volume.zooms
    y, z = anterior_mm(data, zooms)
    blurred = ndimage.uniform_filter(data, np.maximum(np.rint(15.0 / zooms), 1).astype(int))
    defaced = np.where((y > 20.0) & (z < 30.0), blurred, data)
    assert not face_detected(defaced, zooms)["detected"]
