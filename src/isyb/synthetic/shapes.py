"""Signed distance functions and voxel grids for building phantom heads.

Distances are in mm, negative inside; arguments broadcast. Shapes are
painted into label volumes box by box (:func:`union_into`,
:func:`subtract_into`), so each costs only the voxels near it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def sd_ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray,
                  c: Sequence[float], r: Sequence[float]) -> np.ndarray:
    """Approximate SDF of an axis-aligned ellipsoid (exact on its axes and surface)."""
    px, py, pz = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = np.sqrt(px * px + py * py + pz * pz)
    k1 = np.sqrt((px / r[0]) ** 2 + (py / r[1]) ** 2 + (pz / r[2]) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def sd_ellipse2(x: np.ndarray, y: np.ndarray, c: Sequence[float],
                 r: Sequence[float]) -> np.ndarray:
    """Approximate SDF of an infinite elliptic cylinder along z (2-D ellipse in x, y)."""
    px, py = (x - c[0]) / r[0], (y - c[1]) / r[1]
    k0 = np.sqrt(px * px + py * py)
    k1 = np.sqrt((px / r[0]) ** 2 + (py / r[1]) ** 2)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)


def sd_round_cone(x: np.ndarray, y: np.ndarray, z: np.ndarray, a: Sequence[float],
                   b: Sequence[float], r1: float, r2: float) -> np.ndarray:
    """Exact SDF of a round cone: spheres of radius r1 at a and r2 at b, and their hull."""
    ba = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    l2 = float(ba @ ba)
    rr = r1 - r2
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    t = pax * ba[0] + pay * ba[1] + paz * ba[2]
    u = t - l2
    x2 = ((pax * l2 - ba[0] * t) ** 2 + (pay * l2 - ba[1] * t) ** 2
          + (paz * l2 - ba[2] * t) ** 2)
    y2 = t * t * l2
    z2 = u * u * l2
    k = np.sign(rr) * rr * rr * x2
    d_side = (np.sqrt(x2 * a2 * il2) + t * rr) * il2 - r1
    d_b = np.sqrt(x2 + z2) * il2 - r2
    d_a = np.sqrt(x2 + y2) * il2 - r1
    return np.where(np.sign(u) * a2 * z2 > k, d_b, np.where(np.sign(t) * a2 * y2 < k, d_a, d_side))


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (smooth union of SDFs); equals min where |a-b| >= k."""
    out = np.minimum(a, b)
    if k <= 0:
        return out
    h = np.subtract(a, b)
    np.abs(h, out=h)
    np.subtract(np.float32(k), h, out=h)
    np.maximum(h, np.float32(0.0), out=h)
    h *= h
    h *= np.float32(0.25 / k)
    out -= h
    return out


def smax(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth maximum (smooth intersection of SDFs)."""
    return -smin(-a, -b, k)


def sd_quadrant(u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    """SDF of the region {u > 0 and v > 0} with its corner rounded by ``radius`` (mm)."""
    qu, qv = radius - u, radius - v
    outside = np.sqrt(np.maximum(qu, 0.0) ** 2 + np.maximum(qv, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qu, qv), 0.0) - radius


@dataclass
class Grid:
    xs: np.ndarray  # world mm of the voxel centres along each axis (float32)
    ys: np.ndarray
    zs: np.ndarray

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres lie in [lo, hi] (world mm)."""
        sl = []
        for axis, lo_i, hi_i in zip((self.xs, self.ys, self.zs), lo, hi, strict=True):
            i0 = int(np.searchsorted(axis, lo_i, side="left"))
            i1 = int(np.searchsorted(axis, hi_i, side="right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
        return sl[0], sl[1], sl[2]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable world coordinates (x, y, z) of a box."""
        return (self.xs[sl[0], None, None], self.ys[None, sl[1], None],
                self.zs[None, None, sl[2]])


Sdf = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def ellipsoid_bounds(c: Sequence[float], r: Sequence[float],
                      margin: float) -> tuple[list[float], list[float]]:
    return ([c[i] - r[i] - margin for i in range(3)], [c[i] + r[i] + margin for i in range(3)])


def union_into(out: np.ndarray, grid: Grid, sdf: Sdf, lo: Sequence[float],
                hi: Sequence[float], k: float) -> None:
    """``out = smin(out, sdf, k)`` over the box [lo, hi] (world mm).

    The box must hold every voxel where ``sdf < k`` so that skipping the
    rest of the grid changes no inside/outside decision.
    """
    sl = grid.box(lo, hi)
    if sl is None:
        return
    out[sl] = smin(out[sl], sdf(*grid.coords(sl)).astype(np.float32), k)


def subtract_into(out: np.ndarray, grid: Grid, sdf: Sdf, lo: Sequence[float],
                   hi: Sequence[float]) -> None:
    """``out = max(out, -sdf)`` (carve a shape out) over the box [lo, hi]."""
    sl = grid.box(lo, hi)
    if sl is None:
        return
    out[sl] = np.maximum(out[sl], -sdf(*grid.coords(sl)).astype(np.float32))



@dataclass
class Geometry:
    """Scaled shape parameters (world mm) of one head."""

    sx: float
    sy: float
    sz: float

    def p(self, x: float, y: float, z: float) -> tuple[float, float, float]:
        """A reference-head point scaled to this head."""
        return (x * self.sx, y * self.sy, z * self.sz)

    @property
    def s_mean(self) -> float:
        return float((self.sx * self.sy * self.sz) ** (1.0 / 3.0))

    # Cranium: vertex at z = +100, forehead at y = +95, sides at x = +-75 (reference).
    @property
    def cranium(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (0.0, 0.0, 0.0), self.p(75.0, 95.0, 100.0)

    def base_ellipsoids(self) -> list[tuple[tuple[float, ...], tuple[float, ...], float]]:
        """(centre, radii, smoothing k) of the ellipsoids added to the cranium."""
        p = self.p
        return [
            (p(0, 78, -4), p(48, 14, 9), 6.0),  # brow ridge
            (p(0, 46, -52), p(50, 44, 34), 10.0),  # mid face / maxilla
            (p(36, 60, -40), p(24, 20, 17), 8.0),  # right cheek
            (p(-36, 60, -40), p(24, 20, 17), 8.0),  # left cheek
            (p(0, 32, -86), p(52, 50, 30), 10.0),  # mandible / lower face
            (p(0, 70, -108), p(20, 13, 17), 8.0),  # chin (menton at z = -125)
        ]

    # Neck: elliptic cylinder below the head, down to the bottom of the FOV.
    @property
    def neck(self) -> tuple[tuple[float, float], tuple[float, float], float]:
        return (0.0, -8.0 * self.sy), (52.0 * self.sx, 50.0 * self.sy), -70.0 * self.sz

    @property
    def neck_top_z(self) -> float:
        """Soft tissue inside the neck cylinder below this z is labelled NECK."""
        return -108.0 * self.sz

    @property
    def eye_radius(self) -> float:
        return 12.0 * self.s_mean

    def eyes(self) -> list[tuple[float, ...]]:
        return [self.p(32, 70, -20), self.p(-32, 70, -20)]

    def sockets(self) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
        """Ellipsoids carved out of the face in front of each eye (eye sockets)."""
        return [(self.p(sign * 32, 86, -20), self.p(17, 8, 12)) for sign in (1, -1)]

    # Intracranial volume: cranium shrunk by skin + skull, minus the region in
    # front of y_cut and below z_cut (orbits, nose and face under the frontal lobe).
    @property
    def icv_cut(self) -> tuple[float, float]:
        return 46.0 * self.sy, 4.0 * self.sz

    def ventricles(self) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
        return [(self.p(sign * 9, 0, 12), self.p(5, 24, 9)) for sign in (1, -1)]

    # Features
    @property
    def nose(self) -> tuple[tuple[float, ...], tuple[float, ...], float, float,
                            tuple[float, ...], tuple[float, ...]]:
        """Bridge round cone (a, b, r1, r2) and alae ellipsoid (centre, radii)."""
        s = self.s_mean
        return (self.p(0, 88, -18), self.p(0, 104, -50), 5.0 * s, 8.0 * s,
                self.p(0, 92, -52), self.p(16, 10, 7))

    def lips(self) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
        return [(self.p(0, 86, -66), self.p(25, 7, 6)),  # upper lip
                (self.p(0, 84, -78), self.p(22, 6.5, 6))]  # lower lip

    def ears(self) -> list[tuple[tuple[float, ...], tuple[float, ...]]]:
        return [(self.p(sign * 80, -10, -22), self.p(9, 15, 30)) for sign in (1, -1)]


def grid_axes(voxel_size: np.ndarray, fov_mm: np.ndarray,
               center: np.ndarray) -> tuple[Grid, np.ndarray]:
    n = np.maximum(np.round(fov_mm / voxel_size).astype(int), 1)
    origin = center - (n - 1) / 2.0 * voxel_size
    axes = [(origin[i] + np.arange(n[i]) * voxel_size[i]).astype(np.float32) for i in range(3)]
    affine = np.eye(4)
    affine[:3, :3] = np.diag(voxel_size)
    affine[:3, 3] = origin
    return Grid(*axes), affine


def bias_field(grid: Grid, amplitude: float) -> np.ndarray:
    """Smooth multiplicative field 1 + amplitude * b(x, y, z), with |b| <= 1 over the FOV."""
    def norm(a: np.ndarray) -> np.ndarray:
        span = max(float(a[-1] - a[0]), 1e-6)
        return (2.0 * (a - a[0]) / span - 1.0).astype(np.float32)

    xn = norm(grid.xs)[:, None, None]
    yn = norm(grid.ys)[None, :, None]
    zn = norm(grid.zs)[None, None, :]
    b = 0.35 * xn + 0.25 * yn - 0.3 * zn + 0.1 * (xn * xn - yn * yn)
    return (1.0 + amplitude * b).astype(np.float32)

