"""Group mean and SD maps, and their fsaverage5 figure (layout and hemispheres)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib import image as mpimg

from isyb.derive.group import (
    GroupInputError,
    _fsaverage5,
    group_mean_sd,
    project_to_fsaverage5,
    surface_figure,
)


def test_group_mean_and_sd_equal_numpy_where_every_subject_is_valid() -> None:
    rng = np.random.default_rng(0)
    maps = [rng.normal(2.0, 1.5, size=(6, 5, 4)) for _ in range(5)]
    valid = [np.ones((6, 5, 4), bool) for _ in range(5)]
    valid[0][0, 0, 0] = False
    valid[2][1, 2, 3] = False  # invalid in one subject only
    maps[3][4, 4, 0] = np.nan  # valid, but not finite, in one subject
    group = group_mean_sd(maps, valid)
    assert group.n == 5
    expected = np.ones((6, 5, 4), bool)
    expected[0, 0, 0] = expected[1, 2, 3] = expected[4, 4, 0] = False
    np.testing.assert_array_equal(group.mask, expected)
    stack = np.stack(maps)
    np.testing.assert_allclose(group.mean[expected], stack.mean(axis=0)[expected], rtol=1e-12)
    np.testing.assert_allclose(group.sd[expected], stack.std(axis=0, ddof=1)[expected],
                               rtol=1e-12)
    assert np.isnan(group.mean[~expected]).all() and np.isnan(group.sd[~expected]).all()


def test_group_maps_need_two_subjects_on_one_grid() -> None:
    one = np.zeros((3, 3, 3))
    ok = np.ones((3, 3, 3), bool)
    with pytest.raises(GroupInputError, match="at least 2 subjects"):
        group_mean_sd([one], [ok])
    with pytest.raises(GroupInputError, match="not on the grid"):
        group_mean_sd([one, np.zeros((3, 3, 4))], [ok, np.ones((3, 3, 4), bool)])
    with pytest.raises(GroupInputError, match="2 maps but 1"):
        group_mean_sd([one, one], [ok])


@pytest.fixture(scope="module")
def mni_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A blob in the left hemisphere only (mean) and a smooth gradient (SD), MNI 2 mm grid."""
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2).get_fdata() > 0
    affine = template.affine
    index = np.indices(template.shape).reshape(3, -1).T
    xyz = (index @ affine[:3, :3].T + affine[:3, 3]).reshape(*template.shape, 3)
    blob = 3.0 * np.exp(-((xyz - [-50.0, -20.0, 40.0]) ** 2).sum(axis=-1) / (2 * 12.0 ** 2))
    gradient = 1.0 + xyz[..., 2] / 100.0
    return np.where(mask, blob, np.nan), np.where(mask, gradient, np.nan), affine, mask


def test_a_left_hemisphere_blob_projects_onto_the_left_hemisphere_only(mni_maps) -> None:
    """Measured: left-hemisphere peak 2.94 (of 3), right-hemisphere peak 2.4e-4 (medial tail)."""
    from nilearn import datasets

    mean, _, affine, _ = mni_maps
    textures = project_to_fsaverage5(mean, affine)
    assert textures["left"].shape == textures["right"].shape == (10242,)
    assert np.nanmax(textures["left"]) > 2.0
    assert np.nanmax(textures["right"]) < 1e-3
    pial = datasets.load_fsaverage("fsaverage5").pial.parts["left"].coordinates
    peak = pial[np.nanargmax(textures["left"])]
    assert np.linalg.norm(peak - [-50.0, -20.0, 40.0]) < 15.0


def test_surface_figure_writes_the_two_row_layout_with_the_blob_on_the_left(
        mni_maps, tmp_path: Path) -> None:
    """The mean row's colours run from pale yellow to dark red (YlOrRd, 0 to the 98th
    percentile), so red pixels mark the blob: they must appear in the left lateral view and
    in no other view, and not in the SD row (viridis has no red). Measured: 1730 red pixels
    in the left lateral panel, 0 elsewhere."""
    mean, sd, affine, _ = mni_maps
    out = surface_figure(mean, sd, affine, tmp_path / "figs" / "vmhc.png", title="VMHC",
                         units="Fisher z")
    assert out == tmp_path / "figs" / "vmhc.png"
    assert [p.name for p in out.parent.iterdir()] == ["vmhc.png"]  # no temporary left
    pixels = mpimg.imread(out)[..., :3]
    assert pixels.shape == (560, 1200, 3)
    red = (pixels[..., 0] > 0.4) & (pixels[..., 0] - pixels[..., 1] > 0.3) & (
        pixels[..., 2] < 0.35)
    mean_row = red[56:280]  # the mean row spans 0.5-0.9 of the figure's height
    counts = [int(mean_row[:, int(1200 * (0.06 + 0.205 * c)): int(1200 * (0.26 + 0.205 * c))]
                  .sum()) for c in range(4)]
    assert counts[0] > 500
    assert counts[1] == counts[2] == counts[3] == 0
    assert red[280:].sum() == 0


def test_the_fsaverage5_held_in_memory_is_nilearns_and_read_only() -> None:
    """The figure draws from meshes read once per process (:func:`_fsaverage5`); they
    hold nilearn's coordinates, faces and sulcal depth, and no caller can change them."""
    from nilearn import datasets

    held = _fsaverage5()
    assert held is _fsaverage5()
    fsaverage = datasets.load_fsaverage("fsaverage5")
    sulcal = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                          data_type="sulcal")
    for hemi in ("left", "right"):
        for kind in ("pial", "white_matter", "inflated"):
            mesh = getattr(fsaverage, kind).parts[hemi]
            np.testing.assert_array_equal(held[kind][hemi].coordinates, mesh.coordinates)
            np.testing.assert_array_equal(held[kind][hemi].faces, mesh.faces)
            with pytest.raises(ValueError, match="read-only"):
                held[kind][hemi].coordinates[0, 0] = 0.0
        np.testing.assert_array_equal(held["sulcal"][hemi], sulcal.data.parts[hemi])
        with pytest.raises(ValueError, match="read-only"):
            held["sulcal"][hemi][0] = 0.0
