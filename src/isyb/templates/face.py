"""The face region: a rule in template space that holds beyond the template's FOV.

A template's face region is not a voxel mask (which would end at the
template's field of view, the failure pydeface's users report for long
necks) but a few half-spaces in template RAS millimetres, placed relative to
the template's brain mask, like quickshear's plane under the frontal lobe:

* the *face plane*: a plane with its normal pointing anterior-inferior (30°
  below the anterior axis), tangent to the front half of the brain and set
  a little into it. Everything beyond it lies in front of and below the
  frontal lobe: brows, eyes, nose, cheeks, mouth, chin;
* the *back plane*: a coronal plane at ``back_fraction`` of the brain's
  length behind its frontal pole. Only points in front of it are face, so
  the ears and the back of the neck stay;
* the *chin plane*: an axial plane below the chin (below the lower edge of
  the mandible). Points below it are neck, masked only on request;
* the *mouth plane* (only with ``keep_chin``): an axial plane at the mouth,
  where the MNI templates' field of view ends; the region then stops there
  and the lower lip and chin keep their shape (isyb's region before issue 20
  on those templates);
* with ``ears``, two boxes beside the temporal lobes, outside the brain's
  width, are added.

Evaluating the rule at every subject voxel, through the subject->template
affine, gives the face region in subject space for any FOV. The brain guard
(see :mod:`isyb.head.morphology`) is removed from it afterwards. This is the
default face-region mode, ``rule``.

The ``template`` mode (after NRG mask_face and pydeface, whose masks are drawn
in template space) narrows the rule to the *template's own face*: the
template's head tissue inside the rule region, grown outward by a margin
(default :data:`FACE_MARGIN_MM`, like mask_face's layer of about ±8 mm
around the skin), carried into subject space by the same affine and
intersected with the rule region. A subject's face that reaches further than
the registered template's face plus the margin is then left as it is: the
template's face shape matters, which is what the ISYB data descriptor's
template comparison measured. The template's face is kept as a signed
distance field on a grid of about 2 mm (:class:`TemplateFace`, built once per
template by :func:`template_face` and cached with the prepared template), so
the margin is chosen at use time. Beyond the template's field of view the
rule alone decides, so a long neck or a large FOV is still covered where the
rule covers it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from isyb.head.morphology import bounding_box, coarse_factors, downsample, signed_distance

FACE_PLANE_ANGLE_DEG = 30.0
#: Face-region modes: the rule's half-spaces, or the template's own face within them.
FACE_REGIONS = ("rule", "template")
#: Default margin (template mm) around the template's face in the ``template``
#: mode: NRG mask_face builds a layer of about ±8 mm around the skin surface.
#: ``isyb study --design isyb`` (maskface, which builds that layer itself) uses
#: mask_face's ROI enlargement instead, 6 mm (:mod:`isyb.study.study`).
FACE_MARGIN_MM = 8.0
#: Depth of the chin plane below the front half of the brain, as a fraction of
#: the brain's length. 0.45 until issue 20: subjects registered to the MNI
#: templates (whose brains are larger than most) had their chins 0-16 mm below
#: that plane; at 0.6 it lies about 10 mm below the lowest of them (pycortex
#: S1: menton at -148 mm in MNI152NLin6Asym space, plane at -158 mm).
CHIN_FRACTION = 0.6
#: Least distance (mm) of the chin plane under the subject's own chin (:func:`chin_below`).
CHIN_MARGIN_MM = 10.0
#: Depth of the mouth plane below the front half of the brain, as a fraction of
#: the brain's length: on both MNI templates it falls at their field of view's
#: lower edge (z = -72 and -74 mm against a box edge at -72 and -78 mm).
MOUTH_FRACTION = 0.12


@dataclass(frozen=True)
class FaceRule:
    """Half-spaces (template RAS mm) that define the face, neck and ear regions."""

    face_normal: tuple[float, float, float]
    face_offset: float
    back_y: float
    chin_z: float
    ear_inner_x: tuple[float, float]
    ear_y: tuple[float, float]
    ear_z: tuple[float, float]

    @property
    def mouth_z(self) -> float:
        """Height (template mm) of the mouth plane: ``MOUTH_FRACTION * L`` below the front
        half of the brain, recovered from the ear box (``L`` = its height / 0.45)."""
        length = (self.ear_z[1] - self.ear_z[0]) / 0.45
        return self.ear_z[0] + 0.15 * length - MOUTH_FRACTION * length

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> FaceRule:
        return cls(**{key: tuple(value) if isinstance(value, list) else value
                      for key, value in data.items()})


def derive_face_rule(brain: np.ndarray, affine: np.ndarray, *, back_fraction: float = 0.42,
                     chin_fraction: float = CHIN_FRACTION,
                     plane_inset_mm: float = 16.0) -> FaceRule:
    """Place the face rule relative to a template's brain mask.

    ``brain`` is a boolean RAS array with voxel->world ``affine``. Only the
    front half of the brain (frontal lobes and temporal poles) places the
    face plane and the chin, because brain masks differ in how much brainstem
    they keep. The face plane is tangent to that front half, moved
    ``plane_inset_mm`` into it so the brows and the whole orbits are inside
    (the brain guard keeps the brain itself safe). Fractions are of the
    brain's anterior-posterior length ``L``: the back plane lies
    ``back_fraction * L`` behind the frontal pole, the chin plane
    ``chin_fraction * L`` below the lowest point of the front half. The
    defaults were checked on MNI152 (2009c, 6th gen.), the pydeface mean head
    and the phantom: eyes, nose, mouth and chin inside; ears, forehead top and
    the back of the neck outside.
    """
    points = np.argwhere(brain).astype(float) @ affine[:3, :3].T + affine[:3, 3]
    lo, hi = points.min(axis=0), points.max(axis=0)
    length = hi[1] - lo[1]
    front = points[points[:, 1] > 0.5 * (lo[1] + hi[1])]
    front_low = front[:, 2].min()
    angle = np.deg2rad(FACE_PLANE_ANGLE_DEG)
    normal = np.array([0.0, np.cos(angle), -np.sin(angle)])
    centre_x = 0.5 * (lo[0] + hi[0])
    half_width = 0.5 * (hi[0] - lo[0])
    return FaceRule(
        face_normal=tuple(float(v) for v in normal),
        face_offset=float((front @ normal).max() - plane_inset_mm),
        back_y=float(hi[1] - back_fraction * length),
        chin_z=float(front_low - chin_fraction * length),
        ear_inner_x=(float(centre_x - 0.85 * half_width), float(centre_x + 0.85 * half_width)),
        ear_y=(float(lo[1] + 0.30 * length), float(lo[1] + 0.62 * length)),
        ear_z=(float(front_low - 0.15 * length), float(front_low + 0.30 * length)),
    )


def chin_below(rule: FaceRule, chin_z_mm: float, margin_mm: float = CHIN_MARGIN_MM) -> FaceRule:
    """``rule`` with its chin plane lowered, where needed, to ``margin_mm`` under a subject's chin.

    ``chin_z_mm`` is the height (template mm) of the subject's own lowest face
    point, the lower edge of the mandible from
    :func:`isyb.head.face_reference.face_reference` carried through the
    registration. The template's chin plane sits a fixed fraction of the
    template brain's length below the brain; a long face, or a chin-up head
    (mne-sample: its chin lands 0-37 mm under the MNI templates' plane),
    reaches below it and kept its chin (issue 20). The plane is never raised.
    """
    return replace(rule, chin_z=min(rule.chin_z, float(chin_z_mm) - margin_mm))


def _linear_field(coefficients: np.ndarray, constant: float, shape: tuple[int, ...]) -> np.ndarray:
    """c0*i + c1*j + c2*k + constant on a grid, by broadcasting three 1-D ramps."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    return (np.float32(coefficients[0]) * i[:, None, None]
            + np.float32(coefficients[1]) * j[None, :, None]
            + np.float32(coefficients[2]) * k[None, None, :] + np.float32(constant))


def face_region(rule: FaceRule, shape: tuple[int, int, int], voxel_to_template: np.ndarray,
                *, ears: bool = False, neck: bool = False,
                keep_chin: bool = False) -> np.ndarray:
    """Boolean mask of the face region on a grid.

    ``voxel_to_template`` maps the grid's voxel indices to template RAS mm
    (the subject->template affine times the subject's voxel->world affine).
    By default the region reaches down to the chin plane, over the lips and
    the chin; ``keep_chin`` stops it at the mouth plane
    (:attr:`FaceRule.mouth_z`), and then neither ``neck`` nor the chin is
    masked.
    """
    def field(row: np.ndarray) -> np.ndarray:
        coefficients = row @ voxel_to_template[:3, :3]
        return _linear_field(coefficients, float(row @ voxel_to_template[:3, 3]), shape)

    axes = np.eye(3)
    y = field(axes[1])
    z = field(axes[2])
    region = field(np.asarray(rule.face_normal)) > rule.face_offset
    region &= y > rule.back_y
    if keep_chin:
        region &= z > rule.mouth_z
    elif not neck:
        region &= z > rule.chin_z
    if ears:
        x = field(axes[0])
        lateral = (x < rule.ear_inner_x[0]) | (x > rule.ear_inner_x[1])
        region |= (lateral & (y > rule.ear_y[0]) & (y < rule.ear_y[1])
                   & (z > rule.ear_z[0]) & (z < rule.ear_z[1]))
    return region


@dataclass(frozen=True)
class TemplateFace:
    """A template's own face, as a distance field in template space.

    ``field`` is the signed distance (mm, negative inside) to the template's
    head tissue inside its face rule (ears and neck included), on a grid of
    about 2 mm; ``affine`` maps that grid's voxel indices to template RAS mm.
    Build it with :func:`template_face`.
    """

    field: np.ndarray
    affine: np.ndarray


def template_face(head: np.ndarray, affine: np.ndarray, rule: FaceRule) -> TemplateFace:
    """The :class:`TemplateFace` of a template's boolean RAS head mask.

    ``affine`` is the mask's voxel->template RAS mm. The mask is
    block-averaged to about 2 mm (a coarse voxel is head when more than half
    of it is; :func:`isyb.head.morphology.downsample`), cut to the rule region
    with ears and neck (the widest; the subject-space region is cut to the
    options' own rule region afterwards), and turned into a signed Euclidean
    distance (:func:`isyb.head.morphology.signed_distance`, which measures
    between voxel centres), moved by half a coarse voxel towards zero so that
    zero lies on the boundary halfway between the last tissue voxel and the
    first air voxel. Coarse voxel ``c`` sits at fine index
    ``c * factor + factor // 2``.
    """
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    factors = coarse_factors(zooms)
    coarse = downsample(head, factors) > 0.5
    grid = np.diag([*factors.astype(float), 1.0])
    grid[:3, 3] = factors // 2
    coarse_affine = affine @ grid
    tissue = coarse & face_region(rule, coarse.shape, coarse_affine, ears=True, neck=True)
    distance = signed_distance(tissue, zooms * factors)
    half_voxel = np.float32(0.5 * (zooms * factors).min())
    return TemplateFace(distance - np.sign(distance) * half_voxel, coarse_affine)


def within_template_face(region: np.ndarray, face: TemplateFace, voxel_to_template: np.ndarray,
                         margin_mm: float = FACE_MARGIN_MM) -> np.ndarray:
    """The voxels of ``region`` within ``margin_mm`` of the template's face tissue.

    ``voxel_to_template`` maps the grid's voxel indices to template RAS mm
    (as for :func:`face_region`). The distance field is interpolated
    trilinearly at each voxel of the region's bounding box; the margin is in
    template millimetres (the subject's, up to the registration's scaling).
    Voxels that map outside the template's field of view stay in the region.
    """
    out = np.zeros(region.shape, dtype=bool)
    if not region.any():
        return out
    box = bounding_box(region)
    box_to_voxel = np.eye(4)
    box_to_voxel[:3, 3] = [part.start for part in box]
    mapping = np.linalg.inv(face.affine) @ voxel_to_template @ box_to_voxel
    inside = region[box]
    distance = ndimage.affine_transform(face.field.astype(np.float32, copy=False),
                                        mapping[:3, :3], offset=mapping[:3, 3],
                                        output_shape=inside.shape, order=1, mode="constant",
                                        cval=np.nan)
    out[box] = inside & ((distance <= margin_mm) | np.isnan(distance))
    return out
