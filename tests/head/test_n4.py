"""isyb.head.n4: N4 in numpy against ANTs' N4 (ANTsPy), and against a known bias field.

ANTsPy is the independent implementation: ``ants.n4_bias_field_correction`` with the
settings :func:`isyb.head.tissue._n4_field` uses (shrink 4, a 1x1x1 mesh, a weight image
and a mask). After one iteration both compute the same numbers to float32 precision;
after MRIQC's 4 x 50 iterations ITK's float32 rounding has drifted (benchmarks/bench_n4.py:
up to 2.6e-4 of the field on the real heads, the same Atropos label on >= 99.998 % of the
brain voxels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isyb.head import n4
from isyb.head.ants import start_itk
from isyb.head.morphology import head_mask, skin_threshold
from isyb.io import load_volume
from isyb.synthetic.phantom import Label, make_phantom


def _ants_field(image: np.ndarray, mask: np.ndarray, weight: np.ndarray,
                spacing: tuple[float, ...], iterations: tuple[int, ...]) -> np.ndarray:
    ants = start_itk()
    as_image = lambda a: ants.from_numpy(np.ascontiguousarray(a, dtype=np.float32),  # noqa: E731
                                         spacing=spacing)
    return ants.n4_bias_field_correction(
        as_image(image), mask=as_image(mask), weight_mask=as_image(weight), shrink_factor=4,
        return_bias_field=True,
        convergence={"iters": list(iterations), "tol": 1e-7}).numpy()


@pytest.fixture(scope="module")
def biased_phantom():
    """A 2.5 mm phantom head times a known smooth field (+-25 %), with its brain."""
    phantom = make_phantom(voxel_size=2.5, noise_sd=2.0, seed=3)
    grid = np.meshgrid(*(np.linspace(-1.0, 1.0, n) for n in phantom.shape), indexing="ij")
    truth = np.exp(0.25 * (0.8 * grid[0] - 0.6 * grid[2] + 0.5 * grid[1] * grid[2]))
    brain = phantom.mask(Label.CSF, Label.GM, Label.WM)
    return (phantom.image * truth).astype(np.float32), truth, brain, phantom


def test_one_iteration_and_one_level_give_ants_numbers() -> None:
    """Odd sizes, a zero-padded mask, a fractional weight and a spacing a hair above 1 mm
    (ITK's shrink rounds 1.5 down there): the same field as ANTs to float32 precision."""
    rng = np.random.default_rng(0)
    shape, spacing = (61, 50, 27), (1.0, 1.0000000505286242, 2.0000001010572483)
    grid = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    image = (100.0 * np.exp(0.3 * grid[0] - 0.2 * grid[1] * grid[2])
             * (1.0 + 0.3 * (rng.random(shape) > 0.5))).astype(np.float32)
    mask = np.zeros(shape, dtype=np.float32)
    mask[:, :, 3:-4] = 1.0
    weight = (grid[0] ** 2 + grid[1] ** 2 + grid[2] ** 2 < 0.8).astype(np.float32)
    weight[weight > 0] = rng.uniform(0.5, 1.0, int(weight.sum()))
    for iterations, tolerance in (((1,), 1e-6), ((1, 1), 1e-6), ((5, 5), 1e-5)):
        ours = n4.n4_bias_field(image, mask, weight, spacing, iterations=iterations)
        theirs = _ants_field(image, mask, weight, spacing, iterations)
        assert np.abs(ours / theirs - 1).max() < tolerance, iterations


def test_refining_the_lattice_keeps_the_spline() -> None:
    rng = np.random.default_rng(1)
    for n_control in (4, 5, 7):
        coarse = rng.normal(size=n_control)
        fine = n4._refinement(n_control) @ coarse
        values = n4._basis(97, n_control) @ coarse
        np.testing.assert_allclose(n4._basis(97, fine.size) @ fine, values, atol=1e-12)


def test_mriqc_settings_remove_a_known_field_as_ants_does(biased_phantom) -> None:
    image, truth, brain, phantom = biased_phantom
    spacing = (2.5, 2.5, 2.5)
    ours = n4.n4_bias_field(image, np.ones(image.shape), brain, spacing)
    theirs = _ants_field(image, np.ones(image.shape), brain.astype(np.float32), spacing,
                         (50, 50, 50, 50))
    assert np.abs(ours / theirs - 1)[brain].max() < 1e-3
    # the field found is the true one up to a global scale: white matter is flat again
    wm = phantom.labels == Label.WM
    before = image[wm]
    after = image[wm] / ours[wm]
    assert after.std() / after.mean() < 0.3 * before.std() / before.mean()
    ratio = ours[brain] / truth[brain]
    assert ratio.std() / ratio.mean() < 0.03


def test_a_flat_image_gives_a_flat_field() -> None:
    image = np.full((20, 20, 20), 50.0, dtype=np.float32)
    field = n4.n4_bias_field(image, np.ones(image.shape), np.ones(image.shape), (2.0, 2.0, 2.0))
    np.testing.assert_allclose(field, 1.0)


@pytest.mark.realdata
def test_a_real_head_gets_the_ants_field(data_root: Path) -> None:
    """mne-sample (3 mm), its head eroded as the weight, at MRIQC's settings."""
    path = data_root / "heads" / "mne-sample_T1w_3mm.mgz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    volume = load_volume(path)
    head = head_mask(volume.data, skin_threshold(volume.data))
    from scipy import ndimage
    weight = ndimage.binary_erosion(head, iterations=4)
    spacing = tuple(float(z) for z in volume.zooms)
    ours = n4.n4_bias_field(volume.data, np.ones(head.shape), weight, spacing)
    theirs = _ants_field(volume.data, np.ones(head.shape), weight, spacing, (50, 50, 50, 50))
    assert np.abs(ours / theirs - 1)[weight].max() < 1e-3


def test_bad_shapes_are_one_line_input_errors() -> None:
    from isyb.errors import InputError

    cube = np.ones((8, 8, 8))
    with pytest.raises(InputError, match="3-D image"):
        n4.n4_bias_field(np.ones((8, 8, 8, 2)), np.ones((8, 8, 8, 2)), np.ones((8, 8, 8, 2)),
                         (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="weight has shape"):
        n4.n4_bias_field(cube, cube, np.ones((8, 8, 7)), (1.0, 1.0, 1.0))
    with pytest.raises(InputError, match="3 voxel sizes"):
        n4.n4_bias_field(cube, cube, cube, (1.0, 1.0))
