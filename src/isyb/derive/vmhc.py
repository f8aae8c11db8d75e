"""Voxel-mirrored homotopic connectivity (VMHC) and whole-brain z-scores of metric maps.

**VMHC** (Zuo et al. 2010, J Neurosci 30:15034): for each voxel v, the Pearson
correlation r between the voxel's time series and that of its mirror voxel v'
(the same point with x -> -x), reported as Fisher's z = arctanh(r). The run
must lie on a left-right symmetric template grid (see :func:`check_symmetric`),
preprocessed and smoothed as the caller chooses; on such a grid the mirror of
voxel index i along x is n - 1 - i. On an odd-sized grid the midline voxels
(x = 0) are their own mirror, so r = 1 there by construction (as in DPARSF
and CCS); leave them out of summaries that should not count them.

**Standardisation** (DPARSF/CCS convention: a metric map "standardised by the
whole-brain mean and SD"): ``z = (x - mean) / SD`` over the voxels of the brain
mask, with the sample SD (ddof = 1, MATLAB's ``std`` that DPARSF uses).
"""

from __future__ import annotations

import itertools

import numpy as np

from isyb.errors import IsybError

R_CLIP = 1.0 - 1e-7
"""|r| is clipped to this before Fisher's z: a perfect mirror gives arctanh(R_CLIP) = 8.406."""

GRID_TOLERANCE = 0.1
"""How far (in voxels) a mirrored voxel centre may miss a voxel centre of the grid."""

MIN_CORRELATION = 0.99
"""Default threshold of the template's correlation with its mirror. Symmetric templates are
averaged with their own mirror, so they correlate at 1 up to rounding (nilearn's ICBM 2009a
symmetric: 1.000000 at 1 and 2 mm); asymmetric ones reach 0.97-0.98 over the whole head
image, where the head-versus-air contrast dominates (TemplateFlow MNI152NLin2009cAsym 1 mm:
0.981; MNI152NLin6Asym 2 mm: 0.973), and 0.74-0.81 inside their brain masks. The brief's 0.9
would pass an asymmetric template checked without a mask."""


class VMHCInputError(IsybError, ValueError):
    """A template, grid or run that VMHC cannot use."""


def _check_affine(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise VMHCInputError(f"the voxel-to-world affine is 4x4, got shape {affine.shape}")
    return affine


def grid_mirror_error(shape: tuple[int, ...], affine: np.ndarray) -> float:
    """Largest distance (mm) between a mirrored voxel centre (x -> -x) and the voxel i -> n-1-i.

    The affine is linear in the voxel indices, so the largest miss is at a corner of the grid.
    """
    affine = _check_affine(affine)
    flip = np.diag([-1.0, 1.0, 1.0])
    worst = 0.0
    for corner in itertools.product(*[(0, n - 1) for n in shape[:3]]):
        index = np.asarray(corner, dtype=np.float64)
        mirrored_index = index.copy()
        mirrored_index[0] = shape[0] - 1 - index[0]
        centre = affine[:3, :3] @ index + affine[:3, 3]
        target = affine[:3, :3] @ mirrored_index + affine[:3, 3]
        worst = max(worst, float(np.linalg.norm(flip @ centre - target)))
    return worst


def _check_grid(shape: tuple[int, ...], affine: np.ndarray) -> None:
    affine = _check_affine(affine)
    voxel = float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
    miss = grid_mirror_error(shape, affine)
    if miss > GRID_TOLERANCE * voxel:
        x = affine[0, 0] * np.array([0, shape[0] - 1]) + affine[0, 3]
        raise VMHCInputError(
            f"grid not centred: under x -> -x the voxel centres miss the grid by up to "
            f"{miss:.2f} mm (tolerance {GRID_TOLERANCE:g} voxel = {GRID_TOLERANCE * voxel:.2f} "
            f"mm; x spans {x[0]:g} to {x[1]:g} mm); VMHC needs a symmetric template grid")


def check_symmetric(template: np.ndarray, affine: np.ndarray, *, mask: np.ndarray | None = None,
                    min_correlation: float = MIN_CORRELATION) -> None:
    """Raise :class:`VMHCInputError` unless ``template`` is a left-right symmetric template.

    The grid must map onto itself under x -> -x (world mm) within :data:`GRID_TOLERANCE`
    voxel, and the Pearson correlation of the image with its mirror, over ``mask`` (default:
    the whole grid), must be at least ``min_correlation`` (see :data:`MIN_CORRELATION`).
    """
    template = np.asarray(template, dtype=np.float64)
    if template.ndim != 3:
        raise VMHCInputError(f"a template image is 3-D, got shape {template.shape}")
    _check_grid(template.shape, affine)
    mask = np.ones(template.shape, bool) if mask is None else np.asarray(mask, bool)
    if mask.shape != template.shape:
        raise VMHCInputError(f"mask shape {mask.shape} differs from the template grid "
                             f"{template.shape}")
    values, mirrored = template[mask], template[::-1][mask]
    if values.size < 3 or values.std() == 0 or mirrored.std() == 0:
        raise VMHCInputError(f"image asymmetric: cannot tell, {values.size} voxels in the mask "
                             "and a constant image or mirror there")
    r = float(np.corrcoef(values, mirrored)[0, 1])
    if r < min_correlation:
        raise VMHCInputError(f"image asymmetric: correlation with its mirror {r:.4f} < "
                             f"{min_correlation:g} over {values.size} voxels; VMHC needs a "
                             "symmetric template")


def mirror(volume_or_series: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The x -> -x mirror of a 3-D volume or 4-D series on a symmetric grid (a flipped view)."""
    array = np.asarray(volume_or_series)
    if array.ndim not in (3, 4):
        raise VMHCInputError(f"mirror takes a 3-D volume or a 4-D series, got shape "
                             f"{array.shape}")
    _check_grid(array.shape, affine)
    return array[::-1]


def vmhc(series: np.ndarray, affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """VMHC map (Fisher z, dimensionless) of a 4-D run (time last) on a symmetric grid.

    r is clipped to ``|r| <= R_CLIP`` before ``arctanh``. The map is NaN where VMHC is
    undefined: outside ``mask`` or outside its mirror (both the voxel and its mirror must be
    in the mask), and where either time series is constant. Computed one pair of sagittal
    slices at a time (r is the same at a voxel and at its mirror), so memory stays small.
    """
    series = np.asarray(series)
    if series.ndim != 4:
        raise VMHCInputError(f"a BOLD run is 4-D, got shape {series.shape}")
    if series.shape[3] < 3:
        raise VMHCInputError(f"a correlation needs at least 3 time points, got {series.shape[3]}")
    mask = np.asarray(mask, bool)
    if mask.shape != series.shape[:3]:
        raise VMHCInputError(f"mask shape {mask.shape} differs from the BOLD grid "
                             f"{series.shape[:3]}")
    _check_grid(series.shape, affine)
    both = mask & mask[::-1]
    out = np.full(mask.shape, np.nan)
    nx = mask.shape[0]
    for i in range((nx + 1) // 2):
        j = nx - 1 - i
        inside = both[i]
        if not inside.any():
            continue
        a = series[i][inside].astype(np.float64)
        b = series[j][inside].astype(np.float64)
        a -= a.mean(axis=1, keepdims=True)
        b -= b.mean(axis=1, keepdims=True)
        norm = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        r = np.divide((a * b).sum(axis=1), norm, out=np.full(norm.shape, np.nan),
                      where=norm > 0)
        z = np.arctanh(np.clip(r, -R_CLIP, R_CLIP))
        out[i][inside] = z
        out[j][inside] = z
    return out


def zscore_in_mask(metric_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(x - mean) / SD`` over ``mask`` (SD with ddof = 1, DPARSF/CCS); 0 outside the mask.

    Every value in the mask must be finite (pass ``mask & np.isfinite(metric_map)``), and the
    mask needs at least 2 voxels with different values.
    """
    metric_map = np.asarray(metric_map, dtype=np.float64)
    mask = np.asarray(mask, bool)
    if mask.shape != metric_map.shape:
        raise VMHCInputError(f"mask shape {mask.shape} differs from the map {metric_map.shape}")
    values = metric_map[mask]
    bad = int((~np.isfinite(values)).sum())
    if bad:
        raise VMHCInputError(f"the map has {bad} non-finite value(s) inside the mask; "
                             "leave them out of the mask")
    sd = values.std(ddof=1) if values.size > 1 else 0.0
    if not sd > 0:
        raise VMHCInputError(f"cannot standardise: {values.size} voxel(s) in the mask with "
                             "no spread")
    out = np.zeros(metric_map.shape)
    out[mask] = (values - values.mean()) / sd
    return out
