"""The one ANTs bridge: RAS arrays to ANTs images and back, transform files to RAS matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from isyb.head.ants import FLIP, ants_geometry, from_ants, read_affine, to_ants


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [12.0, -7.0, 25.0], degrees=True).as_matrix() \
        @ np.diag([1.5, 2.0, 3.0])
    affine[:3, 3] = [-80.0, 31.5, -12.25]
    return affine


def test_an_array_goes_to_ants_and_back_with_its_ras_affine() -> None:
    data = np.random.default_rng(0).random((7, 5, 4)).astype(np.float32)
    affine = _oblique_affine()
    image = to_ants(data, affine)
    assert np.allclose(image.spacing, (1.5, 2.0, 3.0))
    back, back_affine = from_ants(image)
    assert np.array_equal(back, data)
    assert np.allclose(back_affine, affine, atol=1e-12)


def test_ants_places_voxels_at_the_lps_flip_of_their_ras_position() -> None:
    affine = _oblique_affine()
    image = to_ants(np.zeros((7, 5, 4), dtype=bool), affine)
    index = (3, 1, 2)
    ras = affine @ [*index, 1.0]
    lps = np.asarray(image.origin) + np.asarray(image.direction) @ (np.multiply(index,
                                                                                image.spacing))
    assert np.allclose(lps, (FLIP @ ras)[:3])
    assert image.pixeltype == "float"  # masks go to ANTs as float32


def test_unflipped_geometry_hands_the_affine_to_ants_as_it_is() -> None:
    grid = np.diag([4.0, 4.0, 4.0, 1.0])
    grid[:3, 3] = [-10.0, 2.5, 7.0]
    geometry = ants_geometry(grid, flip=False)
    assert geometry["origin"] == (-10.0, 2.5, 7.0) and geometry["spacing"] == (4.0, 4.0, 4.0)
    assert np.array_equal(geometry["direction"], np.eye(3))


def test_a_transform_file_becomes_the_fixed_to_moving_ras_matrix(tmp_path: Path) -> None:
    import ants

    matrix = Rotation.from_euler("xyz", [5.0, -3.0, 8.0], degrees=True).as_matrix() * 1.1
    translation, center = np.array([3.0, -4.0, 2.5]), np.array([10.0, -20.0, 5.0])
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           matrix=matrix, translation=translation,
                                           center=center)
    path = str(tmp_path / "affine.mat")
    ants.write_transform(transform, path)
    physical = read_affine(path, flip=False)
    for point in ([0.0, 0.0, 0.0], [12.0, -7.0, 30.0]):
        assert np.allclose(physical[:3, :3] @ point + physical[:3, 3],
                           transform.apply_to_point(point))
        ras = np.array([*point, 1.0])
        lps_moved = transform.apply_to_point((FLIP @ ras)[:3])
        assert np.allclose(read_affine(path) @ ras, FLIP @ [*lps_moved, 1.0])
