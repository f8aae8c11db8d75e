"""DiReCT with isyb's settings on a spherical shell of known thickness.

A white-matter ball (radius 8 mm) inside a grey-matter shell of 3 mm and a
CSF shell, at 1 mm: the thickness is known exactly and no segmentation is
involved, so the test checks :data:`isyb.derive.morphometry.DIRECT_PARAMETERS`
(10 iterations of step 0.1, 10 field-inversion iterations) alone. Measured
with those settings: 3.28 mm for 3 mm (2.18 for a 2 mm shell, 4.21 for 4 mm).
"""

from __future__ import annotations

import numpy as np
import pytest

from isyb.derive.morphometry import cortical_thickness, mean_thickness


def _shell(gm_mm: float, size: int = 40) -> np.ndarray:
    """CSF (1) / GM (2) / WM (3) labels of concentric spheres, 1 mm voxels."""
    radius = np.linalg.norm(np.indices((size,) * 3) - (size - 1) / 2, axis=0)
    labels = np.zeros((size,) * 3, dtype=np.uint8)
    labels[radius < 16] = 1
    labels[radius < 8 + gm_mm] = 2
    labels[radius < 8] = 3
    return labels


@pytest.mark.slow
def test_direct_measures_a_3_mm_shell_within_10_percent() -> None:
    labels = _shell(3.0)
    thickness = cortical_thickness(labels, (1.0, 1.0, 1.0))
    assert np.all(thickness[labels != 2] == 0)
    assert mean_thickness(thickness, labels) == pytest.approx(3.0, rel=0.10)
