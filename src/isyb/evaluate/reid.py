"""Re-identification attack: can a defaced face still be matched to its original?

The attack, step by step (what an adversary with the public isyb code and a
gallery of original scans could do):

1. **Normalise.** Each scan, gallery or probe, gets its *own* brain mask and its
   own 12-parameter affine registration to a head template
   (:func:`isyb.deface.engine.align`). The scan is then resampled into the
   template's RAS millimetre frame (:func:`face_descriptor`). This removes what
   the scanner and the positioning add (pose, position, voxel grid) and also the
   global head size and proportions, since an affine map rescales each axis:
   the attack has to use the shape of the face, not the size of the head.
2. **Describe.** In that frame the skin surface is found along rays that run
   from the front (+y, anterior) backwards, one ray per ``spacing_mm`` pixel of
   the (x, z) plane: the first crossing of the scan's own skin threshold
   (:func:`isyb.head.morphology.skin_threshold`) after a Gaussian of ``SMOOTH_MM``, refined
   linearly between samples. The descriptor is that depth map (template mm along
   y) over a fixed *face window*: the pixels where the template's own skin lies
   inside the template's face rule (:class:`isyb.templates.face.FaceRule`), which
   is the region every isyb defacing works on (brows to chin, cheek to cheek).
   The scalp, the ears, the back of the head and the neck are left out on
   purpose: the question is whether the *face* still identifies the person.
3. **Compare.** The probe's skin points are aligned to the gallery face's by a
   trimmed ICP with a similarity transform
   (:func:`isyb.evaluate.surface_match.align_surfaces`), which takes out what the
   template registration left of pose, position and scale
   (1-3 mm and 1-2 degrees at the face on the test heads). The distance is the
   root-mean-square of the 90% smallest point-to-surface distances after the
   fit (:func:`isyb.evaluate.surface_match.descriptor_distance`), in mm. With
   ``highpass_mm`` it compares only facial detail finer than that scale (a *detail* attack).
4. **Identify.** Every probe is ranked against every gallery entry
   (:func:`identification`); rank 1 means that the nearest gallery face is the
   probe's own. Chance is ``1/N`` for a gallery of ``N``.

Why a surface distance: a defaced MRI is matched against *MRI* faces, so the
attacker has full 3-D geometry on both sides and needs no photo-trained face
recogniser; the surface itself is the strongest evidence there is. This is the
design's "surface distance in the face region after alignment". Published
anchors for a photo-based attack: face recognition matched 83% of undefaced MRI
renders to photos (Schwarz et al., N Engl J Med 2019; 381:1684), and 28-38%
still matched after mri_deface, pydeface or fsl_deface (Schwarz et al.,
NeuroImage 2021; 231:117845).

The sanity check of the attack is :func:`isyb.synthetic.rescan.rescan`: an original scan as if the
person had been scanned again (other head pose, other voxel grid, fresh noise).
Re-scans must be identified far above chance, otherwise a near-chance result
after defacing means nothing.

Cohorts need different *faces*. :func:`isyb.synthetic.rescan.vary_face` gives a scan an individual
face: a smooth random displacement field of a few millimetres, confined to the
face region. The phantom's face is one shape scaled per axis, and an affine
registration undoes that scaling, so phantoms that differ only in length, width
and height are one face to this attack (which is correct: head size is not
identity, and the registration is meant to remove it).

Everything here is a plain function of arrays or :class:`isyb.io.Volume`\\ s;
nothing is written to disk. Descriptors of original faces are identifying
data: do not save them with shared results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, stats

from isyb.evaluate.surface_match import SPACING_MM, descriptor_distances, prepare_gallery
from isyb.head.morphology import skin_threshold
from isyb.head.register import resample_to
from isyb.io import Volume
from isyb.templates.face import FaceRule

if TYPE_CHECKING:
    from isyb.templates.registry import Template

#: Gaussian smoothing (sigma, mm) of the normalised volume before the skin is found.
SMOOTH_MM = 1.0
#: Margin (mm) added around the template's face window when the frame is built.
FRAME_MARGIN_MM = 5.0
#: How far (mm) in front of the template's face the rays start.
FRONT_MARGIN_MM = 40.0
#: High-pass scale (mm) of the detail attack: only facial detail finer than about this
#: (nose, lips, eyelids) is compared (``highpass_mm`` of :func:`distance_matrix`).
DETAIL_HIGHPASS_MM = 5.0


@dataclass(frozen=True)
class FaceFrame:
    """The pixel grid of face descriptors, fixed in a template's RAS mm frame.

    ``xs`` (columns, mm, Right: column 0 is the subject's right) and ``zs``
    (rows, mm, Superior: row 0 is the lowest, at the rule's chin plane) are the
    pixel centres; rays run along ``ys`` (mm, Anterior), from the front
    backwards. ``window`` (rows, columns) marks the face pixels: where the
    template's skin lies in its face region. ``template_depth`` is the
    template's own depth map (mm, NaN where its rays miss).
    """

    xs: np.ndarray
    ys: np.ndarray
    zs: np.ndarray
    window: np.ndarray
    template_depth: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of a descriptor."""
        return (self.zs.size, self.xs.size)

    @property
    def spacing_mm(self) -> float:
        """Pixel size and ray step (mm)."""
        return float(self.xs[1] - self.xs[0]) if self.xs.size > 1 else SPACING_MM


def _in_rule(points: np.ndarray, rule: FaceRule) -> np.ndarray:
    """Which template-mm points (..., 3) lie in the face region of ``rule`` (no ears, no neck)."""
    normal = np.asarray(rule.face_normal, dtype=float)
    return ((points @ normal > rule.face_offset) & (points[..., 1] > rule.back_y)
            & (points[..., 2] > rule.chin_z))


def _first_crossing(volume: np.ndarray, threshold: float, ys: np.ndarray) -> np.ndarray:
    """Depth (y, mm) of the first sample above ``threshold`` along axis 1, NaN where none.

    ``volume`` is (x, y, z) with ``ys`` the y of each sample along axis 1, which
    runs from the front backwards. The crossing is interpolated linearly
    between the last sample below and the first above. Returns (z, x).
    """
    above = volume > threshold
    hit = above.any(axis=1)
    first = above.argmax(axis=1)
    before = np.maximum(first - 1, 0)
    v1 = np.take_along_axis(volume, first[:, None, :], axis=1)[:, 0, :]
    v0 = np.take_along_axis(volume, before[:, None, :], axis=1)[:, 0, :]
    frac = np.where(first > 0, (threshold - v0) / np.maximum(v1 - v0, 1e-12), 1.0)
    frac = np.clip(frac, 0.0, 1.0)
    step = ys[1] - ys[0] if ys.size > 1 else -1.0
    depth = ys[before] + frac * step * (first > 0)
    depth = np.where(hit, depth, np.nan)
    return depth.T.astype(np.float32)


def _frame_grid(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> tuple[float, np.ndarray]:
    """(pixel size and ray step in mm, voxel -> template-mm affine) of a frame's (x, y, z) grid."""
    step = float(xs[1] - xs[0]) if xs.size > 1 else SPACING_MM
    grid = np.diag([step, -step, step, 1.0])
    grid[:3, 3] = (xs[0], ys[0], zs[0])
    return step, grid


def _sampled_in_frame(data: np.ndarray, affine: np.ndarray, subject_to_template: np.ndarray,
                      xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """A scan resampled (trilinear) onto the template-frame grid and smoothed: (x, y, z).

    The Gaussian is ``SMOOTH_MM`` or half the scan's largest voxel, whichever is
    larger, so that the voxel terraces of coarse scans do not show.
    """
    step, grid = _frame_grid(xs, ys, zs)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    sigma_mm = max(SMOOTH_MM, 0.5 * float(zooms.max()))
    sampled = resample_to(data, affine, (xs.size, ys.size, zs.size), grid,
                          np.linalg.inv(subject_to_template), order=1, cval=0.0)
    if sigma_mm > 0:
        sampled = ndimage.gaussian_filter(sampled, sigma_mm / step, mode="nearest",
                                          truncate=3.0)
    return sampled


def frame_mapping(affine: np.ndarray, subject_to_template: np.ndarray,
                  frame: FaceFrame) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset): frame voxel index -> scan voxel index, as :func:`frame_samples`
    hands them to :func:`scipy.ndimage.affine_transform` (the same floats)."""
    _, grid = _frame_grid(frame.xs, frame.ys, frame.zs)
    mapping = (np.linalg.inv(affine) @ np.linalg.inv(np.asarray(subject_to_template, float))
               @ grid)
    return mapping[:3, :3], mapping[:3, 3]


def frame_coordinates(matrix: np.ndarray, offset: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Scan voxel coordinates (3, n) of frame voxel indices ``index`` (3, n).

    The arithmetic of :func:`scipy.ndimage.affine_transform` (SciPy's
    ``NI_GeometricTransform``): ``offset[h] + i0 m[h, 0] + i1 m[h, 1] + i2 m[h, 2]``
    in float64, left to right, so :func:`scipy.ndimage.map_coordinates` at these
    coordinates reads the values an ``affine_transform`` of the whole frame gives at
    those voxels, to the bit (``tests/evaluate/test_frame_points.py``). The study
    reads the applied face mask only at the skin points this way
    (:func:`isyb.evaluate.face_distance.face_distances`).
    """
    index = np.asarray(index, dtype=np.float64)
    out = np.empty_like(index)
    for h in range(3):
        out[h] = offset[h] + index[0] * matrix[h, 0]
        out[h] = out[h] + index[1] * matrix[h, 1]
        out[h] = out[h] + index[2] * matrix[h, 2]
    return out


def sample_frame_points(data: np.ndarray, matrix: np.ndarray, offset: np.ndarray,
                        index: np.ndarray) -> np.ndarray:
    """Trilinear samples (float32) of ``data`` at frame voxels ``index`` (3, n): what
    :func:`isyb.head.register.resample_to` onto the whole frame gives there (same values)."""
    data = data.view(np.uint8) if data.dtype == bool else data.astype(np.float32, copy=False)
    return ndimage.map_coordinates(data, frame_coordinates(matrix, offset, index), order=1,
                                   mode="constant", cval=0.0, output=np.float32)


def face_frame(template_head: Volume, rule: FaceRule, *,
               spacing_mm: float = SPACING_MM) -> FaceFrame:
    """The descriptor grid and face window of a template (head volume + face rule).

    The template's head is depth-mapped in its own frame over a generous box
    (at most ±100 mm left-right, from the rule's chin plane to the top of the
    template's FOV, from the front of the FOV back to the rule's back plane).
    The window is the set of pixels whose skin point lies in the face region;
    the frame is cropped to the window's bounding box plus
    ``FRAME_MARGIN_MM``, and its rays start ``FRONT_MARGIN_MM`` in front of the
    template's most anterior face point. Use :func:`frame_for` with a prepared
    :class:`isyb.templates.registry.Template`.
    """
    data, affine = template_head.data, template_head.affine
    corners = np.array([[i, j, k] for i in (0, data.shape[0] - 1)
                        for j in (0, data.shape[1] - 1) for k in (0, data.shape[2] - 1)], float)
    world = corners @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    xs = np.arange(max(lo[0], -100.0), min(hi[0], 100.0) + 1e-6, spacing_mm)
    ys = np.arange(hi[1], rule.back_y - spacing_mm, -spacing_mm)
    zs = np.arange(rule.chin_z, hi[2] + 1e-6, spacing_mm)
    depth = _first_crossing(_sampled_in_frame(data, affine, np.eye(4), xs, ys, zs),
                            skin_threshold(data), ys)
    zz, xx = np.meshgrid(zs, xs, indexing="ij")
    points = np.stack([xx, np.nan_to_num(depth, nan=-1e6), zz], axis=-1)
    window = np.isfinite(depth) & _in_rule(points, rule)
    if not window.any():
        raise ValueError("the template's skin never enters its face region: no face window")
    rows, cols = np.flatnonzero(window.any(axis=1)), np.flatnonzero(window.any(axis=0))
    pad = int(np.ceil(FRAME_MARGIN_MM / spacing_mm))
    r0, r1 = max(rows[0] - pad, 0), min(rows[-1] + pad + 1, zs.size)
    c0, c1 = max(cols[0] - pad, 0), min(cols[-1] + pad + 1, xs.size)
    front = float(np.nanmax(np.where(window, depth, np.nan)))
    ys_out = np.arange(front + FRONT_MARGIN_MM, rule.back_y - spacing_mm, -spacing_mm)
    return FaceFrame(xs=xs[c0:c1], ys=ys_out, zs=zs[r0:r1], window=window[r0:r1, c0:c1],
                     template_depth=depth[r0:r1, c0:c1])


def frame_for(template: Template) -> FaceFrame:
    """:func:`face_frame` of a prepared :class:`isyb.templates.registry.Template`."""
    head, _ = template.load()
    return face_frame(head, template.rule)


def face_descriptor(volume: Volume, subject_to_template: np.ndarray, frame: FaceFrame, *,
                    threshold: float | None = None) -> np.ndarray:
    """Depth map (mm, template frame) of a scan's face: the attack's descriptor.

    ``subject_to_template`` (4x4) maps the scan's RAS mm to template RAS mm
    (``align(volume, template).registration.subject_to_template``). The scan is
    resampled (trilinear) onto the frame's grid in template space, smoothed with
    a Gaussian of ``SMOOTH_MM`` (1 mm) or half the scan's largest voxel size if
    that is more (which hides the voxel terraces of coarse scans), and each ray,
    from the front backwards, stops at the first crossing of ``threshold``
    (default: the scan's own :func:`isyb.head.morphology.skin_threshold`). The value is
    the template-frame y (mm, anterior) of that crossing. Returns a float32
    array of ``frame.shape``, NaN outside the face window and where a ray hits
    nothing.
    """
    thr = skin_threshold(volume.data) if threshold is None else float(threshold)
    return samples_descriptor(frame_samples(volume, subject_to_template, frame), frame, thr)


def frame_samples(volume: Volume, subject_to_template: np.ndarray,
                  frame: FaceFrame) -> np.ndarray:
    """The scan as :func:`face_descriptor` reads it: resampled (trilinear) onto ``frame``'s
    grid in template space and smoothed; float32 (x, y, z), intensities in the scan's units.

    Computed once, it gives the descriptors of several thresholds
    (:func:`samples_descriptor`): ``isyb study`` reads the defaced head at the
    original's threshold (face distances) and at its own (the descriptor).
    """
    return _sampled_in_frame(volume.data, volume.affine, np.asarray(subject_to_template, float),
                             frame.xs, frame.ys, frame.zs)


def samples_descriptor(samples: np.ndarray, frame: FaceFrame, threshold: float) -> np.ndarray:
    """:func:`face_descriptor` of :func:`frame_samples` at ``threshold`` (the scan's units)."""
    depth = _first_crossing(samples, float(threshold), frame.ys)
    # a ray that only hits at the far end of the frame went through a hole: no surface
    depth[depth <= frame.ys[-1] + frame.spacing_mm] = np.nan
    depth[~frame.window] = np.nan
    return depth


def distance_matrix(gallery: list[np.ndarray], probes: list[np.ndarray],
                    **kwargs: float) -> np.ndarray:
    """``D[i, j]`` = :func:`descriptor_distance` of probe ``i`` to gallery entry ``j`` (mm).

    Keyword arguments go to :func:`descriptor_distance`; each gallery entry's
    point tree is built once.
    """
    highpass_mm = kwargs.pop("highpass_mm", None)
    return distance_matrices(gallery, probes, highpass=(highpass_mm,), **kwargs)[highpass_mm]


def distance_matrices(gallery: list[np.ndarray], probes: list[np.ndarray], *,
                      highpass: Sequence[float | None] = (None, DETAIL_HIGHPASS_MM),
                      **kwargs: float) -> dict[float | None, np.ndarray]:
    """:func:`distance_matrix` for each ``highpass_mm`` in ``highpass`` (``None``: the
    surface attack; by default also the detail attack), keyed by it: one ICP alignment
    per probe and gallery entry serves every setting
    (:func:`isyb.evaluate.surface_match.descriptor_distances`), half the time of two
    :func:`distance_matrix` calls for the surface and the detail attack. Column ``j`` is
    :func:`distance_column` of gallery entry ``j``."""
    settings = tuple(dict.fromkeys(highpass))
    out = {setting: np.empty((len(probes), len(gallery))) for setting in settings}
    for j, entry in enumerate(gallery):
        column = distance_column(entry, probes, highpass=settings, **kwargs)
        for setting in settings:
            out[setting][:, j] = column[setting]
    return out


def distance_column(entry: np.ndarray, probes: Sequence[np.ndarray], *,
                    highpass: Sequence[float | None] = (None,),
                    **kwargs: float) -> dict[float | None, np.ndarray]:
    """The distances (mm) of every probe to one gallery entry, per ``highpass`` setting:
    one column of :func:`distance_matrices`, with the entry's point tree built once. The
    unit of work that ``isyb study`` hands to its executor."""
    settings = tuple(dict.fromkeys(highpass))
    prepared = prepare_gallery(entry, spacing_mm=float(kwargs.get("spacing_mm", SPACING_MM)))
    out = {setting: np.empty(len(probes)) for setting in settings}
    for i, probe in enumerate(probes):
        values = descriptor_distances(probe, entry, highpass=settings, prepared=prepared,
                                      **kwargs)
        for setting, value in zip(settings, values, strict=True):
            out[setting][i] = value
    return out


def identification(gallery: list[np.ndarray], probes: list[np.ndarray], *,
                   truth: list[int] | None = None, distances: np.ndarray | None = None,
                   **kwargs: float) -> dict:
    """Closed-set identification of ``probes`` against ``gallery`` (rank-1 rate and ranks).

    ``distances`` may be given (probes x gallery), else :func:`distance_matrix`
    computes it; :func:`identification_from_distances` does the rest and says what
    is returned.
    """
    if not gallery or not probes:
        raise ValueError("identification needs a non-empty gallery and probe set")
    truth = _truth(truth, len(probes), len(gallery))
    matrix = distance_matrix(gallery, probes, **kwargs) if distances is None else distances
    if np.shape(matrix) != (len(probes), len(gallery)):
        raise ValueError(f"distances must be {len(probes)}x{len(gallery)}, "
                         f"got {np.shape(matrix)}")
    return identification_from_distances(matrix, truth=truth)


def identification_from_distances(distances: np.ndarray, *,
                                  truth: list[int] | None = None) -> dict:
    """Closed-set identification from a (probes x gallery) matrix of distances (mm).

    ``probes[i]`` belongs to gallery entry ``truth[i]`` (default ``i``: same
    order, same subjects). Ties are broken at random *in
    expectation*: a probe whose true entry ties with ``k - 1`` others at the
    smallest distance counts ``1/k`` toward the rank-1 rate, and its rank is the
    mean rank of the tie. Returns ``{"rank1", "chance", "n", "hits",
    "p_value", "distances", "ranks"}``: ``rank1`` in 0..1, ``chance = 1/N``
    (N = gallery size), ``n`` = number of probes, ``hits`` = expected number of
    probes at rank 1, and ``p_value``, the one-sided binomial probability of at
    least ``floor(hits)`` rank-1 matches by chance.
    """
    matrix = np.asarray(distances, dtype=float)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"distances must be a non-empty probes x gallery matrix, "
                         f"got shape {matrix.shape}")
    n_probes, n_gallery = matrix.shape
    truth = _truth(truth, n_probes, n_gallery)
    ranks = np.empty(n_probes)
    hits = 0.0
    for i, j in enumerate(truth):
        row = matrix[i]
        own = row[j]
        if not np.isfinite(own):
            less = int(np.sum(np.isfinite(row)))
            ties = int(np.sum(~np.isfinite(row)))
        else:
            less = int(np.sum(row < own))
            ties = int(np.sum(row == own))
        ranks[i] = less + (ties + 1) / 2.0
        if less == 0:
            hits += 1.0 / ties
    chance = 1.0 / n_gallery
    p_value = float(stats.binom.sf(int(np.floor(hits + 1e-9)) - 1, n_probes, chance))
    return {"rank1": hits / n_probes, "chance": chance, "n": n_probes, "hits": hits,
            "p_value": p_value, "distances": matrix, "ranks": ranks}


def _truth(truth: list[int] | None, n_probes: int, n_gallery: int) -> list[int]:
    """Each probe's gallery entry (default: the same index), checked."""
    truth = list(range(n_probes)) if truth is None else [int(t) for t in truth]
    if len(truth) != n_probes or max(truth) >= n_gallery or min(truth) < 0:
        raise ValueError("truth must name one gallery entry per probe")
    return truth
