"""The brain guard: the subject's brain mask dilated by a margin, never modified."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def bounding_box(mask: np.ndarray, pad: np.ndarray | int = 0) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask``, grown by ``pad`` voxels per axis."""
    pad = np.broadcast_to(np.asarray(pad, dtype=int), (mask.ndim,))
    coords = np.argwhere(mask)
    if coords.size == 0:
        return tuple(slice(0, 0) for _ in mask.shape)
    lo = np.maximum(coords.min(axis=0) - pad, 0)
    hi = np.minimum(coords.max(axis=0) + 1 + pad, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def dilate_mm(mask: np.ndarray, zooms: np.ndarray, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` (Euclidean, in mm) of ``mask``.

    Exact Euclidean distance transform with anisotropic sampling, computed
    only in the bounding box of the mask grown by the margin.
    """
    zooms = np.asarray(zooms, dtype=float)
    if margin_mm <= 0 or not mask.any():
        return mask.copy()
    pad = np.ceil(margin_mm / zooms).astype(int) + 1
    box = bounding_box(mask, pad)
    distance = ndimage.distance_transform_edt(~mask[box], sampling=zooms)
    out = np.zeros_like(mask, dtype=bool)
    out[box] = distance <= margin_mm
    return out


def brain_guard(brain: np.ndarray, zooms: np.ndarray, margin_mm: float = 10.0) -> np.ndarray:
    """The region that defacing must never touch: ``brain`` dilated by ``margin_mm``."""
    return dilate_mm(brain.astype(bool), zooms, margin_mm)
