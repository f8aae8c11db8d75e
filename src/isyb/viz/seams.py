"""Seams: how sharply a defaced surface steps where the face region ends (issue 15 item 1).

A seam is a crease in the rendered skin along the face region's border, where
the rebuilt outline meets the untouched head: the region's outer border, and
its border with the brain guard, which keeps the subject's skin where it
reaches it (``edge`` of :func:`border_steps` counts that part alone). It is measured on the depth
map of a frontal render: :func:`front_depth` casts one ray per column along
the anterior axis of a RAS array (yaw 0, the view of :func:`isyb.viz.render.
face_depth`, on the voxel grid) through the volume smoothed as the renderer
smooths it, and finds the first crossing of the skin threshold, refined
linearly between voxels. :func:`border_step_mm` then looks at every pair of
neighbouring columns whose surface points lie on either side of the region's
border and takes the depth jump between them less the surface's own slope
there (the mean of the jumps just before and after the pair): a smooth
surface, however inclined, scores about 0; a step of h mm scores about h.
Pairs near the head's silhouette (depth slopes over :data:`SILHOUETTE_SLOPE`
mm per mm, within :data:`SILHOUETTE_PX` pixels) are left out, since a render
shows no surface there to crease. The price: a single step larger than
about ``2 * SILHOUETTE_SLOPE`` pixels' width (6 mm on a 1 mm grid) also reads
as silhouette and is not counted; the tests check steps up to 4 mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from isyb.head.morphology import skin_threshold
from isyb.viz.render import SMOOTH_MIN_VOXELS, SMOOTH_SIGMA_MM

#: Neighbouring depth slopes (mm per mm) above this mark the head's silhouette.
SILHOUETTE_SLOPE = 3.0
#: ... and pixels this close to such a slope or to a miss are left out too.
SILHOUETTE_PX = 2
#: With the original image given, pairs where it already stepped by more than
#: this (mm) are not counted.
ORIGINAL_STEP_MM = 1.0


def front_depth(data: np.ndarray, zooms: np.ndarray,
                threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Depth (mm along the anterior axis from the grid's first slice) of the front surface.

    Returns ``(depth, index)``, both indexed by column ``(i, k)``: the
    surface position in mm (NaN where the column holds no head) and the
    index along axis 1 of the first voxel above ``threshold`` (default
    :func:`isyb.head.morphology.skin_threshold`) seen from the front (-1
    where none). The volume is smoothed as :mod:`isyb.viz.render` smooths it.
    """
    zooms = np.asarray(zooms, dtype=float)
    thr = skin_threshold(data) if threshold is None else float(threshold)
    sigma = np.maximum(SMOOTH_SIGMA_MM / zooms, SMOOTH_MIN_VOXELS)
    smooth = ndimage.gaussian_filter(np.asarray(data, dtype=np.float32), sigma, mode="nearest",
                                     truncate=3.0)
    above = smooth > thr
    n = data.shape[1]
    has = above.any(axis=1)
    index = np.where(has, n - 1 - np.argmax(above[:, ::-1, :], axis=1), -1)
    i, k = np.nonzero(has)
    j = index[i, k]
    v1 = smooth[i, j, k]
    v0 = np.where(j + 1 < n, smooth[i, np.minimum(j + 1, n - 1), k], 0.0)
    frac = np.clip((v1 - thr) / np.maximum(v1 - v0, 1e-12), 0.0, 1.0)
    depth = np.full(has.shape, np.nan)
    depth[i, k] = (j + frac) * zooms[1]
    return depth, index


def _surface(depth: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Pixels a render shows as surface: hit, with depth slopes (mm per mm) of at most
    :data:`SILHOUETTE_SLOPE` in both directions, and at least :data:`SILHOUETTE_PX` pixels
    from any pixel that is not."""
    hit = np.isfinite(depth)
    filled = np.where(hit, depth, 0.0)
    gx = np.abs(np.gradient(filled, zooms[0], axis=0))
    gz = np.abs(np.gradient(filled, zooms[2], axis=1))
    surface = hit & (gx <= SILHOUETTE_SLOPE) & (gz <= SILHOUETTE_SLOPE)
    return ndimage.binary_erosion(surface, iterations=SILHOUETTE_PX, border_value=0)


def _steps(depth: np.ndarray, surface: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steps between neighbours ``p``, ``p + 1`` along axis 0 and whether they count.

    The step is the jump less the mean of the jumps just before and after; a
    pair counts where the four pixels around it are all on the surface
    (:func:`_surface`).
    """
    before, left, right, after = depth[:-3], depth[1:-2], depth[2:-1], depth[3:]
    slope_in, slope_out = left - before, after - right
    with np.errstate(invalid="ignore"):
        step = np.abs(right - left - 0.5 * (slope_in + slope_out))
    valid = surface[:-3] & surface[1:-2] & surface[2:-1] & surface[3:] & np.isfinite(step)
    return step, valid


def border_steps(data: np.ndarray, zooms: np.ndarray, region: np.ndarray,
                 original: np.ndarray | None = None,
                 threshold: float | None = None, edge: np.ndarray | None = None) -> np.ndarray:
    """Every counted depth step (mm) of the frontal surface across ``region``'s border.

    ``region`` is a boolean RAS mask on ``data``'s grid (the face region); a
    column is inside when its front surface voxel (:func:`front_depth`) is in
    it. See the module docstring for the step and for the pairs that are not
    counted (near the silhouette). With ``edge`` (a boolean mask on the same
    grid, such as the brain guard, which the face region leaves out), only the
    pairs with one column's surface voxel in it count: the steps across that
    part of the border. With ``original`` (the image before
    defacing, same grid), pairs where the original surface already stepped by
    more than :data:`ORIGINAL_STEP_MM` are left out too: a seam is a step the
    defacing made, not an ear or a chin that the border happens to cross.
    A step too large to count reads as silhouette, so the number of pairs
    counted matters as much as their largest step: a border that crosses the
    face yet counts few pairs hides a crease.
    """
    zooms = np.asarray(zooms, dtype=float)
    depth, index = front_depth(data, zooms, threshold)
    i, k = np.nonzero(index >= 0)
    inside = np.zeros(depth.shape, dtype=bool)
    inside[i, k] = region[i, index[i, k], k]
    on_edge = None
    if edge is not None:
        on_edge = np.zeros(depth.shape, dtype=bool)
        on_edge[i, k] = edge[i, index[i, k], k]
    surface = _surface(depth, zooms)
    before = None
    if original is not None:
        before = front_depth(original, zooms, threshold)[0]
        surface &= _surface(before, zooms)
    counted = []
    for axis in (0, 1):
        if depth.shape[axis] < 4:
            continue
        step, valid = _steps(np.moveaxis(depth, axis, 0), np.moveaxis(surface, axis, 0))
        s = np.moveaxis(inside, axis, 0)
        valid &= s[1:-2] != s[2:-1]
        if on_edge is not None:
            e = np.moveaxis(on_edge, axis, 0)
            valid &= e[1:-2] | e[2:-1]
        if before is not None:
            old, _ = _steps(np.moveaxis(before, axis, 0), np.moveaxis(surface, axis, 0))
            valid &= old <= ORIGINAL_STEP_MM
        counted.append(step[valid])
    return np.concatenate(counted) if counted else np.zeros(0)


def border_step_mm(data: np.ndarray, zooms: np.ndarray, region: np.ndarray,
                   original: np.ndarray | None = None, threshold: float | None = None,
                   edge: np.ndarray | None = None) -> float:
    """The largest of :func:`border_steps` (mm); 0 when the border crosses no measurable
    surface."""
    steps = border_steps(data, zooms, region, original, threshold, edge)
    return float(steps.max()) if steps.size else 0.0
