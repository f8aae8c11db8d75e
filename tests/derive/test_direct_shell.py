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

from isyb.derive.morphometry import DIRECT_PARAMETERS, cortical_thickness, mean_thickness


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
