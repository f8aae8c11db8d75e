"""Whose face is a defaced face? Its distance to the subject's face and to the template's.

After ``blur`` or ``noise`` a face detector may still find a face; it should be
the template's generic face, not the subject's (issue 15, item 5). Both faces
are compared in the template's frame, with the descriptors of the
re-identification attack (:mod:`isyb.evaluate.reid`): the skin depth map over
the template's face window, one ray per 1 mm pixel, from the front backwards
(:func:`isyb.evaluate.reid.face_descriptor`). The original and the defaced scan
go through the *same* subject->template registration (the one the defacing
used), and the template's face is its own depth map in its frame
(:attr:`isyb.evaluate.reid.FaceFrame.template_depth`): the registered template's
face, as the defacing placed it.

The distance is the mean absolute depth difference (mm, along the template's
anterior axis) over the pixels of the **face region**: those whose original or
defaced skin point lies in the region the defacing was allowed to change (the
applied face mask, carried into the frame). Outside it the defaced face is the
original by construction, which would only dilute the comparison. All three
distances use the same pixels: those where the original, the defaced and the
template's face all have skin.

Where the subject's face and the template's agree to within a voxel, the
question "whose face" has no answer: there a defaced surface is as far from
one as from the other, and such pixels pull the two means together. On
mne-sample (3 mm voxels) with the MNI templates they are 75-80 % of the face
region, and the two means tie to 0.05 mm (issue 15). So the distances are
also given over the **decisive** pixels only, where the two faces differ by
more than ``decisive_mm`` (one voxel of the scan), and ``decisive_closer_to``
says whose face the defaced one is there. No ICP: the
question is what the defacing put where the template registration says the
face is, not whether a shifted copy would fit. Distances are in template mm
(an affine registration rescales the head by a few per cent).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from isyb.evaluate.reid import (
    FaceFrame,
    face_descriptor,
    frame_mapping,
    frame_samples,
    sample_frame_points,
    samples_descriptor,
)
from isyb.head.morphology import skin_threshold
from isyb.io import Volume

#: Fewest face-region pixels (1 mm² each) a distance needs; fewer gives None.
MIN_PIXELS = 100
#: Default of ``decisive_mm`` (mm) in :func:`depth_distances`.
DECISIVE_MM = 1.0


@dataclass(frozen=True)
class FaceDistance:
    """Mean absolute depth differences (mm) over the face region's ``pixels``.

    ``to_original``: defaced vs the subject's original face; ``to_template``:
    defaced vs the registered template's face; ``original_to_template``: how far
    the subject's own face is from the template's (the scale of the other two).
    ``closer_to`` is ``"template"`` or ``"original"`` (the smaller distance).
    The ``decisive_`` fields are the same over the ``decisive_pixels``, where
    the original and the template's face differ by more than ``decisive_mm``;
    ``decisive_closer_to`` is whose face the defaced one is there.
    """

    to_original: float | None
    to_template: float | None
    original_to_template: float | None
    pixels: int
    decisive_to_original: float | None = None
    decisive_to_template: float | None = None
    decisive_pixels: int = 0
    decisive_mm: float = DECISIVE_MM

    @property
    def closer_to(self) -> str | None:
        """Whose face the defaced one is nearer over the face region."""
        return _nearer(self.to_original, self.to_template)

    @property
    def decisive_closer_to(self) -> str | None:
        """Whose face the defaced one is nearer where the two faces differ."""
        return _nearer(self.decisive_to_original, self.decisive_to_template)

    def to_json(self) -> dict:
        """The fields, ``closer_to`` and ``decisive_closer_to``, JSON-ready."""
        return {**asdict(self), "closer_to": self.closer_to,
                "decisive_closer_to": self.decisive_closer_to}


def _nearer(to_original: float | None, to_template: float | None) -> str | None:
    if to_original is None or to_template is None:
        return None
    return "template" if to_template < to_original else "original"


def _mean_abs(a: np.ndarray, b: np.ndarray, pixels: np.ndarray) -> float | None:
    if pixels.sum() < MIN_PIXELS:
        return None
    return float(np.mean(np.abs(a[pixels].astype(np.float64) - b[pixels])))


def depth_distances(original: np.ndarray, defaced: np.ndarray, template: np.ndarray,
                    region: np.ndarray, decisive_mm: float = DECISIVE_MM) -> FaceDistance:
    """:class:`FaceDistance` of three depth maps (mm) over the boolean pixels ``region``.

    NaN marks a pixel with no skin; the distances use the pixels of ``region``
    where all three maps have skin (``pixels`` counts them), the decisive ones
    those of them where ``original`` and ``template`` differ by more than
    ``decisive_mm``. A distance over fewer than ``MIN_PIXELS`` pixels is None.
    """
    common = (np.asarray(region, dtype=bool) & np.isfinite(original) & np.isfinite(defaced)
              & np.isfinite(template))
    decisive = common.copy()
    decisive[common] = np.abs(original[common] - template[common]) > decisive_mm
    return FaceDistance(to_original=_mean_abs(defaced, original, common),
                        to_template=_mean_abs(defaced, template, common),
                        original_to_template=_mean_abs(original, template, common),
                        pixels=int(common.sum()),
                        decisive_to_original=_mean_abs(defaced, original, decisive),
                        decisive_to_template=_mean_abs(defaced, template, decisive),
                        decisive_pixels=int(decisive.sum()), decisive_mm=float(decisive_mm))


def _mask_at_depth(mask: np.ndarray, affine: np.ndarray, subject_to_template: np.ndarray,
                   frame: FaceFrame, depth: np.ndarray) -> np.ndarray:
    """Whether the skin point of each pixel of ``depth`` (template y, mm) lies in ``mask``.

    The mask (on the scan's grid, voxel->mm ``affine``) is read trilinearly at the
    frame voxel nearest the skin point (over 0.5 = in). Only those voxels are sampled
    (:func:`isyb.evaluate.reid.sample_frame_points`), with the values a resampling of the
    whole mask onto the frame gives there: the same answer, without resampling the
    mask's other (in the study, about 4 million) frame voxels.
    """
    step = frame.spacing_mm
    finite = np.isfinite(depth)
    j = np.clip(np.rint((frame.ys[0] - np.where(finite, depth, frame.ys[0])) / step), 0,
                frame.ys.size - 1).astype(int)
    rows, cols = np.indices(depth.shape)
    matrix, offset = frame_mapping(affine, subject_to_template, frame)
    inside = np.zeros(depth.shape, dtype=bool)
    index = np.stack([cols[finite], j[finite], rows[finite]])
    inside[finite] = sample_frame_points(np.asarray(mask), matrix, offset, index) > 0.5
    return inside


def face_distances(original: Volume, defaced: Volume, face_mask: np.ndarray,
                   subject_to_template: np.ndarray, frame: FaceFrame, *,
                   defaced_samples: np.ndarray | None = None,
                   original_descriptor: np.ndarray | None = None,
                   threshold: float | None = None) -> FaceDistance:
    """:class:`FaceDistance` of a defacing, in the frame of the template it used.

    ``original`` and ``defaced`` share a grid; ``face_mask`` (boolean, on that
    grid) is the region the defacing was allowed to change;
    ``subject_to_template`` (4x4, subject RAS mm -> template RAS mm) is the
    registration the defacing used; ``frame`` is the template's
    (:func:`isyb.evaluate.reid.frame_for`). Both scans use the original's skin
    threshold, so that a changed intensity level is not taken for a moved surface.
    The decisive pixels are those where the two faces differ by more than one
    voxel of ``original`` (at least 1 mm).
    ``defaced_samples`` (:func:`isyb.evaluate.reid.frame_samples` of ``defaced``)
    and ``original_descriptor`` (:func:`isyb.evaluate.reid.face_descriptor` of
    ``original``, at its own threshold) may come from a caller that has them
    already: the same result, one resampling less each. So may ``threshold``, the
    original's :func:`isyb.head.morphology.skin_threshold` (image units).
    """
    thr = skin_threshold(original.data) if threshold is None else float(threshold)
    before = (face_descriptor(original, subject_to_template, frame, threshold=thr)
              if original_descriptor is None else original_descriptor)
    if defaced_samples is None:
        defaced_samples = frame_samples(defaced, subject_to_template, frame)
    after = samples_descriptor(defaced_samples, frame, thr)
    region = (_mask_at_depth(face_mask, original.affine, subject_to_template, frame, before)
              | _mask_at_depth(face_mask, original.affine, subject_to_template, frame, after))
    template = np.where(frame.window, frame.template_depth, np.nan)
    voxel_mm = float(np.max(original.zooms))
    return depth_distances(before, after, template, region, decisive_mm=max(voxel_mm, 1.0))
