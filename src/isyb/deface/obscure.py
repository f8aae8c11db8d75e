"""Ways to obscure the face region, as plain functions on RAS arrays.

* ``blur`` (default, after NRG mask_face): inside the face region, the skin
  layer is rebuilt: its outline is the *registered template's* head outline
  smoothed at a scale of centimetres and levelled so that it lies on the
  template's face skin on average (:class:`TemplateOutline`, carried into
  subject space by the registration's affine), and its content is the tissue
  intensity blurred. Over :data:`BLEND_MM` inside the region's border the
  outline passes smoothly into the subject's own smoothed outline, so the
  head stays continuous and plausible for downstream tools; the face itself
  has no nose, lips, brows or eye sockets, and its shape is the template's.
  Head tissue within :data:`SEAL_MM` of the brain guard stays tissue
  (:func:`guard_cover`), so no pit opens where the outline passes behind a
  thin scalp.
* ``remove`` (after pydeface): the face region is set to zero, except a
  wall along its back surface (:func:`sealing_layer`: :data:`SEAL_MM` thick,
  spanning the cavities the cut opens), set to the region's median tissue
  value, so a render shows a plain surface rather than the sinuses, nasal
  cavity and mouth the cut opens.
* ``noise`` (after MiDeFace): the same outline as ``blur``, filled with values
  drawn from the intensities of the head tissue in the face region, so the
  histogram stays plausible but no facial surface remains.

Why the template's outline and not the subject's (the design notes ask only
for a smoothed skin layer, as NRG mask_face does): with the subject's own
outline smoothed at 16 mm the coarse face shape survived, and a surface
matching attack after affine normalisation (:mod:`isyb.evaluate.reid`)
re-identified 5 of 12 faces (chance 1 of 12). The issue requires
re-identification near chance after defacing, so the face shape is replaced,
as mri_reface and the AFNI refacer do with a population face; the template is
already registered, so this costs no extra registration. The brain guard
still wins: voxels in it keep the subject's values, whatever the outline.

Every method returns the new array and the boolean mask of voxels it was
allowed to change; the brain guard is already removed from that mask.

The smooth fields (outlines, blurred tissue, distance to the skin, blend
weight) vary on a scale of centimetres, so they are computed on a grid of
about :data:`COARSE_MM` and interpolated back (linear): about 30 times less
work than at 1 mm, with outline errors well under a millimetre. The
template's outline is built once on such a grid in template space and cached
(:mod:`isyb.templates.outline`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from isyb.head.morphology import (
    bounding_box,
    close_mm,
    coarse_factors,
    dilate_mm,
    distance_mm,
    downsample,
    signed_distance,
    smooth_envelope,
    upsample,
)
from isyb.templates.outline import TemplateOutline

METHODS = ("blur", "remove", "noise")
#: Width (mm) of the band along the face region's border over which the
#: template's outline gives way to the subject's own.
BLEND_MM = 10.0
#: Width (mm) of the band inside the region's border (the guard's edge
#: included) over which ``blur`` and ``noise`` values pass from the original
#: ones to the new ones, so the intensities leave no crease either (issue 15).
SEAM_MM = 4.0
#: Thickness (mm) of the wall ``remove`` leaves along the region's back surface.
SEAL_MM = 3.0
#: Radius (mm) of the ball that closes the head before ``remove``'s cut, so that its wall
#: spans the nasal cavity, the mouth and the sinuses (:func:`sealing_layer`).
SPAN_MM = 15.0
#: Grid (mm, about) on which that closing is done: the cavities it spans are centimetres wide.
SPAN_GRID_MM = 4.0
#: Added to a distance limit so that a voxel exactly that far (a 3 mm neighbour on a
#: 3 mm grid, whose Euclidean distance transform reads 3.000000000000011) is within it.
DISTANCE_TOLERANCE_MM = 1e-6


def tissue_blur(data: np.ndarray, head: np.ndarray, zooms: np.ndarray,
                sigma_mm: float) -> np.ndarray:
    """Gaussian blur of head tissue only (normalised convolution).

    Air does not darken the result near the surface: each value is the
    weighted mean of nearby *tissue* intensities. Where almost no tissue lies
    within reach of the Gaussian (total weight under 1e-3, more than about
    3.7 sigma away), the value of the nearest voxel that has some is used.
    """
    sigma = sigma_mm / np.asarray(zooms, dtype=float)
    inside = head.astype(np.float32)
    numerator = ndimage.gaussian_filter(data * inside, sigma, mode="nearest")
    denominator = ndimage.gaussian_filter(inside, sigma, mode="nearest")
    valid = denominator > 1e-3
    blurred = numerator / np.maximum(denominator, 1e-3)
    if valid.any() and not valid.all():
        nearest = ndimage.distance_transform_edt(~valid, sampling=zooms, return_distances=False,
                                                 return_indices=True)
        blurred = blurred[tuple(nearest)]
    return blurred


def outline_weight(face: np.ndarray, zooms: np.ndarray, blend_mm: float) -> np.ndarray:
    """Weight (0..1) of the template's outline: 1 deep in ``face``, 0 outside it.

    It rises with the distance (mm) to the nearest voxel outside ``face`` as a
    smoothstep over ``blend_mm``, so the outline passes from the subject's own to
    the template's without a step. The array border does not count as outside:
    a face region that the field of view cuts off continues beyond it.
    """
    if not face.any():
        return np.zeros(face.shape, dtype=np.float32)
    if face.all():
        return np.ones(face.shape, dtype=np.float32)
    distance = distance_mm(face, zooms)
    ramp = np.clip(distance / max(blend_mm, 1e-6), 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def blended_envelope(head_coarse: np.ndarray, coarse_zooms: np.ndarray, smooth_mm: float,
                     face_coarse: np.ndarray | None = None,
                     outline: TemplateOutline | None = None,
                     coarse_to_template: np.ndarray | None = None,
                     blend_mm: float = BLEND_MM) -> np.ndarray:
    """The outline the face gets, on the coarse grid (float, > 0.5 is inside).

    Without ``outline`` it is the subject's own :func:`smooth_envelope`. With
    it, the template's smoothed outline is carried onto the coarse grid
    through ``coarse_to_template`` (coarse voxel index -> template RAS mm,
    trilinear) and mixed with the subject's by :func:`outline_weight` of
    ``face_coarse``: ``w * template + (1 - w) * subject``. Both fields fall
    smoothly (about 2.5 % per mm at the surface for the default 16 mm) across
    their outlines, so the mix moves the outline gradually from one to the
    other. The template's outline reaches beyond its field of view
    (:data:`isyb.templates.outline.EXTEND_MM`); past that, the subject's
    outline is kept, and the weight falls to 0 over ``blend_mm`` before it, so
    that edge leaves no step either.
    """
    own = smooth_envelope(head_coarse, coarse_zooms, smooth_mm)
    if outline is None or face_coarse is None or coarse_to_template is None:
        return own
    mapping = np.linalg.inv(outline.affine) @ coarse_to_template
    carried = ndimage.affine_transform(outline.field.astype(np.float32, copy=False),
                                       mapping[:3, :3], offset=mapping[:3, 3],
                                       output_shape=head_coarse.shape, order=1, mode="constant",
                                       cval=np.nan)
    inside_fov = np.isfinite(carried)
    weight = outline_weight(face_coarse & inside_fov, coarse_zooms, blend_mm)
    return np.where(inside_fov, weight * carried + (1.0 - weight) * own, own).astype(np.float32)


def sealing_layer(region: np.ndarray, head: np.ndarray, zooms: np.ndarray,
                  seal_mm: float = SEAL_MM, span_mm: float = SPAN_MM) -> np.ndarray:
    """The voxels of ``region`` that close the cut ``remove`` leaves with a plain wall.

    ``remove`` zeroes the region, which opens the head: a surface render
    then looks through the cut into sinuses and the nasal cavity (issue 15).
    The wall is the voxels of ``region`` within ``seal_mm`` (at least one
    voxel) of the head left behind the cut, filled with one tissue value.
    That head is ``head`` closed with a ball of ``span_mm``
    (:func:`isyb.head.morphology.close_mm`) before the region is taken out:
    the nasal cavity, the mouth and the sinuses open to the outside air
    through the nostrils, the lips or the airway, so the solid head
    (:func:`isyb.head.morphology.head_mask`) does not hold them, and a wall
    along it alone lined them, leaving pits the shape of the face's openings
    behind the cut, which a face detector read as eyes, nose and mouth
    (MTCNN, p 0.89, on mne-sample). Closed first, the wall spans them.

    Distances are Euclidean in mm (:func:`isyb.head.morphology.dilate_mm`),
    computed in the region's bounding box; the closing is done on a grid of
    about :data:`SPAN_GRID_MM` and interpolated back (linear).
    """
    if not region.any():
        return np.zeros(region.shape, dtype=bool)
    zooms = np.asarray(zooms, dtype=float)
    reach = max(seal_mm, float(zooms.max())) + DISTANCE_TOLERANCE_MM
    box = bounding_box(region, np.ceil(reach / zooms).astype(int) + 1)
    solid = head[box]
    if span_mm > 0 and solid.any():
        # the closing needs the head up to span_mm around the region: a wider box
        wide = bounding_box(region, np.ceil((reach + span_mm) / zooms).astype(int) + 1)
        factors = coarse_factors(zooms, SPAN_GRID_MM)
        closed = close_mm(downsample(head[wide], factors) > 0.5, zooms * factors, span_mm)
        closed = upsample(closed.astype(np.float32), factors, head[wide].shape) > 0.5
        inner = tuple(slice(b.start - w.start, b.stop - w.start)
                      for b, w in zip(box, wide, strict=True))
        solid = solid | closed[inner]
    out = np.zeros(region.shape, dtype=bool)
    out[box] = region[box] & dilate_mm(solid & ~region[box], zooms, reach)
    return out


def guard_cover(region: np.ndarray, guard: np.ndarray, exposed: np.ndarray,
                zooms: np.ndarray, cover_mm: float = SEAL_MM) -> np.ndarray:
    """The voxels of ``exposed`` (head tissue the new outline leaves out) in ``region``
    within ``cover_mm`` (at least one voxel) of ``guard``: they stay tissue.

    The brain guard keeps its voxels, and its front may lie in dark bone or fat
    under a thin scalp. Where the new outline passes at or behind the guard
    there, writing air over the scalp would open a pit down to the dark layer,
    through which a render sees the brain: on mne-sample (3 mm voxels) a
    template's forehead outline crossing the 6 mm scalp left one row of
    scalp voxels as air and a 14-19 mm groove in the frontal depth map
    (issue 15). Kept as tissue, the scalp over the guard stays at least
    ``cover_mm`` thick wherever the subject had it, so the new surface is the
    outer of the outline and that cover: continuous, with no step. It
    follows the guard (the brain dilated), never the face. Distances are
    Euclidean in mm, computed in the bounding box of ``exposed``.
    """
    candidates = exposed & region
    if not candidates.any() or not guard.any():
        return np.zeros(region.shape, dtype=bool)
    zooms = np.asarray(zooms, dtype=float)
    reach = max(cover_mm, float(zooms.max())) + DISTANCE_TOLERANCE_MM
    box = bounding_box(candidates, np.ceil(reach / zooms).astype(int) + 1)
    out = np.zeros(region.shape, dtype=bool)
    out[box] = candidates[box] & dilate_mm(guard[box], zooms, reach)
    return out


def outline_fraction(field: np.ndarray, fine: np.ndarray, envelope: np.ndarray,
                     treat: np.ndarray, factors: np.ndarray, coarse_zooms: np.ndarray,
                     zooms: np.ndarray) -> np.ndarray:
    """The share of each ``treat`` voxel that lies inside the new outline (0..1, float32).

    ``field`` is the outline on the coarse grid (> 0.5 inside), ``fine`` its
    linear upsampling to the voxels and ``envelope`` the voxels taken as inside
    (``fine > 0.5``, plus any the guard's cover adds, which count as wholly
    inside). A voxel the surface crosses gets the share of its width, along the
    outline's normal, that lies inside: ``0.5 + (fine - 0.5) / (|grad| * w)``,
    clipped, with ``|grad|`` the field's gradient (per mm, from the coarse
    voxel it lies in) and ``w`` the voxel's extent along the normal. Cut at 0.5
    with no partial volume, the new surface was a staircase of whole voxels,
    whose 1-voxel terraces a render shows (and a depth map counts as steps of up
    to a voxel where a border crosses them: 1.06 mm on the 1.5 mm phantom at a
    template's field-of-view edge, issue 15); written as partial volume, the
    surface lies where the outline is, between voxels.
    """
    share = envelope[treat].astype(np.float32)
    band = treat & (np.abs(fine - 0.5) < 0.25) & ~(envelope & (fine <= 0.5))
    if not band.any():
        return share
    index = np.nonzero(band)
    coarse = tuple(np.clip((position - factor // 2 + factor / 2.0) // factor, 0, size - 1)
                   .astype(int)
                   for position, factor, size in zip(index, factors, field.shape, strict=True))
    lo = [np.maximum(c - 1, 0) for c in coarse]
    hi = [np.minimum(c + 1, size - 1) for c, size in zip(coarse, field.shape, strict=True)]
    gradient = np.empty((index[0].size, 3), dtype=np.float64)
    for axis in range(3):
        upper = list(coarse)
        lower = list(coarse)
        upper[axis], lower[axis] = hi[axis], lo[axis]
        span = np.maximum(hi[axis] - lo[axis], 1) * coarse_zooms[axis]
        gradient[:, axis] = (field[tuple(upper)] - field[tuple(lower)]) / span
    size = np.linalg.norm(gradient, axis=1)
    width = np.abs(gradient) @ np.asarray(zooms, dtype=float) / np.maximum(size, 1e-12)
    part = np.clip(0.5 + (fine[index] - 0.5) / np.maximum(size * width, 1e-6), 0.0, 1.0)
    full = np.zeros(treat.shape, dtype=np.float32)
    full[index] = part
    share[band[treat]] = full[treat][band[treat]]
    return share


def obscure(data: np.ndarray, region: np.ndarray, method: str, zooms: np.ndarray, *,
            head: np.ndarray, layer_mm: float = 8.0, smooth_mm: float = 16.0,
            seed: int = 0, outline: TemplateOutline | None = None,
            voxel_to_template: np.ndarray | None = None, face: np.ndarray | None = None,
            blend_mm: float = BLEND_MM,
            guard: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Obscure ``region`` of ``data`` with ``method``; return (new data, changed-allowed mask).

    ``region`` is the face region minus the brain guard; ``head`` the head
    tissue mask. ``blur`` and ``noise`` give the face a new outline: the
    template's smoothed outline (``outline``, placed by ``voxel_to_template``,
    the 4x4 from ``data``'s voxel indices to template RAS mm), blended into the
    subject's own smoothed outline over ``blend_mm`` inside the border of
    ``face`` (the face region before the guard is cut out; default
    ``region``); see :func:`blended_envelope`. Without ``outline`` the new
    outline is the subject's own, smoothed with a Gaussian of ``smooth_mm``
    (sigma). They treat the skin layer (``layer_mm`` on either side of the
    old surface and of the new one, so no inner anatomy, such as a dark
    eyeball, is left just under the new surface) plus every voxel whose side
    of the surface changes. Inside the new outline, ``blur`` writes the tissue
    blurred with sigma ``smooth_mm / 2`` and ``noise`` writes values drawn
    from the region's tissue intensities; outside it both write the median
    air value of the region; a voxel the outline crosses gets the two mixed by
    the share of it that lies inside (:func:`outline_fraction`), so the new
    surface has no whole-voxel terraces. Within :data:`SEAM_MM` of the region's border
    the written value is mixed with the original one by the same smoothstep
    as the outline (:func:`outline_weight`), so there is no intensity step.
    With ``guard`` (the brain guard on ``data``'s grid), head tissue of the
    region within :data:`SEAL_MM` of it stays inside the new outline
    (:func:`guard_cover`), so the outline never opens a pit down to the guard.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    out = data.astype(np.float32, copy=True)
    if method == "remove":
        out[region] = 0.0
        seal = sealing_layer(region, head, zooms)
        if seal.any():
            out[seal] = float(np.median(data[region & head])) if (region & head).any() else 0.0
        return out, region.copy()
    allowed = np.zeros_like(region)
    if not region.any():
        return out, allowed
    zooms = np.asarray(zooms, dtype=float)
    box = bounding_box(region, np.ceil(max(3 * smooth_mm, layer_mm, blend_mm) / zooms).astype(int))
    factors = coarse_factors(zooms)
    coarse_zooms = zooms * factors
    shape = out[box].shape
    fraction = downsample(head[box], factors)
    head_coarse = fraction > 0.5
    coarse_to_template = None
    if outline is not None and voxel_to_template is not None:
        grid = np.diag([*factors.astype(float), 1.0])
        grid[:3, 3] = [part.start + factor // 2 for part, factor in zip(box, factors, strict=True)]
        coarse_to_template = voxel_to_template @ grid
    face_coarse = downsample((region if face is None else face)[box], factors) > 0.5
    field = blended_envelope(head_coarse, coarse_zooms, smooth_mm, face_coarse, outline,
                             coarse_to_template, blend_mm)
    fine = upsample(field, factors, shape)
    envelope = fine > 0.5
    if guard is not None:
        envelope |= guard_cover(region[box], guard[box], head[box] & ~envelope, zooms)
    near_skin = np.abs(upsample(np.minimum(np.abs(signed_distance(head_coarse, coarse_zooms)),
                                           np.abs(signed_distance(field > 0.5, coarse_zooms))),
                                factors, shape)) <= layer_mm
    allowed[box] = region[box] & (near_skin | (envelope != head[box]))
    treat = allowed[box]
    inside = outline_fraction(field, fine, envelope, treat, factors, coarse_zooms, zooms)
    air = data[region & ~head]
    air_value = float(np.median(air)) if air.size else 0.0
    if method == "blur":
        tissue_mean = downsample(data[box] * head[box], factors) / np.maximum(fraction, 1e-3)
        blurred = tissue_blur(tissue_mean, fraction > 0.25, coarse_zooms, smooth_mm / 2.0)
        tissue = upsample(blurred, factors, shape)[treat]
    else:
        pool = data[region & head]
        pool = pool if pool.size else data[head]
        tissue = np.random.default_rng(seed).choice(pool, size=inside.size)
    value = inside * tissue + (1.0 - inside) * air_value
    region_coarse = downsample(region[box], factors) > 0.5
    weight = upsample(outline_weight(region_coarse, coarse_zooms, SEAM_MM), factors, shape)[treat]
    out[box][treat] = weight * value + (1.0 - weight) * data[box][treat]
    return out, allowed
