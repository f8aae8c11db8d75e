"""DiReCT with isyb's settings on synthetic cortices of known thickness.

No segmentation is involved, so these tests check
:data:`isyb.derive.morphometry.DIRECT_PARAMETERS` (5 iterations of 5
integration points, step 0.3, 5 field-inversion iterations) and the crop to
the GM/WM box alone, at 1 mm:

* a white-matter ball (radius 8 mm) inside a grey-matter shell of 3 mm and a
  CSF shell. Measured: 3.30 mm (2.22 for a 2 mm shell, 4.39 for 4.5 mm; the
  voxelised shells read high: 20 iterations of the previous settings give
  3.29 and 2.17 mm);
* a folded cortex: a white-matter base with four fingers, each wrapped in a
  grey-matter layer of known thickness (every voxel within that distance of
  the white matter), the sulci between the fingers either open (CSF between
  the banks) or closed (the banks of neighbouring fingers touch, as sulci
  narrower than a voxel do on a real 1 mm T1w). Measured: 2.03 mm for 2 mm,
  3.00 (open) and 2.97 (closed) for 3 mm, 3.77 for 4 mm.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from isyb.derive.morphometry import (
    DIRECT_PARAMETERS,
    MorphometryError,
    cortical_thickness,
    mean_thickness,
)


def _shell(gm_mm: float, size: int = 40) -> np.ndarray:
    """CSF (1) / GM (2) / WM (3) labels of concentric spheres, 1 mm voxels."""
    radius = np.linalg.norm(np.indices((size,) * 3) - (size - 1) / 2, axis=0)
    labels = np.zeros((size,) * 3, dtype=np.uint8)
    labels[radius < 16] = 1
    labels[radius < 8 + gm_mm] = 2
    labels[radius < 8] = 3
    return labels


def _folded(gm_mm: int, gap_mm: int, fingers: int = 4) -> np.ndarray:
    """CSF/GM/WM labels of a folded cortex, 1 mm voxels: a WM base (6 mm) with ``fingers``
    WM fingers (4 mm wide, 22 mm tall, 24 mm long), GM = every voxel within ``gm_mm`` of the
    WM (Euclidean distance of voxel centres, so ``gm_mm`` voxels face-on: the thickness),
    ``gap_mm`` of CSF between the GM banks of neighbouring fingers (0: the banks touch), CSF
    3 mm beyond the GM; no GM beside or under the base (left outside, label 0)."""
    period = 4 + 2 * gm_mm + gap_mm
    shape = (fingers * period + 2 * gm_mm + 8, 40, 6 + 22 + gm_mm + 6)
    wm = np.zeros(shape, dtype=bool)
    wm[gm_mm + 4: shape[0] - gm_mm - 4, 8:32, 4:10] = True
    for k in range(fingers):
        start = 4 + gap_mm // 2 + 2 * gm_mm + k * period
        wm[start:start + 4, 8:32, 4:26] = True
    distance = ndimage.distance_transform_edt(~wm)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[distance <= gm_mm + 3] = 1
    labels[(distance > 0) & (distance <= gm_mm)] = 2
    labels[wm] = 3
    labels[:, :, :4] = 0
    base = labels[:, :, 4:10]
    base[base == 2] = 0
    return labels


@pytest.mark.slow
def test_direct_measures_a_3_mm_shell_within_10_percent() -> None:
    labels = _shell(3.0)
    thickness = cortical_thickness(labels, (1.0, 1.0, 1.0))
    assert np.all(thickness[labels != 2] == 0)
    assert mean_thickness(thickness, labels) == pytest.approx(3.0, rel=0.10)


@pytest.mark.slow
@pytest.mark.parametrize(("gm_mm", "gap_mm"), [(2, 2), (3, 2), (3, 0), (4, 1)])
def test_direct_measures_a_folded_cortex_within_10_percent(gm_mm: int, gap_mm: int) -> None:
    labels = _folded(gm_mm, gap_mm)
    assert (labels == 2).sum() > 5000
    thickness = cortical_thickness(labels, (1.0, 1.0, 1.0))
    assert mean_thickness(thickness, labels) == pytest.approx(gm_mm, rel=0.10)


@pytest.mark.slow
def test_the_crop_to_the_grey_and_white_matter_box_changes_no_thickness() -> None:
    """DiReCT on the GM/WM box plus 3 voxels (what isyb runs) against DiReCT on the whole
    grid: the fields are zero outside GM and WM, so the crop moves only the image border the
    recursive Gaussian filters see (measured: at most 0.004 mm on the 3 mm shell)."""
    import ants

    labels = _shell(3.0)
    cropped = cortical_thickness(labels, (1.0, 1.0, 1.0))

    def image(array: np.ndarray):
        return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    whole = ants.kelly_kapowski(s=image(labels), g=image(labels == 2), w=image(labels == 3),
                                gm_label=2, wm_label=3, x=0, **DIRECT_PARAMETERS).numpy()
    gm = labels == 2
    assert np.abs(cropped[gm] - whole[gm]).max() < 0.01


def _hemispheres(gap_mm: int) -> tuple[np.ndarray, np.ndarray]:
    """CSF/GM/WM labels of two "hemispheres" side by side along x, 1 mm voxels, and their
    sides (1 left, 2 right): each a WM box (10 × 20 × 20 mm) wrapped in 3 mm of GM (every
    voxel within 3 mm of its WM) and 3 mm of CSF, ``gap_mm`` of CSF between the two medial
    GM faces (0: they touch, as the medial cortices do across a fissure thinner than a
    voxel)."""
    shape = (2 * (10 + 6) + gap_mm + 6, 32, 32)
    wm = np.zeros((2, *shape), dtype=bool)
    wm[0, 6:16, 6:26, 6:26] = True
    wm[1, 22 + gap_mm:32 + gap_mm, 6:26, 6:26] = True
    distance = np.stack([ndimage.distance_transform_edt(~w) for w in wm]).min(axis=0)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[distance <= 6] = 1
    labels[(distance > 0) & (distance <= 3)] = 2
    labels[wm.any(axis=0)] = 3
    sides = np.where(np.arange(shape[0]) < 19 + gap_mm // 2, 1, 2)[:, None, None]
    return labels, np.where(labels >= 2, sides, 0).astype(np.uint8)


@pytest.mark.slow
def test_each_hemisphere_on_its_own_reads_the_truth_whatever_the_fissure() -> None:
    """Two 3 mm cortices whose medial GM faces touch, or lie 2 mm apart. Each hemisphere on
    its own reads the same thickness either way (within 10 % of the truth, the medial face
    too). On both at once, DiReCT's fronts from the two WM surfaces meet halfway through the
    merged 6 mm of medial GM, so it reads about 3 mm there as well (measured: 3.05 mm, 3.17
    on their own), and where 2 mm of CSF lies between them the split changes < 0.05 mm."""
    touching, sides = _hemispheres(0)
    medial = np.zeros(touching.shape, dtype=bool)
    medial[16:22, 9:23, 9:23] = True  # the medial faces' GM, away from the edges
    split = cortical_thickness(touching, (1.0, 1.0, 1.0), parts=sides)
    assert np.all(split[touching != 2] == 0) and np.all(split[touching == 2] > 0)
    assert mean_thickness(split, touching) == pytest.approx(3.0, rel=0.10)
    assert split[medial].mean() == pytest.approx(3.0, rel=0.10)
    whole = cortical_thickness(touching, (1.0, 1.0, 1.0))
    assert whole[medial].mean() == pytest.approx(3.0, rel=0.10)

    apart, sides = _hemispheres(2)
    split_apart = cortical_thickness(apart, (1.0, 1.0, 1.0), parts=sides)
    assert np.array_equal(split_apart[:19], split[:19])  # the left one, as if alone
    whole = cortical_thickness(apart, (1.0, 1.0, 1.0))
    assert np.abs(split_apart - whole)[apart == 2].max() < 0.05


@pytest.mark.slow
def test_the_hemispheres_run_in_child_processes_with_the_same_thickness(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With two threads to spend, the parts run in two child processes of one ITK thread
    each; the thickness is the one this process finds on its own, to the bit."""
    import resource

    from isyb.executor import ITK_THREADS_ENV

    labels, sides = _hemispheres(0)
    monkeypatch.setenv(ITK_THREADS_ENV, "1")
    here = cortical_thickness(labels, (1.0, 1.0, 1.0), parts=sides)
    monkeypatch.setenv(ITK_THREADS_ENV, "2")
    monkeypatch.setattr("isyb.derive.morphometry.PROCESS_VOXELS", 0)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    there = cortical_thickness(labels, (1.0, 1.0, 1.0), parts=sides)
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime > children + 0.5  # ANTs
    assert np.array_equal(here, there)


def test_a_part_without_white_matter_is_refused() -> None:
    labels, sides = _hemispheres(2)
    labels[labels == 3] = np.where(sides[labels == 3] == 2, 1, 3)  # no WM on the right
    with pytest.raises(MorphometryError, match=r"part 2 .* no white matter"):
        cortical_thickness(labels, (1.0, 1.0, 1.0), parts=sides)
    with pytest.raises(MorphometryError, match="shape"):
        cortical_thickness(labels, (1.0, 1.0, 1.0), parts=sides[1:])
