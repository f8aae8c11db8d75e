"""A face reference from the subject's own anatomy, and how much of it a defacing changed.

isyb's face region comes from a template (:mod:`isyb.templates.face`), so a
coverage figure measured inside that region cannot see what the region
missed (issue 20: with the MNI templates the region ended at the mouth while
the figure said 97-100 %). The *face reference* is built with no template:

* the head's **front surface**: for every column along the anterior axis
  (voxel axis 1 of a RAS array), the most anterior head voxel, i.e. the skin
  a frontal render or a face detector sees;
* **in front of the brain**: only points more than ``front_fraction`` of the
  brain's anterior-posterior length ``L`` behind the frontal pole are dropped,
  which leaves out the ears, the sides of the head and the front of the neck
  below the chin (the chin juts forward of the throat, so the reference
  ends at the lower edge of the mandible);
* **between the ears**: within the brain's left-right extent;
* **from the brows down**: at or below the height of the frontal pole (the
  median height of the brain voxels within 5 mm of its most anterior point),
  which lies at the brows, just above the orbits;
* the connected piece (in the frontal projection) that holds the most
  anterior point, the nose tip.

It is split into three equal **thirds** of its height, from the frontal pole
to its lowest point: upper (brows, eyes), middle (nose, cheeks), lower
(mouth, chin). All positions are world millimetres; the subject is assumed to
lie roughly in RAS (as scanners store heads), which the face rule assumes too.

**The head's pitch.** "In front of", "below the brows" and the thirds are
measured in the head's own frame, not the scanner's: a head scanned chin-up
(mne-sample, about 20 degrees) shows the underside of its jaw and the front of
its neck to a frontal projection, and in the scanner's frame these lie in
front of the brain's back fifth, so the reference ran on down the throat. The
pitch is the angle of the brain's long axis (the principal axis of the brain
voxels in the sagittal plane nearer the anterior direction; degrees, anterior
end up positive) minus that of the MNI152 brain (:data:`MNI_BRAIN_AXIS_DEG`);
positions are rotated about the brain's centroid by minus that pitch before
the rule is applied. The surface itself stays the scanner-frame frontal one
(what a frontal render sees). Only chin-up pitch is corrected: a chin-down
head hides its jaw's underside behind the chin, and a brain mask whose long
axis is flatter than MNI's (the synthetic phantom's, -14 degrees) must
not tilt an upright face.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Names of the face thirds, top to bottom; a reference voxel holds 1, 2 or 3.
THIRDS = ("upper", "middle", "lower")
#: Points further than this fraction of the brain's length behind the frontal
#: pole are not face (the front of the neck, the ears, the sides of the head).
FRONT_FRACTION = 0.2
#: Brain voxels within this distance (mm) of the most anterior one place the brows.
POLE_MM = 5.0
#: The long axis of the MNI152 brain masks in the sagittal plane, degrees above
#: the anterior direction (measured on TemplateFlow's tpl-MNI152NLin6Asym res-02
#: brain mask: 10.7; tpl-MNI152NLin2009cAsym res-01: 10.0): a head in this
#: pose has no pitch.
MNI_BRAIN_AXIS_DEG = 10.3
#: Larger estimated pitches (degrees) are clipped: a head is not scanned more
#: tilted than this, and a misshapen brain mask must not turn the face over.
#: Chin-down (negative) pitch is not corrected (see the module docstring).
MAX_PITCH_DEG = 30.0


def _world(ijk: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def head_pitch_deg(brain_mm: np.ndarray) -> float:
    """The head's pitch in degrees (chin up positive) from brain voxel positions (N x 3, mm, RAS).

    The angle of the brain's principal axis in the y-z plane that is closer
    to the anterior direction (the long axis of a real brain; a phantom's
    may be taller than long; so a brain tilted 45 degrees or more is misread),
    anterior end up positive, minus :data:`MNI_BRAIN_AXIS_DEG`, clipped to
    0..:data:`MAX_PITCH_DEG` (chin-up only); 0 for fewer than 3 points.
    """
    if len(brain_mm) < 3:
        return 0.0
    sagittal = brain_mm[:, 1:] - brain_mm[:, 1:].mean(axis=0)
    axes = np.linalg.eigh(np.cov(sagittal.T))[1]
    axis = axes[:, int(np.argmax(np.abs(axes[0])))]
    if axis[0] < 0:
        axis = -axis
    angle = float(np.degrees(np.arctan2(axis[1], axis[0]))) - MNI_BRAIN_AXIS_DEG
    return float(np.clip(angle, 0.0, MAX_PITCH_DEG))


def _unpitch(points: np.ndarray, centre: np.ndarray, pitch_deg: float) -> np.ndarray:
    """``points`` (mm) rotated about ``centre`` around the x axis by minus ``pitch_deg``."""
    theta = np.radians(pitch_deg)
    c, s = np.cos(theta), np.sin(theta)
    out = points - centre
    y, z = out[:, 1].copy(), out[:, 2].copy()
    out[:, 1], out[:, 2] = c * y + s * z, -s * y + c * z
    return out + centre


def face_reference(head: np.ndarray, brain: np.ndarray, affine: np.ndarray, *,
                   front_fraction: float = FRONT_FRACTION) -> np.ndarray:
    """The subject's face surface, labelled by third (uint8: 0 not face, 1-3 :data:`THIRDS`).

    ``head`` (the solid head, :func:`isyb.head.morphology.head_mask`) and
    ``brain`` are boolean RAS arrays on one grid; ``affine`` maps its voxel
    indices to world mm. See the module docstring for the rule. An empty
    brain or head gives an empty reference.
    """
    out = np.zeros(head.shape, dtype=np.uint8)
    if not brain.any() or not head.any():
        return out
    points = _world(np.argwhere(brain).astype(float), affine)
    centre = points.mean(axis=0)
    pitch = head_pitch_deg(points)
    points = _unpitch(points, centre, pitch)
    lo, hi = points.min(axis=0), points.max(axis=0)
    pole_z = float(np.median(points[points[:, 1] >= hi[1] - POLE_MM, 2]))
    y_cut = hi[1] - front_fraction * (hi[1] - lo[1])

    has = head.any(axis=1)
    depth = head.shape[1] - 1 - np.argmax(head[:, ::-1, :], axis=1)
    i, k = np.nonzero(has)
    front = np.zeros((i.size, 3))
    front[:, 0], front[:, 1], front[:, 2] = i, depth[i, k], k
    xyz = _unpitch(_world(front, affine), centre, pitch)
    keep = ((xyz[:, 1] > y_cut) & (xyz[:, 2] <= pole_z)
            & (xyz[:, 0] >= lo[0]) & (xyz[:, 0] <= hi[0]))
    if not keep.any():
        return out
    candidate = np.zeros(has.shape, dtype=bool)
    candidate[i[keep], k[keep]] = True
    pieces, _ = ndimage.label(candidate, structure=np.ones((3, 3), dtype=bool))
    tip = np.argmax(np.where(keep, xyz[:, 1], -np.inf))
    face = pieces[i, k] == pieces[i[tip], k[tip]]
    face &= keep
    z = xyz[face, 2]
    bottom = float(z.min())
    height = max(pole_z - bottom, 1e-6)
    third = np.clip(np.floor((pole_z - z) / height * 3.0), 0, 2).astype(np.uint8) + 1
    out[i[face], depth[i[face], k[face]], k[face]] = third
    return out


def _shares(changed: np.ndarray, guard: np.ndarray) -> dict[str, float | int | None]:
    n = int(changed.size)
    if n == 0:
        return {"voxels": 0, "changed_fraction": None, "guard_fraction": None,
                "unreached_fraction": None}
    untouched = ~changed
    return {"voxels": n,
            "changed_fraction": round(float(changed.mean()), 4),
            "guard_fraction": round(float((untouched & guard).mean()), 4),
            "unreached_fraction": round(float((untouched & ~guard).mean()), 4)}


def face_coverage(reference: np.ndarray, changed: np.ndarray,
                  guard: np.ndarray) -> dict[str, object]:
    """How much of the face reference a defacing changed, and why the rest was left.

    ``reference`` is :func:`face_reference`; ``changed`` the voxels whose
    value differs after defacing; ``guard`` the brain guard (brain dilated by
    the guard margin). Over the reference's voxels, and per third, the
    fractions (summing to 1) that changed, that stayed because they lie in
    the guard, and that stayed although outside the guard
    (``unreached_fraction``: the face region did not reach them, or, rarely,
    a value in it did not change). Keys: those of the whole reference
    (``voxels``, ``changed_fraction``, ``guard_fraction``,
    ``unreached_fraction``), plus ``thirds`` mapping each of :data:`THIRDS`
    to the same keys. Fractions are None where there are no voxels.
    """
    # the reference's voxels once (C order, as boolean indexing takes them), then its thirds
    # among them: the same arrays as indexing the whole grid per third, one pass over it
    where = np.nonzero(reference)
    label, changed, guard = reference[where], changed[where], guard[where]
    record: dict[str, object] = dict(_shares(changed, guard))
    record["thirds"] = {name: _shares(changed[label == value], guard[label == value])
                        for value, name in enumerate(THIRDS, start=1)}
    return record
