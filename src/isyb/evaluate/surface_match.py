"""Matching two face surfaces: trimmed ICP with a similarity transform, and its distance.

The comparison step of the re-identification attack (:mod:`isyb.evaluate.reid`):
depth maps in a template frame become point clouds (:func:`surface_points`),
the probe is aligned to the gallery face (:func:`align_surfaces`), and the
distance is the trimmed RMS of point-to-surface distances after the fit
(:func:`descriptor_distance`), in mm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

#: Pixel size (mm, template frame) of the depth maps, and step along each ray.
SPACING_MM = 1.0


#: Fraction of the closest point pairs kept by the trimmed ICP and the distance.
TRIM = 0.9


#: Most ICP iterations, and the change of RMS (mm) at which it stops earlier.
ICP_ITERATIONS = 25


ICP_TOLERANCE_MM = 0.01


#: Largest change of scale (fraction) the ICP may apply: what an affine registration
#: to a template leaves is a few percent, and a free scale lets the fit shrink a
#: probe that lies off the gallery surface onto it.
MAX_SCALE_CHANGE = 0.05


#: Every PROBE_STRIDE-th row and column of the probe's pixels goes into the ICP.
PROBE_STRIDE = 2


#: Fewest valid pixels a descriptor needs to be compared at all.
MIN_POINTS = 400


def point_tree(points: np.ndarray) -> cKDTree:
    """The k-d tree of a gallery's points (n, 3) that the ICP queries up to 26 times per fit.

    Cells split at their middle (``balanced_tree=False``), keep their full extent
    (``compact_nodes=False``) and hold up to 32 points. A k-d tree's nearest point is exact
    whatever its shape; only which of two gallery points at exactly the same distance it
    returns may differ, so the fits are the same bytes as with scipy's default tree unless
    such a tie occurs (none did in test_reid's twelve matrices or in
    ``benchmarks/bench_reid.py``'s). These settings cut the ICP's time
    by about a quarter for probes whose face was removed (points 5-20 mm off the gallery's
    surface), by 2-9 % for blurred and maskface faces, and leave re-scans as they were
    (``benchmarks/bench_reid.py``, ``benchmarks/README.md``).
    """
    return cKDTree(points, leafsize=32, balanced_tree=False, compact_nodes=False)


def surface_points(depth: np.ndarray, *, spacing_mm: float = SPACING_MM,
                   stride: int = 1) -> np.ndarray:
    """The skin points (n, 3) of a descriptor, in mm: (column, depth, row) x ``spacing_mm``.

    Only finite pixels count; ``stride`` keeps every ``stride``-th row and column.
    """
    rows, cols = np.nonzero(np.isfinite(depth))
    keep = (rows % stride == 0) & (cols % stride == 0)
    rows, cols = rows[keep], cols[keep]
    return np.stack([cols * spacing_mm, depth[rows, cols].astype(np.float64),
                     rows * spacing_mm], axis=1)


def surface_normals(depth: np.ndarray, *, spacing_mm: float = SPACING_MM) -> np.ndarray:
    """Unit normals (n, 3) of a descriptor's surface, in the order of :func:`surface_points`.

    The surface is ``y = D(x, z)``, so the normal is ``(-dD/dx, 1, -dD/dz)``
    normalised (central differences); where a neighbour is missing, the
    one-sided difference, and (0, 1, 0) where there is none.
    """
    depth = np.asarray(depth, dtype=np.float64)
    valid = np.isfinite(depth)

    def derivative(axis: int) -> np.ndarray:
        ahead = np.roll(depth, -1, axis=axis)
        behind = np.roll(depth, 1, axis=axis)
        index = np.arange(depth.shape[axis])
        shape = [1, 1]
        shape[axis] = -1
        index = index.reshape(shape)
        ahead = np.where(index == depth.shape[axis] - 1, np.nan, ahead)
        behind = np.where(index == 0, np.nan, behind)
        central = (ahead - behind) / (2 * spacing_mm)
        forward = (ahead - depth) / spacing_mm
        backward = (depth - behind) / spacing_mm
        out = np.where(np.isfinite(central), central,
                       np.where(np.isfinite(forward), forward, backward))
        return np.nan_to_num(out, nan=0.0)

    d_row, d_col = derivative(0), derivative(1)
    rows, cols = np.nonzero(valid)
    normals = np.stack([-d_col[rows, cols], np.ones(rows.size), -d_row[rows, cols]], axis=1)
    return normals / np.linalg.norm(normals, axis=1, keepdims=True)


def similarity_fit(source: np.ndarray, target: np.ndarray, *,
                   scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``target ~ s * R @ source + t`` of paired points (n, 3).

    Returns ``(s, R, t)``; ``s`` is 1 when ``scale`` is false (rigid fit).
    Source: S. Umeyama, "Least-squares estimation of transformation parameters
    between two point patterns", IEEE Trans. PAMI 13 (1991) 376-380.
    """
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    u, sing, vt = np.linalg.svd(centred_t.T @ centred_s / len(source))
    sign = np.eye(3)
    sign[2, 2] = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ sign @ vt
    variance = float(centred_s.var(axis=0).sum())
    s = float((sing * np.diag(sign)).sum() / variance) if scale and variance > 0 else 1.0
    return s, rotation, mean_t - s * rotation @ mean_s


def _trimmed(values: np.ndarray, keep: float) -> np.ndarray:
    """Indices of the ``keep`` fraction of smallest ``values``."""
    count = max(int(keep * values.size), 1)
    return np.argpartition(values, count - 1)[:count]


@dataclass
class SurfaceFit:
    """Result of :func:`align_surfaces`: probe -> gallery ``p' = scale * R @ p + shift``.

    ``residuals`` are the signed point-to-plane distances (mm) of every probe
    point to the tangent plane of its nearest gallery point after the fit,
    ``gaps`` the point-to-point distances (mm) to that nearest point.
    """

    scale: float
    rotation: np.ndarray
    shift: np.ndarray
    residuals: np.ndarray
    gaps: np.ndarray


def align_surfaces(probe: np.ndarray, gallery: np.ndarray, normals: np.ndarray, *,
                   tree: cKDTree | None = None, trim: float = TRIM,
                   iterations: int = ICP_ITERATIONS, scale: bool = True) -> SurfaceFit:
    """Trimmed point-to-plane ICP of probe points onto gallery points (both (n, 3), mm).

    ``normals`` are the gallery's unit normals (:func:`surface_normals`). The fit
    starts from the identity, the probe moved along y by the difference of the
    median depths. Each iteration pairs every probe point with its nearest
    gallery point, keeps the ``trim`` fraction of pairs with the smallest
    point-to-point gap (trimmed ICP: the parts that do not overlap drop out),
    and solves the linearised point-to-plane least squares for a small rotation,
    a translation and, with ``scale``, an isotropic scale about the kept
    points' centroid (the total scale is held within ``1 ± MAX_SCALE_CHANGE``).
    It stops after ``iterations`` or when the update moves no point by more
    than ``ICP_TOLERANCE_MM``. Point-to-plane, unlike
    point-to-point, slides freely along the surface and has no floor from the
    pixel grid.

    Sources: Y. Chen and G. Medioni, "Object modelling by registration of
    multiple range images", Image Vis. Comput. 10 (1992) 145-155 (point to
    plane); D. Chetverikov et al., "The trimmed iterative closest point
    algorithm", ICPR 2002 (trimming); K.-L. Low, "Linear least-squares
    optimization for point-to-plane ICP surface registration", UNC TR04-004
    (2004) (the linearisation).
    """
    tree = point_tree(gallery) if tree is None else tree
    s, rotation, shift = 1.0, np.eye(3), np.zeros(3)
    shift[1] = float(np.median(gallery[:, 1]) - np.median(probe[:, 1]))
    extent = float(np.max(np.ptp(probe, axis=0))) or 1.0
    for _ in range(iterations):
        moved = s * probe @ rotation.T + shift
        gaps, index = tree.query(moved)
        kept = _trimmed(gaps, trim)
        p, q, n = moved[kept], gallery[index[kept]], normals[index[kept]]
        centre = p.mean(axis=0)
        local = p - centre
        columns = [np.cross(local, n), n]
        if scale:
            columns.append(np.sum(n * local, axis=1, keepdims=True))
        design = np.hstack(columns)
        target = -np.sum(n * (p - q), axis=1)
        normal_matrix = design.T @ design
        normal_matrix += 1e-9 * np.trace(normal_matrix) * np.eye(design.shape[1])
        step = np.linalg.solve(normal_matrix, design.T @ target)
        omega, move = step[:3], step[3:6]
        grow = 1.0 + (float(step[6]) if scale else 0.0)
        turn = Rotation.from_rotvec(omega).as_matrix()
        # p' = centre + grow * turn @ (p - centre) + move, composed with the fit so far
        grow = float(np.clip(grow * s, 1.0 - MAX_SCALE_CHANGE, 1.0 + MAX_SCALE_CHANGE)) / s
        s = grow * s
        rotation = turn @ rotation
        shift = grow * turn @ (shift - centre) + centre + move
        if np.linalg.norm(omega) * extent + np.linalg.norm(move) + abs(grow - 1) * extent \
                < ICP_TOLERANCE_MM:
            break
    moved = s * probe @ rotation.T + shift
    gaps, index = tree.query(moved)
    residuals = np.sum(normals[index] * (moved - gallery[index]), axis=1)
    return SurfaceFit(s, rotation, shift, residuals, gaps)


def _highpass_residual(probe: np.ndarray, gallery: np.ndarray, s: float, rotation: np.ndarray,
                       shift: np.ndarray, spacing_mm: float, highpass_mm: float) -> np.ndarray:
    """Signed depth residual (mm) of the aligned probe to the gallery, minus its smooth part."""
    rows, cols = np.nonzero(np.isfinite(probe))
    points = np.stack([cols * spacing_mm, probe[rows, cols].astype(np.float64),
                       rows * spacing_mm], axis=1)
    moved = s * points @ rotation.T + shift
    coords = np.stack([moved[:, 2], moved[:, 0]]) / spacing_mm
    valid = np.isfinite(gallery)
    value = ndimage.map_coordinates(np.where(valid, gallery, 0.0).astype(np.float64), coords,
                                    order=1, cval=0.0)
    weight = ndimage.map_coordinates(valid.astype(np.float64), coords, order=1, cval=0.0)
    residual = np.full(probe.shape, np.nan)
    inside = weight > 0.999
    residual[rows[inside], cols[inside]] = moved[inside, 1] - value[inside]
    have = np.isfinite(residual)
    sigma = highpass_mm / spacing_mm
    numerator = ndimage.gaussian_filter(np.where(have, residual, 0.0), sigma)
    denominator = ndimage.gaussian_filter(have.astype(np.float64), sigma)
    smooth = numerator / np.maximum(denominator, 1e-6)
    return np.abs(residual[have] - smooth[have])


def descriptor_distance(probe: np.ndarray, gallery: np.ndarray, *,
                        spacing_mm: float = SPACING_MM, trim: float = TRIM,
                        stride: int = PROBE_STRIDE, scale: bool = True,
                        highpass_mm: float | None = None,
                        prepared: tuple[np.ndarray, np.ndarray, cKDTree] | None = None) -> float:
    """Surface distance (mm) of a probe face to a gallery face (descriptors of one frame).

    The probe's skin points (every ``stride``-th pixel) are aligned to the
    gallery's (all pixels) by trimmed point-to-plane ICP with a similarity
    transform (:func:`align_surfaces`): what the template registration left of
    pose, position and scale, about 1-3 mm and 1-2 degrees at the face, is
    taken out here. The distance is the root-mean-square of the point-to-plane
    residuals of the ``trim`` fraction (0.9) of probe points nearest to the
    gallery surface: 0 for the same surface, and blind to the 10% of points
    where the two do not overlap.

    ``highpass_mm`` turns this into a *detail* distance: after the same
    alignment, the signed depth differences are high-pass filtered (minus
    their Gaussian average of sigma ``highpass_mm``, among valid pixels) before
    the trimmed RMS, so that only facial detail finer than about that scale
    counts (nose, lips, eyelids), not the coarse shape of the face.

    ``prepared`` is ``(points, normals, tree)`` of the gallery
    (:func:`prepare_gallery`), to reuse across probes. Not symmetric: the probe
    moves. ``inf`` when either face has fewer than ``MIN_POINTS`` valid pixels.
    :func:`descriptor_distances` gives several of these distances from one alignment.
    """
    return descriptor_distances(probe, gallery, highpass=(highpass_mm,), spacing_mm=spacing_mm,
                                trim=trim, stride=stride, scale=scale, prepared=prepared)[0]


def descriptor_distances(probe: np.ndarray, gallery: np.ndarray, *,
                         highpass: Sequence[float | None] = (None,),
                         spacing_mm: float = SPACING_MM, trim: float = TRIM,
                         stride: int = PROBE_STRIDE, scale: bool = True,
                         prepared: tuple[np.ndarray, np.ndarray, cKDTree] | None = None
                         ) -> tuple[float, ...]:
    """:func:`descriptor_distance` for each ``highpass_mm`` in ``highpass`` (``None``: the
    surface distance), from one ICP alignment: the alignment does not depend on the
    high-pass, so the surface and the detail attack cost one fit, not two. The same
    numbers as one :func:`descriptor_distance` call per setting."""
    probe = np.asarray(probe)
    gallery = np.asarray(gallery)
    if probe.shape != gallery.shape:
        raise ValueError(f"descriptors of different frames: {probe.shape} vs {gallery.shape}")
    source = surface_points(probe, spacing_mm=spacing_mm, stride=stride)
    target, normals, tree = prepared if prepared is not None else prepare_gallery(
        gallery, spacing_mm=spacing_mm)
    if len(source) < MIN_POINTS // stride**2 or len(target) < MIN_POINTS:
        return tuple(float("inf") for _ in highpass)
    fit = align_surfaces(source, target, normals, tree=tree, trim=trim, scale=scale)
    distances = []
    for highpass_mm in highpass:
        if highpass_mm is None:
            kept = fit.residuals[_trimmed(fit.gaps, trim)]
        else:
            dist = _highpass_residual(probe, gallery, fit.scale, fit.rotation, fit.shift,
                                      spacing_mm, highpass_mm)
            if dist.size < MIN_POINTS:
                distances.append(float("inf"))
                continue
            kept = dist[_trimmed(dist, trim)]
        distances.append(float(np.sqrt(np.mean(kept * kept))))
    return tuple(distances)


def prepare_gallery(gallery: np.ndarray, *, spacing_mm: float = SPACING_MM
                    ) -> tuple[np.ndarray, np.ndarray, cKDTree]:
    """Points, normals and k-d tree of a gallery descriptor, for :func:`descriptor_distance`."""
    points = surface_points(np.asarray(gallery), spacing_mm=spacing_mm)
    normals = surface_normals(np.asarray(gallery), spacing_mm=spacing_mm)
    return points, normals, point_tree(points if len(points) else np.zeros((1, 3)))

