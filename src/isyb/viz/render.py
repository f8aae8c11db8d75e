"""Surface renders of a head, for face-detectability tests and QC pictures.

The renderer is an orthographic ray caster that needs no OpenGL and no mesh.
Rays are marched through a lightly smoothed copy of the volume, in millimetres,
until they first cross the skin threshold; a ray starts marching only shortly
before the first point where it could cross it and stops after the last one
(both bounded from the head's boundary voxels, :func:`_sample_span`), which
gives the depths of a march from the front of the box for a small part of the
cost. The depth map of those hits gives
the surface normals, and a portrait-like light (Lambertian, from just above the
viewer, with cast shadows and some ambient light) shades them.

Everything here is a plain function of an array in canonical RAS voxel order
(axis 0 = Right, axis 1 = Anterior, axis 2 = Superior) plus the voxel size in
mm, as :func:`isyb.io.load_volume` returns them. Anisotropic voxels are handled
by doing all the geometry in mm.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from isyb.head.morphology import skin_threshold

#: Gaussian smoothing (sigma, mm) of the volume before ray casting ...
SMOOTH_SIGMA_MM = 1.0
#: ... but at least this many voxels, which hides the voxel terraces of coarse scans.
SMOOTH_MIN_VOXELS = 0.5
#: Step (mm) between samples along a ray; hits are refined linearly inside a step.
RAY_STEP_MM = 1.0
#: Ambient share of the shading; the rest is Lambertian.
AMBIENT = 0.1
#: Elevation (degrees) of the light above the viewing direction.
LIGHT_ELEVATION_DEG = 30.0
#: Gaussian smoothing (sigma, mm) of the depth map before normals are taken.
DEPTH_SMOOTH_MM = 1.0
#: Depth (mm) by which a point must be hidden from the light to be in shadow.
SHADOW_TOLERANCE_MM = 0.5
#: Depth samples per ray processed in one vectorized batch. A ray joins in the batch
#: before its first possible hit and samples it whole, so smaller batches sample less
#: in vain: 4 took 0.75 CPU s for the ensemble's nine views of a 1 mm head, 16 took
#: 0.96, with the same depths (the batching never changes a sample's value). Since rays
#: also leave after their last possible hit, 2 to 6 take about the same (0.42 CPU s).
_CHUNK = 4

Zooms = np.ndarray | Sequence[float]


def _head_box(data: np.ndarray, threshold: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Bounding box (slices) of the voxels above ``threshold`` and their centroid (voxels).

    Slices with fewer supra-threshold voxels than 0.1 % of the fullest slice are
    left out of the box, so that scattered noise voxels don't inflate it. With no
    voxel above the threshold, the box is the whole volume and the centre its middle.
    """
    mask = np.asarray(data) > threshold
    shape = mask.shape
    if not mask.any():
        return tuple(slice(0, n) for n in shape), (np.array(shape, dtype=float) - 1) / 2
    box = []
    centre = np.zeros(3)
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        profile = mask.sum(axis=others, dtype=np.int64)
        keep = np.flatnonzero(profile > profile.max() * 1e-3)
        box.append(slice(int(keep[0]), int(keep[-1]) + 1))
        centre[axis] = float((profile * np.arange(profile.size)).sum() / profile.sum())
    return tuple(box), centre


def head_centre(data: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Centre of the head: centroid (voxel indices, float) of the voxels above the threshold.

    ``threshold`` defaults to :func:`skin_threshold`. Multiply by the voxel size to
    get mm. This is the point the head is rotated about in :func:`render_face`.
    """
    thr = skin_threshold(data) if threshold is None else float(threshold)
    return _head_box(np.asarray(data), thr)[1]


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """Rotation of the head in RAS mm: yaw about Superior, then pitch about Right."""
    yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return r_pitch @ r_yaw


@dataclass(frozen=True)
class _Scene:
    """A smoothed crop of the head, ready to be ray cast from any direction."""

    volume: np.ndarray  # smoothed float32 crop
    zooms: np.ndarray  # mm per voxel
    origin_mm: np.ndarray  # position of the crop's first voxel (mm, array frame)
    centre_mm: np.ndarray  # rotation centre (mm, array frame)
    corners_mm: np.ndarray  # (8, 3) corners of the crop, relative to the centre
    threshold: float
    boundary_mm: np.ndarray  # (n, 3) supra-threshold voxels with a 26-neighbour below it


def _scene(data: np.ndarray, zooms: Zooms, threshold: float | None) -> _Scene:
    data = np.asarray(data)
    if data.ndim != 3:
        raise ValueError(f"a 3-D array is needed, got shape {data.shape}")
    zooms = np.asarray(zooms, dtype=float).ravel()[:3]
    if zooms.size != 3 or not np.all(zooms > 0):
        raise ValueError(f"zooms must be three positive voxel sizes in mm, got {zooms}")
    thr = skin_threshold(data) if threshold is None else float(threshold)
    box, centre_vox = _head_box(data, thr)
    sigma_vox = np.maximum(SMOOTH_SIGMA_MM / zooms, SMOOTH_MIN_VOXELS)
    margin = np.ceil(3.0 * sigma_vox).astype(int) + 1
    lo = np.array([max(s.start - m, 0) for s, m in zip(box, margin, strict=True)])
    hi = np.array([min(s.stop + m, n) for s, m, n in zip(box, margin, data.shape, strict=True)])
    crop = np.asarray(data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    crop = ndimage.gaussian_filter(crop, sigma_vox, mode="nearest", truncate=3.0)
    centre_mm = centre_vox * zooms
    corners = (
        np.array(
            [
                [a, b, c]
                for a in (lo[0], hi[0] - 1)
                for b in (lo[1], hi[1] - 1)
                for c in (lo[2], hi[2] - 1)
            ],
            dtype=float,
        )
        * zooms
        - centre_mm
    )
    above = crop > np.float32(thr)
    boundary = above & ~_eroded_by_cube(above)
    boundary_mm = (np.argwhere(boundary) + lo) * zooms - centre_mm
    return _Scene(crop, zooms, lo * zooms, centre_mm, corners, thr, boundary_mm)


def _eroded_by_cube(mask: np.ndarray) -> np.ndarray:
    """``mask`` eroded by the 3x3x3 cube, outside the array counting as background.

    The cube is the product of three 3-voxel segments, so the erosion is one along each
    axis in turn: a voxel stays when it and its two neighbours along the axis are set.
    The same voxels as :func:`scipy.ndimage.minimum_filter` with ``size=3``,
    ``mode="constant"``, ``cval=0`` on the mask as 0/1 (tested), as ANDs of shifted
    slices: a few times faster on a head crop, where that filter took about a tenth of
    the ensemble's time per defaced head.
    """
    out = mask.copy()
    for axis in range(mask.ndim):
        eroded = np.zeros_like(out)
        inner = [slice(None)] * mask.ndim
        inner[axis] = slice(1, -1)
        before, after = list(inner), list(inner)
        before[axis], after[axis] = slice(0, -2), slice(2, None)
        np.logical_and(out[tuple(inner)], out[tuple(before)], out=eroded[tuple(inner)])
        eroded[tuple(inner)] &= out[tuple(after)]
        out = eroded
    return out


def _footprint(reach_mm: float, pixel_mm: float) -> np.ndarray:
    """The pixels (offsets from a point's nearest pixel) that can lie within ``reach_mm``
    of the point: boolean, square, odd side.

    A point's projection lies within half a pixel of its nearest pixel's centre along each
    image axis (or beyond the image's edge pixel, farther still from the pixels inside), so
    the pixel at offset ``(i, j)`` is at least ``max(|i| - 1/2, 0)`` and
    ``max(|j| - 1/2, 0)`` pixels from it along the two axes. Offsets whose nearest
    possible distance exceeds the reach are left out.
    """
    half = int(np.ceil(reach_mm / pixel_mm + 0.5))
    near = np.maximum(np.abs(np.arange(-half, half + 1)) - 0.5, 0.0) * pixel_mm
    return near[:, None] ** 2 + near[None, :] ** 2 <= reach_mm**2 * (1.0 + 1e-9)


def _sample_span(scene: _Scene, rotation: np.ndarray, xs: np.ndarray, zs: np.ndarray,
                 ys: np.ndarray, pixel_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Per ray (row-major over ``zs`` x ``xs``), the indices into ``ys`` of the first and
    the last sample that can be above the threshold: ``(first, last)``, with ``first =
    ys.size`` for a ray that never meets anything above it.

    A linearly interpolated sample above the threshold has a voxel above it among the
    corners of its cell, so it lies in that voxel's box of half-width one voxel. Where a
    ray enters the union of those boxes, and where it leaves it for the last time, it is
    on the box of a voxel that has a 26-neighbour below the threshold
    (``_Scene.boundary_mm``), within the half diagonal ``r`` of it. So every sample above
    the threshold lies between ``depth + r`` and ``depth - r`` of boundary voxels within
    ``r`` of the ray (sideways). Each boundary voxel's depth is put on its nearest pixel
    (the image's edge pixel for one just outside it); the largest and the smallest are
    spread over every pixel that can lie within ``r`` (:func:`_footprint`); one more
    sample is kept at each end as a margin for rounding.
    """
    reach = float(np.linalg.norm(scene.zooms))
    view = scene.boundary_mm @ rotation.T
    col = np.clip(np.rint((xs[0] - view[:, 0]) / pixel_mm), 0, xs.size - 1).astype(np.int64)
    row = np.clip(np.rint((zs[0] - view[:, 2]) / pixel_mm), 0, zs.size - 1).astype(np.int64)
    # the per-pixel extremes through a flat index: numpy's ufunc.at is about 4x faster on one
    # 1-D index than on a (row, col) pair, and neither depends on the order
    pixel = row * xs.size + col
    nearest = np.full(zs.size * xs.size, -np.inf, dtype=np.float64)
    farthest = np.full(zs.size * xs.size, np.inf, dtype=np.float64)
    np.maximum.at(nearest, pixel, view[:, 1])
    np.minimum.at(farthest, pixel, view[:, 1])
    footprint = _footprint(reach, pixel_mm)
    nearest = ndimage.maximum_filter(nearest.reshape(zs.size, xs.size), footprint=footprint,
                                     mode="constant", cval=-np.inf).ravel()
    farthest = ndimage.minimum_filter(farthest.reshape(zs.size, xs.size), footprint=footprint,
                                      mode="constant", cval=np.inf).ravel()
    with np.errstate(invalid="ignore"):
        first = np.floor((ys[0] - (nearest + reach)) / RAY_STEP_MM) - 1
        last = np.ceil((ys[0] - (farthest - reach)) / RAY_STEP_MM) + 1
    seen = np.isfinite(nearest)
    first = np.where(seen, np.clip(first, 0, ys.size), ys.size)
    last = np.where(seen, np.clip(last, 0, ys.size - 1), 0)
    return first.astype(np.int64), last.astype(np.int64)


def _cast(scene: _Scene, yaw_deg: float, pitch_deg: float, pixel_mm: float) -> np.ndarray:
    """Depth map (mm toward the viewer from the head centre, NaN = no hit) of one view."""
    if pixel_mm <= 0:
        raise ValueError(f"pixel_mm must be positive, got {pixel_mm}")
    rotation = _rotation(yaw_deg, pitch_deg)
    rotated = scene.corners_mm @ rotation.T
    lo, hi = rotated.min(axis=0), rotated.max(axis=0)
    xs = np.arange(hi[0], lo[0] - 1e-6, -pixel_mm)  # column 0 = subject's right
    zs = np.arange(hi[2], lo[2] - 1e-6, -pixel_mm)  # row 0 = superior
    ys = np.arange(hi[1] + RAY_STEP_MM, lo[1] - RAY_STEP_MM, -RAY_STEP_MM, dtype=np.float32)
    zz, xx = np.meshgrid(zs, xs, indexing="ij")
    # view frame -> head voxel: v = offset + scale * (R^T q); split q into the ray's
    # (x, z) part and the depth (y) part, so that a sample is base + y * along
    inverse = rotation.T
    scale = 1.0 / scene.zooms
    offset = (scene.centre_mm - scene.origin_mm) * scale
    base = (
        (xx.ravel()[:, None] * inverse[:, 0] + zz.ravel()[:, None] * inverse[:, 2]) * scale + offset
    ).astype(np.float32)
    along = (inverse[:, 1] * scale).astype(np.float32)
    threshold = np.float32(scene.threshold)

    n_rays = base.shape[0]
    depth = np.full(n_rays, np.nan, dtype=np.float32)
    previous = np.zeros(n_rays, dtype=np.float32)
    # Rays join at the chunk that holds the sample before their first possible hit (so a
    # hit is never a joining ray's first sample, whose predecessor was not sampled) and
    # the samples before it in that chunk are read as usual: the result is that of
    # marching every ray from the front of the box. Rays that meet nothing never join, and
    # a ray leaves after the batch that holds its last possible hit: no later sample of it
    # is above the threshold, so it would have stayed a miss (NaN).
    first, last = _sample_span(scene, rotation, xs, zs, ys, pixel_mm)
    joins = np.maximum(first - 1, 0) // _CHUNK
    order = np.argsort(joins, kind="stable")
    starts = np.searchsorted(joins[order], np.arange(0, ys.size + _CHUNK, _CHUNK) // _CHUNK)
    active = np.zeros(0, dtype=np.int64)
    for chunk, start in enumerate(range(0, ys.size, _CHUNK)):
        joining = order[starts[chunk]:starts[chunk + 1]]
        joining = joining[first[joining] < ys.size]
        active = np.concatenate([active, joining])
        if active.size == 0:
            continue
        y_chunk = ys[start : start + _CHUNK]
        coords = base[active][:, None, :] + y_chunk[None, :, None] * along  # (a, k, 3)
        values = ndimage.map_coordinates(
            scene.volume,
            coords.reshape(-1, 3).T,
            order=1,
            mode="constant",
            cval=0.0,
            prefilter=False,
            output=np.float32,
        )
        values = values.reshape(active.size, y_chunk.size)
        above = values > threshold
        hit = above.any(axis=1)
        if hit.any():
            rows = np.flatnonzero(hit)
            k = above[rows].argmax(axis=1)
            v1 = values[rows, k]
            v0 = np.where(k > 0, values[rows, np.maximum(k - 1, 0)], previous[active[rows]])
            # linear crossing between the sample before (one step nearer) and this one
            frac = np.clip((v1 - threshold) / np.maximum(v1 - v0, 1e-12), 0.0, 1.0)
            depth[active[rows]] = y_chunk[k] + frac * RAY_STEP_MM
        previous[active] = values[:, -1]
        active = active[~hit & (last[active] >= start + _CHUNK)]
    return depth.reshape(zs.size, xs.size)


def face_depth(
    data: np.ndarray,
    zooms: Zooms,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    threshold: float | None = None,
    pixel_mm: float = 1.0,
) -> np.ndarray:
    """Depth map (mm) of the skin surface seen from the front, NaN where a ray misses.

    Same view, framing and arguments as :func:`render_face`. Values are the
    distance (mm) of the surface in front of the head centre, along the viewing
    direction (larger = nearer the viewer).
    """
    return _cast(_scene(data, zooms, threshold), yaw_deg, pitch_deg, pixel_mm)


def shade_depth(depth: np.ndarray, pixel_mm: float = 1.0,
                light_elevation_deg: float = LIGHT_ELEVATION_DEG) -> np.ndarray:
    """Shade a depth map like a portrait photo: a 2-D uint8 image, 0 where there is no hit.

    ``depth`` is in mm toward the viewer (NaN where the ray hit nothing), on pixels
    of ``pixel_mm`` mm, as :func:`face_depth` returns it. The surface normals come
    from the gradient of the depth map (central differences, after a Gaussian of
    ``DEPTH_SMOOTH_MM`` among hit pixels only). One directional light sits
    ``light_elevation_deg`` (default ``LIGHT_ELEVATION_DEG``, 30°) above the
    viewing direction (0 = a light at the viewer, which casts no shadow). Brightness is
    ``AMBIENT + (1 - AMBIENT) * max(n . l, 0)`` (Lambert, ``AMBIENT = 0.1``), and
    points that the surface hides from the light (under the brow, nose and chin)
    get the ambient term only: cast shadows, found with a running maximum down
    each image column. The light from above and the shadows make the eye sockets
    darker than the cheeks, as in a photograph, which the face detector relies on.
    Hit pixels are at least 1.
    """
    depth = np.asarray(depth, dtype=np.float32)
    hit = np.isfinite(depth)
    if not hit.any():
        return np.zeros(depth.shape, dtype=np.uint8)
    # rays that miss the head count as far behind it, so the silhouette rim shades dark
    filled = np.where(hit, depth, np.nanmin(depth) - 50.0).astype(np.float32)
    if DEPTH_SMOOTH_MM > 0:
        sigma = DEPTH_SMOOTH_MM / pixel_mm
        weight = ndimage.gaussian_filter(hit.astype(np.float32), sigma)
        smooth = ndimage.gaussian_filter(np.where(hit, depth, 0.0).astype(np.float32), sigma)
        filled = np.where(hit, smooth / np.maximum(weight, 1e-6), filled)
    if min(depth.shape) > 1:
        d_row, d_col = np.gradient(filled, pixel_mm)
    else:
        d_row = d_col = np.zeros_like(filled)
    # surface y = D(x, z); rows run toward -z and columns toward -x, so the
    # (unnormalized) outward normal (-dD/dx, 1, -dD/dz) is (d_col, 1, d_row)
    norm = np.sqrt(d_col**2 + d_row**2 + 1.0)
    elevation = np.deg2rad(light_elevation_deg)
    lambert = np.clip((np.cos(elevation) + np.sin(elevation) * d_row) / norm, 0.0, 1.0)
    if elevation > 0:
        # shadowed if a point above, in the same column, blocks the ray to the light:
        # D(r') - D(r) > (r - r') * pixel_mm / tan(elevation) for some r' < r
        rise = np.arange(depth.shape[0], dtype=np.float32)[:, None] * np.float32(
            pixel_mm / np.tan(elevation)
        )
        height = filled + rise
        above = np.maximum.accumulate(height, axis=0)
        above = np.vstack([np.full((1, depth.shape[1]), -np.inf, dtype=np.float32), above[:-1]])
        lambert = np.where(above > height + SHADOW_TOLERANCE_MM, 0.0, lambert)
    shade = AMBIENT + (1.0 - AMBIENT) * lambert
    image = np.where(hit, np.clip(shade * 255.0, 1.0, 255.0), 0.0)
    return np.rint(image).astype(np.uint8)


def render_faces(
    data: np.ndarray,
    zooms: Zooms,
    yaws: Sequence[float] = (0.0,),
    pitch_deg: float = 0.0,
    threshold: float | None = None,
    pixel_mm: float = 1.0,
) -> list[np.ndarray]:
    """:func:`render_face` at several yaw angles (degrees), smoothing the volume once."""
    scene = _scene(data, zooms, threshold)
    return [shade_depth(_cast(scene, float(yaw), pitch_deg, pixel_mm), pixel_mm) for yaw in yaws]


def render_views(
    data: np.ndarray,
    zooms: Zooms,
    views: Sequence[tuple[float, float, float]],
    threshold: float | None = None,
    pixel_mm: float = 1.0,
) -> list[np.ndarray]:
    """Renders of several ``(yaw_deg, pitch_deg, light_elevation_deg)`` views, smoothing once.

    Each view is :func:`render_face` at that yaw and pitch (degrees), shaded by
    :func:`shade_depth` with the light that many degrees above the viewing direction.
    Views that differ only by their light share one ray cast.
    """
    scene = _scene(data, zooms, threshold)
    depths: dict[tuple[float, float], np.ndarray] = {}
    for yaw, pitch, _ in views:
        if (float(yaw), float(pitch)) not in depths:
            depths[float(yaw), float(pitch)] = _cast(scene, float(yaw), float(pitch), pixel_mm)
    return [shade_depth(depths[float(yaw), float(pitch)], pixel_mm, float(light))
            for yaw, pitch, light in views]


def render_face(
    data: np.ndarray,
    zooms: Zooms,
    yaw_deg: float = 0.0,
    pitch_deg: float = 0.0,
    threshold: float | None = None,
    pixel_mm: float = 1.0,
) -> np.ndarray:
    """Shaded surface render of the head seen from the front: a 2-D uint8 image.

    ``data`` is a 3-D array in canonical RAS voxel order and ``zooms`` its voxel size
    in mm per axis (anisotropic voxels are fine: the geometry is done in mm). The
    viewer stands in front of the face and looks along -y (orthographic
    projection). Rows run from superior (top) to inferior. Columns run from the
    subject's right (image left) to the subject's left, like a photograph of the
    face. One pixel is ``pixel_mm`` mm, and the image frames the bounding box of
    the (rotated) head.

    The head is rotated about its centre (:func:`head_centre`), first by ``yaw_deg``
    about the superior axis, then by ``pitch_deg`` about the right axis. Both are
    right-handed: positive yaw turns the face toward the subject's left, so the
    viewer sees more of the right cheek; positive pitch lifts the chin.

    Each ray is marched in ``RAY_STEP_MM`` (1 mm) steps through the volume,
    smoothed with a Gaussian of ``SMOOTH_SIGMA_MM`` (1 mm, at least half a voxel)
    and sampled by trilinear interpolation
    (:func:`scipy.ndimage.map_coordinates`, order 1). Only rays that have not hit
    yet are sampled further. The first crossing of ``threshold`` (default
    :func:`skin_threshold`) is refined linearly between samples, and the depth map
    is shaded by :func:`shade_depth`. Pixels whose ray hits nothing are 0; hits
    are at least 1.
    """
    return render_faces(data, zooms, (yaw_deg,), pitch_deg, threshold, pixel_mm)[0]


def qc_figure(
    data: np.ndarray,
    zooms: Zooms,
    path: str | os.PathLike,
    title: str = "isyb: defaced output",
    threshold: float | None = None,
) -> None:
    """Write a PNG with a front surface render and three orthogonal slices.

    Use it on the **defaced** output only, never on an original face. ``data`` is a
    RAS array with voxel size ``zooms`` (mm). The four panels are: the front render
    of :func:`render_face`, then axial, coronal and sagittal slices through the head
    centre (:func:`head_centre`), drawn with their true aspect ratio in mm. The
    axial and coronal slices are shown as if facing the subject (subject's right on
    the image's left, anterior / superior at the top). The sagittal slice has
    anterior on the right. Grey levels run from 0 to the 99.5th percentile of the
    head. The file is written atomically (:func:`isyb.io.atomic_path`) with
    matplotlib's Agg backend, without touching pyplot's global state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from isyb.io import atomic_path

    data = np.asarray(data, dtype=np.float32)
    zooms = np.asarray(zooms, dtype=float).ravel()[:3]
    thr = skin_threshold(data) if threshold is None else float(threshold)
    render = render_face(data, zooms, threshold=thr)
    centre = np.clip(np.rint(head_centre(data, thr)).astype(int), 0, np.array(data.shape) - 1)
    ci, cj, ck = (int(c) for c in centre)
    head = data[data > thr]
    vmax = float(np.percentile(head, 99.5)) if head.size else float(data.max() or 1.0)
    wx, wy, wz = (n * z for n, z in zip(data.shape, zooms, strict=True))
    panels = [
        ("surface, front", render, render.shape[1] * 1.0, render.shape[0] * 1.0, 255.0),
        ("axial", data[::-1, ::-1, ck].T, wx, wy, vmax),  # rows: anterior at top
        ("coronal", data[::-1, cj, ::-1].T, wx, wz, vmax),  # rows: superior at top
        ("sagittal", data[ci, :, ::-1].T, wy, wz, vmax),  # columns: posterior -> anterior
    ]
    fig = Figure(figsize=(12, 3.6), dpi=100, facecolor="black")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    for ax, (name, image, width, height, top) in zip(axes, panels, strict=True):
        ax.imshow(
            image,
            cmap="gray",
            vmin=0.0,
            vmax=top,
            interpolation="nearest",
            extent=(0.0, float(width), 0.0, float(height)),
        )
        ax.set_title(name, fontsize=10, color="white")
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11, color="white")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", facecolor=fig.get_facecolor())
