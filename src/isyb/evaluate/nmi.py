"""Normalized mutual information between the original and the removed face.

Definition (isyb's default, after the ISYB data descriptor):

* voxel set: the voxels inside the face mask;
* ``A`` = original intensities; ``R`` = original − defaced (the removed face);
* each of ``A`` and ``R`` is quantized into 64 equal-width bins spanning its
  own min..max over the voxel set (a constant variable falls in one bin);
* NMI = I(A;R) / ((H(A) + H(R)) / 2), natural logarithms — exactly
  ``sklearn.metrics.normalized_mutual_info_score(bins_A, bins_R,
  average_method="arithmetic")``, in 0..1. Higher means more of the face's
  information was removed. It is 0 when nothing was removed (R constant).

``method="studholme"`` gives Studholme's (H(A) + H(R)) / H(A, R), in 1..2
(1 when nothing was removed).

Implemented with a joint histogram in numpy rather than by calling
scikit-learn, so that scikit-learn stays a test-only dependency; the tests
check the two agree to 1e-12.
"""

from __future__ import annotations

import numpy as np

from isyb.head.morphology import bounding_box

BINS = 64
METHODS = ("arithmetic", "studholme")


def quantize(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Equal-width bin index (0..bins-1) of each value over the values' own min..max."""
    values = np.asarray(values, dtype=np.float64)
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(values.shape, dtype=np.int64)
    index = np.floor((values - low) / (high - low) * bins).astype(np.int64)
    return np.clip(index, 0, bins - 1)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def face_nmi(original: np.ndarray, defaced: np.ndarray, face_mask: np.ndarray, *,
             bins: int = BINS, method: str = "arithmetic") -> float:
    """NMI between original face intensities and the removed part (see module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown NMI method {method!r}; use one of {', '.join(METHODS)}")
    if original.shape != defaced.shape or original.shape != face_mask.shape:
        raise ValueError("original, defaced and face mask must share one grid")
    inside = face_mask.astype(bool)
    if not inside.any():
        raise ValueError("the face mask is empty")
    # the mask's voxels, read in its bounding box: the same values in the same (C) order
    # as indexing the whole grids, a third of the work for a face region on a head
    box = bounding_box(inside)
    inside = inside[box]
    a = original[box][inside].astype(np.float64)
    removed = a - defaced[box][inside].astype(np.float64)
    labels_a, labels_r = quantize(a, bins), quantize(removed, bins)
    joint = np.bincount(labels_a * bins + labels_r, minlength=bins * bins).astype(np.float64)
    h_a = _entropy(np.bincount(labels_a, minlength=bins).astype(np.float64))
    h_r = _entropy(np.bincount(labels_r, minlength=bins).astype(np.float64))
    h_ar = _entropy(joint)
    if method == "studholme":
        return (h_a + h_r) / h_ar if h_ar > 0 else 1.0
    if h_r == 0.0 or h_a == 0.0:
        return 0.0
    mutual = max(h_a + h_r - h_ar, 0.0)
    return mutual / ((h_a + h_r) / 2.0)
