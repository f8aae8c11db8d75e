"""Where ``maskface`` works: NRG mask_face's face box, placed through the CAPIIO atlas.

mask_face places its face region with landmarks drawn on NRG's face atlas
CAPIIO (Analyze, 176x208x176 voxels of 1 mm): an origin and three lines of 20
points (``nrg-improc/ATLAS/face_atl.lst``). They are carried to the subject
through the head template's registration and a fixed CAPIIO -> template
matrix, and give (``mask_surf_auto.m``, ``ROI_coord``): the subject voxel
axis most normal to the face (the *vertical* axis, from the first line, which
runs from the origin to the front of the face) with its direction; and a box,
the bounding box of the three lines clipped to the image, extended to the
image's edge on the face side along the vertical axis and enlarged by
``round(6 * voxel size)`` voxels.

The CAPIIO -> template matrices, FSL convention (they act on voxel indices
times voxel sizes, x flipped when the image's determinant is positive):

* MNI152: ``CAPIIO_to_mni152.mat`` of mask_face, onto FSL's MNI152lin_T1_1mm
  grid (182x218x182, 1 mm). isyb's MNI152 templates (6th generation and 2009c)
  share MNI world millimetres, so the landmarks reach them through that grid.
* CN200 and Chinese2020: the ISYB team's ``CAPIIO_to_CN200.mat`` and
  ``CAPIIO_to_CN2020.mat`` (repository zuoxinian/CCS,
  ``projects/isybdemo/face_masking_CN/bin/Template/``), onto each template's
  own image grid, read from the prepared template's header.

Any other template has no CAPIIO matrix: ``maskface`` then uses isyb's face
region of that template (``--face-region``) and the template's anterior axis.

The landmark end points and ``CAPIIO_to_mni152.mat`` below are numbers from
mask_face, "Copyright (c) 2010-2021 Mikhail Milchenko, Washington University in
Saint Louis. All rights reserved.", redistributed under its BSD-style licence
(redistributions must keep this notice; no endorsement by Washington
University is implied; provided "as is", without warranty). The landmark
lines are straight, so their clipped bounding boxes depend only on their end
points, which are all that is kept here; the tests check them against the
original files where the test data holds them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from isyb.deface.maskface import normfilter
from isyb.errors import IsybError
from isyb.head.morphology import bounding_box
from isyb.templates.registry import Template

#: face_atl.lst (CAPIIO voxel coordinates): the origin, then the first and last
#: point of each of its three lines (points 2-21, 22-41, 42-61).
FACE_ORIGIN = (88.9500, 146.0300, 11.0400)
FACE_LINES = (
    ((90.0770, 254.8200, -4.6575), (89.0064, 151.4695, 10.2551)),
    ((83.9286, 131.1294, -131.5288), (91.6616, 154.0534, 87.8002)),
    ((24.6875, 146.6680, 14.5380), (153.2225, 145.3920, 7.5420)),
)
CAPIIO_SHAPE = (176, 208, 176)
#: FSL's MNI152lin_T1_1mm grid, the reference of CAPIIO_to_mni152.mat.
MNI152LIN_SHAPE = (182, 218, 182)
MNI152LIN_AFFINE = np.array([[-1.0, 0, 0, 90], [0, 1, 0, -126], [0, 0, 1, -72], [0, 0, 0, 1]])
CAPIIO_TO = {
    "MNI152": np.array([
        [1.048284296, -0.01003694651, -0.03071042606, 1.872881973],
        [-0.007270658736, 1.051175762, -0.007894595915, 1.113076883],
        [0.02259551813, -0.03653666814, 1.079372624, -8.0498729],
        [0, 0, 0, 1]]),
    "CN200": np.array([
        [1.045734549, -0.008453204487, -0.01772608509, 0.936477823],
        [-0.005123259195, 0.9702216508, 0.007175299745, 7.121912471],
        [0.003709698792, -0.04190349062, 0.9210394349, 11.12406112],
        [0, 0, 0, 1]]),
    "Chinese2020": np.array([
        [1.010637516, -0.001187397773, -0.0234240705, 3.744471758],
        [-0.007721577034, 0.9647128481, -0.07890005797, 13.66127277],
        [0.01832132502, 0.02306378757, 0.9264332616, 9.25915097],
        [0, 0, 0, 1]]),
}
#: Built-in templates in MNI world millimetres: reached through CAPIIO_to_mni152.mat.
MNI_TEMPLATES = ("MNI152NLin6Asym", "MNI152NLin2009cAsym")
#: The ROI is enlarged by round(ROI_MARGIN_MM * voxel size) voxels (mask_surf_auto.m).
ROI_MARGIN_MM = 6.0
#: Voxel size (mm) of the heads the ISYB data descriptor defaced (isyb's ISYB-shaped
#: cohort, ``benchmarks/bench_study.py --isyb-scale``, has heads at 1 mm).
DESCRIPTOR_VOXEL_MM = 1.0
#: Recorded in every maskface provenance: the one deliberate difference in safety.
GUARD_NOTE = ("isyb keeps its brain guard on; the ISYB data descriptor's mask_face runs "
              "had none (mask_face's brain protection is off by default)")


def roi_margin_mm(voxel_mm: float) -> float:
    """mask_face's ROI enlargement in mm at an isotropic voxel size of ``voxel_mm``.

    ``mask_surf_auto.m`` enlarges the landmark box by ``nm = round(6 * pixdim)``
    *voxels* along each axis ("to compensate for partial segment effect"), i.e.
    ``round(6 p) * p`` mm: 6 mm at 1 mm voxels, 4.5 mm at 0.9 mm, 8.4 mm at
    1.2 mm, 24 mm at 2 mm, 54 mm at 3 mm. It grows with the square of the voxel
    size (``6 / pixdim`` voxels would have been a fixed 6 mm); this is what the
    tool does. MATLAB rounds halves away from zero.
    """
    return math.floor(ROI_MARGIN_MM * float(voxel_mm) + 0.5) * float(voxel_mm)


def fsl_voxel_to_scaled(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """4x4 from voxel indices to FSL's scaled voxel coordinates (mm) of an image.

    FSL multiplies indices by the voxel sizes and flips x (index ``nx - 1 - i``)
    when the voxel-to-world matrix has a positive determinant (FLIRT's
    convention, documented with ``img2imgcoord`` and ``flirt``).
    """
    zooms = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    out = np.diag([*zooms, 1.0])
    if np.linalg.det(affine[:3, :3]) > 0:
        out[0, 0] = -zooms[0]
        out[0, 3] = (shape[0] - 1) * zooms[0]
    return out


def capiio_to_template(template: Template) -> tuple[np.ndarray, str] | None:
    """(4x4 CAPIIO voxel -> template RAS mm, matrix name), or None without a known matrix."""
    capiio = fsl_voxel_to_scaled(CAPIIO_SHAPE, -np.eye(4))  # Analyze: radiological, no flip
    if template.name in MNI_TEMPLATES:
        reference = np.linalg.inv(fsl_voxel_to_scaled(MNI152LIN_SHAPE, MNI152LIN_AFFINE))
        return (MNI152LIN_AFFINE @ reference @ CAPIIO_TO["MNI152"] @ capiio,
                "CAPIIO_to_mni152.mat (mask_face)")
    if template.name in ("CN200", "Chinese2020"):
        header = nib.load(template.head)
        shape, affine = header.shape[:3], header.affine
        reference = np.linalg.inv(fsl_voxel_to_scaled(shape, affine))
        stem = "CN2020" if template.name == "Chinese2020" else "CN200"
        return (affine @ reference @ CAPIIO_TO[template.name] @ capiio,
                f"CAPIIO_to_{stem}.mat (ISYB team, zuoxinian/CCS)")
    return None


@dataclass(frozen=True)
class FaceBox:
    """mask_face's face ROI on the subject grid: voxel bounds (inclusive) and the vertical axis.

    ``outward`` is +1 when the face looks towards the high end of
    ``vertical``; ``source`` says how the box was placed.
    """

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    vertical: int
    outward: int
    source: str

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        out[tuple(slice(a, b + 1) for a, b in zip(self.lo, self.hi, strict=True))] = True
        return out


def landmark_box(capiio_to_voxel: np.ndarray, shape: tuple[int, int, int], zooms: np.ndarray,
                 source: str) -> FaceBox:
    """The face box from the landmarks, ``capiio_to_voxel`` mapping CAPIIO to subject voxels.

    As ``ROI_coord`` in ``mask_surf_auto.m``: each line's mapped points are
    clipped to the image (per axis, their min and max); the vertical direction
    is the longer of (clipped max - origin) and (clipped min - origin) of the
    first line, and its axis the one with the largest component. Raises
    :class:`isyb.errors.IsybError` when the box is empty (face outside the FOV).
    """
    def voxel(point: tuple[float, float, float]) -> np.ndarray:
        return (capiio_to_voxel @ np.array([*point, 1.0]))[:3]

    top = np.asarray(shape, dtype=float) - 1
    origin = voxel(FACE_ORIGIN)
    lows, highs = [], []
    for first, last in FACE_LINES:
        ends = np.stack([voxel(first), voxel(last)])
        lows.append(np.clip(ends.min(axis=0), 0, top))
        highs.append(np.clip(ends.max(axis=0), 0, top))
    toward_high, toward_low = highs[0] - origin, lows[0] - origin
    direction = toward_high if np.linalg.norm(toward_high) > np.linalg.norm(toward_low) \
        else toward_low
    vertical = int(np.argmax(np.abs(direction)))
    outward = 1 if direction[vertical] > 0 else -1
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    if np.any(hi - lo < 1):
        raise IsybError("the face box of maskface is empty: the face lies outside the image")
    if outward > 0:
        hi[vertical] = top[vertical]
    else:
        lo[vertical] = 0
    # MATLAB's round (halves away from zero; all values here are >= 0), not numpy's
    # half-to-even: at 0.75 mm voxels round(6 * 0.75) = round(4.5) is 5 voxels, not 4.
    margin = np.floor(ROI_MARGIN_MM * np.asarray(zooms, dtype=float) + 0.5)
    lo = np.clip(np.floor(lo + 0.5) - margin, 0, top).astype(int)
    hi = np.clip(np.floor(hi + 0.5) + margin, 0, top).astype(int)
    return FaceBox(tuple(lo.tolist()), tuple(hi.tolist()), vertical, outward, source)


def region_box(region: np.ndarray, voxel_to_template: np.ndarray) -> FaceBox:
    """A face box around isyb's face ``region``, vertical along the template's anterior axis."""
    if not region.any():
        raise IsybError("the face region of maskface is empty: the face lies outside the image")
    box = bounding_box(region)
    anterior = np.linalg.solve(voxel_to_template[:3, :3], np.array([0.0, 1.0, 0.0]))
    vertical = int(np.argmax(np.abs(anterior)))
    return FaceBox(tuple(part.start for part in box), tuple(part.stop - 1 for part in box),
                   vertical, 1 if anterior[vertical] > 0 else -1,
                   "isyb face region (no CAPIIO matrix for this template)")


def place_face_box(template: Template, shape: tuple[int, int, int], zooms: np.ndarray,
                   voxel_to_template: np.ndarray) -> FaceBox | None:
    """mask_face's face box for a template with a known CAPIIO matrix, else None."""
    known = capiio_to_template(template)
    if known is None:
        return None
    capiio_to_tpl, source = known
    return landmark_box(np.linalg.inv(voxel_to_template) @ capiio_to_tpl, shape, zooms,
                        f"mask_face landmarks through {source}")


def maskface_obscure(data: np.ndarray, region: np.ndarray, head: np.ndarray, zooms: np.ndarray,
                     face_box: FaceBox, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Run :func:`isyb.deface.maskface.normfilter` on ``region``'s bounding box.

    ``region`` is the face region minus the brain guard on the grid of
    ``data``; only layer voxels inside it change. Returns (new data, changed-
    allowed mask, provenance record).
    """
    out = data.astype(np.float32, copy=True)
    allowed = np.zeros(region.shape, dtype=bool)
    record = {"face_box": face_box.source, "vertical_axis_ras": "RAS"[face_box.vertical],
              "brain_guard": GUARD_NOTE}
    if not region.any():
        return out, allowed, record
    box = bounding_box(region)
    result = normfilter(data[box], head[box], zooms, face_box.vertical, face_box.outward,
                        seed=seed)
    allowed[box] = result.layer & region[box]
    out[box] = np.where(allowed[box], result.data, out[box])
    record.update(result.record)
    record["layer_voxels"] = int(allowed.sum())
    return out, allowed, record
