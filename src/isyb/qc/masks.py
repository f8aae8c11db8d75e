"""The masks behind the anatomical metrics: head, air, empty voxels and tissue cores.

See :mod:`isyb.qc.anat` for how MRIQC's masks differ.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import ndimage as ndi

from isyb.errors import InputError
from isyb.executor import ITK_THREADS_ENV
from isyb.head.morphology import (
    box_max_filter,
    box_min_filter,
    head_mask,
    skin_threshold,
)
from isyb.head.tissue import Contrast, atropos_tissues, tissue_cores
from isyb.image_checks import check_real

#: 1 / Phi^-1(3/4): scales the median absolute deviation to the SD of a
#: Gaussian (statsmodels' ``mad``, which MRIQC uses).
MAD_TO_SD = 1.0 / 0.6744897501960817


#: Fewest voxels a mask may hold for its statistics to be reported.
MIN_MASK_VOXELS = 100


class QCInputError(InputError):
    """The image cannot give a meaningful metric (empty mask, constant air, NaNs...)."""


class NoBackgroundError(QCInputError):
    """The image has no air to measure the noise in (suppressed, cut off or stripped)."""


def robust_sd(values: np.ndarray) -> float:
    """Normalised median absolute deviation: ``median(|x - median(x)|) / 0.6745``.

    Estimates the SD of a Gaussian from its bulk; it is statsmodels'
    ``mad`` (centre = median), which MRIQC uses for ``cjv`` and ``snrd``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    return float(np.median(np.abs(values - np.median(values))) * MAD_TO_SD)



def intensity_clip(data: np.ndarray, *, p_min: float = 10.0, p_max: float = 99.9) -> np.ndarray:
    """The image MRIQC segments and measures: clipped to percentiles, rescaled to 0..255.

    The thresholds are the ``p_min`` and ``p_max`` percentiles of the positive
    voxels of a median-filtered copy; the image is clipped to them, shifted
    to start at 0, scaled to 0..255 and rounded (niworkflows
    ``_advanced_clip`` with ``IntensityClip(p_min=10, p_max=99.9)``, int16
    output: MRIQC 24's ``synthstrip_wf`` ``pre_clip``, whose output is what
    N4, Atropos and the IQMs see). Everything darker than the 10th
    percentile, which is most of the air, becomes exactly 0.

    Difference from niworkflows: it median-filters with a ball of radius 3
    voxels (123 voxels) on the full grid; isyb filters with a 3x3x3 cube on
    every second voxel along each axis (about 30 times cheaper on a 256^3
    head). Only the two thresholds depend on it.
    """
    x = np.asarray(data, dtype=np.float32)
    denoised = ndi.median_filter(x[::2, ::2, ::2], size=3)
    positive = denoised[denoised > 0]
    if positive.size == 0:
        raise QCInputError("the image has no positive values")
    lo, hi = np.percentile(positive, [p_min, p_max])
    out = np.clip(x, lo, hi)
    out -= out.min()
    top = float(out.max())
    if top <= 0:
        raise QCInputError("the image is constant between its 10th and 99.9th percentiles")
    out *= 255.0  # in place: the same operations as round(255 * out / top), fewer copies
    out /= top
    return np.round(out, out=out).astype(np.float32)


def empty_mask(data: np.ndarray, *, block: int = 3) -> np.ndarray:
    """Voxels in solid blocks of values <= 0: padding, rotation frames, zeroed faces.

    A voxel is "empty" when it lies in some ``block`` x ``block`` x ``block``
    cube whose voxels are all <= 0 (a morphological opening of
    ``data <= 0`` with that cube; the FOV border counts as empty). Recorded
    magnitude noise does not do that: even where 12 % of the air voxels are
    0 (Rayleigh noise of sigma one unit, rounded to integers), 27 zeros in a
    cube happen with probability 0.12^27 ~ 1e-25. Such blocks come from
    zero-filled FOV extensions, resampling frames, defacing that zeroes the
    face, or background suppression. MRIQC's rotation mask is the same idea
    (opening of ``data <= 0`` with the 18-connected element).
    """
    zero = np.ascontiguousarray(np.asarray(data) <= 0)
    if not zero.any():
        return zero
    size = (block,) * 3
    return box_max_filter(box_min_filter(zero, size, 1), size)


def hat_region(brain: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
               plane_margin_mm: float = 10.0, front_fraction: float = 0.25) -> np.ndarray:
    """The region above the nasion-cerebellum plane and behind the front of the brain.

    From the brain mask (RAS; mm along the array axes): ``L`` is the brain's
    anterior-posterior length; the *front point* is the lowest brain voxel
    within 0.15 L of the frontal pole (the orbital surface of the frontal
    lobe, just above the nasion); the *back point* the lowest brain voxel
    within 0.15 L of the occipital pole (the bottom of the cerebellum). The
    region is every voxel more than ``plane_margin_mm`` above the plane
    through these two points (perpendicular to the sagittal plane) and more
    than ``front_fraction * L`` behind the frontal pole: the air above and
    behind the head, without the forehead, the face, the neck and the lower
    part of the ears, which is where face masking acts (isyb's face region
    lies in front of a plane tangent to the front half of the brain, tilted
    30 degrees down; pydeface, mri_deface and quickshear act in front of and
    below the face). MRIQC's "hat" is the same idea: the air above the
    nasion-cerebellum plane, placed by registration to MNI space rather than
    from the brain mask. Returns a read-only broadcast view.
    """
    zooms = np.asarray(zooms, dtype=float)
    brain = np.asarray(brain, dtype=bool)
    if not brain.any():
        raise QCInputError("the brain mask is empty")
    ys, zs = np.nonzero(brain.any(axis=0))
    y_mm, z_mm = ys * zooms[1], zs * zooms[2]
    y_front, y_back = float(y_mm.max()), float(y_mm.min())
    length = y_front - y_back
    if length <= 0:
        raise QCInputError("the brain mask has no anterior-posterior extent")
    z_front = float(z_mm[y_mm >= y_front - 0.15 * length].min())
    z_back = float(z_mm[y_mm <= y_back + 0.15 * length].min())
    y_axis = np.arange(brain.shape[1]) * zooms[1]
    z_axis = np.arange(brain.shape[2]) * zooms[2]
    plane = z_back + (z_front - z_back) / length * (y_axis - y_back)
    above = z_axis[None, :] > plane[:, None] + plane_margin_mm
    behind = (y_axis < y_front - front_fraction * length)[:, None]
    return np.broadcast_to((above & behind)[None, :, :], brain.shape)


def air_mask(data: np.ndarray, head: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
             brain: np.ndarray, empty: np.ndarray | None = None, border_mm: float = 5.0,
             skin_gap_mm: float = 5.0, plane_margin_mm: float = 10.0,
             front_fraction: float = 0.25, min_live_fraction: float = 0.05,
             artifact_z: float = 10.0, min_voxels: int = 1000) -> np.ndarray:
    """Air voxels that measure the background of the scan and that no defacing touches.

    Start from the voxels outside ``head`` (every voxel that may be tissue:
    :func:`anat_masks` passes the solid head of
    :func:`isyb.head.morphology.head_mask`, every voxel above the skin
    threshold, and the brain) and keep those that are:

    1. in :func:`hat_region`: above the nasion-cerebellum plane (plus
       ``plane_margin_mm``) and behind the front quarter of the brain, and
       connected to the FOV border within that region. Air in front of and
       below the face, where defacing acts, is never used, and neither is a
       dark cavity (skull, sinus) that a removed face opened to the outside:
       this is what makes the background metrics of a scan and of its defaced
       copies agree, whatever the defacing tool wrote (zeros, noise, blurred
       tissue);
    2. more than ``skin_gap_mm`` (and 2 voxels) from the head along every
       axis (a box around each head voxel): the partial-volume shell of the
       skin is not background;
    3. more than ``border_mm`` (and 2 voxels) from the FOV border, where
       wrap-around and interpolation edges sit;
    4. not in :func:`empty_mask` (solid blocks of zeros from padding or
       zeroing). If fewer than ``min_live_fraction`` of the voxels that steps
       1-3 kept are left, the background was suppressed (set to 0 beyond a
       thin halo around the skin, as in FreeSurfer-conformed, template-space
       and many processed images): it holds no noise to measure, and
       :class:`NoBackgroundError` is raised;
    5. not artefact: a voxel brighter than ``median + artifact_z * MAD_n``
       of the positive air values, in a cluster that survives an opening with
       the 6-connected element (ghosts, wrap-around, flow artefacts; MRIQC's
       step after Mortamet et al., MRM 62(2):365, 2009, with the same z = 10).

    Raises :class:`NoBackgroundError` (a :class:`QCInputError`) for a
    suppressed background, or when fewer than ``min_voxels`` remain (a
    skull-stripped image, a FOV cut at the skin).
    """
    zooms = np.asarray(zooms, dtype=float)
    data = np.asarray(data)
    head = np.ascontiguousarray(head, dtype=bool)
    if head.shape != data.shape:
        raise QCInputError(f"the head mask has shape {head.shape}, the image {data.shape}")
    cand = ~head & hat_region(brain, zooms, plane_margin_mm=plane_margin_mm,
                              front_fraction=front_fraction)
    # Only air connected to the FOV border *within the hat* is outside: a face
    # that defacing removed opens a path from the border into the dark skull
    # or the sinuses, but that path runs through the face, outside the hat.
    pieces, _ = ndi.label(cand)
    border = np.unique(np.concatenate([np.take(pieces, i, axis=a).ravel()
                                       for a in range(3) for i in (0, -1)]))
    cand = np.isin(pieces, border[border > 0])
    del pieces
    for axis, n in enumerate(data.shape):
        k = max(2, math.ceil(border_mm / zooms[axis]))
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, min(k, n))
        cand[tuple(index)] = False
        index[axis] = slice(max(n - k, 0), n)
        cand[tuple(index)] = False
    gap = np.maximum(np.ceil(skin_gap_mm / zooms), 2).astype(int)
    cand &= ~box_max_filter(head, tuple(int(2 * g + 1) for g in gap))  # type: ignore[arg-type]
    if empty is None:
        empty = empty_mask(data)
    n_cand = int(cand.sum())
    cand &= ~np.asarray(empty, dtype=bool)
    n_live = int(cand.sum())
    if n_live < min_voxels or n_live < min_live_fraction * n_cand:
        raise NoBackgroundError(
            f"no measurable background: of {n_cand} air voxels above the nasion-cerebellum "
            f"plane, {n_live} are not in solid blocks of zeros (need {min_voxels} and "
            f"{min_live_fraction:.0%}); the background was suppressed or cut off")
    values = np.asarray(data[cand], dtype=np.float64)
    positive = values[values > 0]
    if positive.size >= MIN_MASK_VOXELS:
        location = float(np.median(positive))
        spread = robust_sd(positive)
        if spread > 0:
            bright = cand & (data > location + artifact_z * spread)
            if bright.any():
                bright = ndi.binary_opening(bright,
                                            structure=ndi.generate_binary_structure(3, 1))
                cand &= ~bright
    count = int(cand.sum())
    if count < min_voxels:
        raise NoBackgroundError(
            f"only {count} usable air voxels (need {min_voxels}): the image has too little "
            "background above the nasion-cerebellum plane (skull-stripped, or a FOV cut at "
            "the skin)")
    return cand


@dataclass
class AnatMasks:
    """The masks behind :func:`anat_metrics` (RAS boolean arrays on the image grid).

    ``labels`` is uint8 (0 outside the brain, :data:`CSF`, :data:`GM`,
    :data:`WM`); ``gm`` and ``wm`` are the tissue cores the statistics use
    (:func:`tissue_masks`); ``head`` the solid head; ``air`` the
    :func:`air_mask`; ``empty`` the :func:`empty_mask` voxels left out of EFC.
    ``noise_source`` is ``"air"``, or ``"brain"`` when the image has no
    measurable background (``air`` is then all False and ``note`` says why;
    see :func:`anat_metrics`). ``posteriors`` (float32, ``(3, *grid)``: CSF,
    GM, WM) and ``corrected`` (the N4-corrected :func:`intensity_clip` image,
    0..255 before the field) come from :func:`isyb.head.tissue.atropos_tissues`.
    """

    brain: np.ndarray
    head: np.ndarray
    air: np.ndarray
    empty: np.ndarray
    labels: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    posteriors: np.ndarray
    corrected: np.ndarray
    noise_source: Literal["air", "brain"] = "air"
    note: str = ""

    @property
    def air_empty_fraction(self) -> float:
        """Fraction of the air voxels that are empty (> 0.5: a suppressed background)."""
        return float((self.air & self.empty).sum() / max(int(self.air.sum()), 1))


def check_image(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise QCInputError(f"anatomical QC needs a 3-D image, got {data.ndim}-D "
                           f"shape {data.shape}")
    check_real(data, QCInputError, "the image")
    out = np.maximum(data.astype(np.float32, copy=False), np.float32(0.0))
    if not np.any(out > 0):
        raise QCInputError("the image has no positive values")
    return out


def anat_masks(data: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
               brain: np.ndarray | None = None, contrast: Contrast = "T1w") -> AnatMasks:
    """Brain, head, air, empty and tissue masks of a head image (RAS, ``zooms`` in mm).

    ``brain`` defaults to :func:`isyb.head.brain.extract_brain` (deepbet). The
    tissues are N4 + Atropos (:func:`isyb.head.tissue.atropos_tissues`) on
    the :func:`intensity_clip` image, as MRIQC segments. The head is
    :func:`isyb.head.morphology.head_mask` at
    :func:`isyb.head.morphology.skin_threshold`, joined with the brain.

    The background masks (:func:`background_masks`: head, empty, air) do not
    depend on the tissues, and are found in a second thread while the tissues
    are segmented (scipy.ndimage and numpy release the GIL in their loops;
    the numpy N4 and Atropos keep about one core busy), unless the
    process is limited to one thread. The masks are the same either way.
    """

    image = check_image(data)
    zooms = np.asarray(zooms, dtype=float)
    if zooms.shape != (3,) or np.any(zooms <= 0):
        raise QCInputError(f"voxel sizes must be three positive numbers, got {zooms}")
    if brain is None:
        from isyb.head.brain import extract_brain

        brain = extract_brain(image, zooms)
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != image.shape:
        raise QCInputError(f"the brain mask has shape {brain.shape}, the image {image.shape}")
    if not brain.any():
        raise QCInputError("the brain mask is empty")
    with ThreadPoolExecutor(max_workers=1) if _may_overlap() else _Serial() as pool:
        background = pool.submit(background_masks, image, zooms, brain)
        segmentation = atropos_tissues(intensity_clip(image), brain, zooms, contrast=contrast)
        labels = segmentation.labels
        gm, wm = tissue_cores(labels, zooms)
        return AnatMasks(brain=brain, labels=labels, gm=gm, wm=wm,
                         posteriors=segmentation.posteriors, corrected=segmentation.corrected,
                         **background.result())


def _may_overlap() -> bool:
    """Whether :func:`anat_masks` may find the background masks in a second thread while
    it segments the tissues: with more than one core, unless the process was limited to
    one thread (:func:`isyb.executor.limit_threads`, a pool's worker)."""
    return (os.cpu_count() or 1) > 1 and os.environ.get(ITK_THREADS_ENV) != "1"


class _Serial:
    """A stand-in for a one-thread pool that runs each task at once, in this thread."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future


def background_masks(data: np.ndarray, zooms: np.ndarray | tuple[float, ...],
                     brain: np.ndarray) -> dict:
    """The fields of :class:`AnatMasks` that describe the background, as a dict.

    ``head`` (:func:`isyb.head.morphology.head_mask` at
    :func:`isyb.head.morphology.skin_threshold`, joined with the brain and
    every voxel above the threshold), ``empty`` (:func:`empty_mask`),
    ``air`` (:func:`air_mask`), ``noise_source`` and ``note`` (``"brain"``
    and the reason when the image has no measurable background). They
    depend on the image outside the brain, not on the tissues: with
    ``dataclasses.replace(masks, **background_masks(copy, zooms,
    masks.brain))`` a copy of a head whose brain is untouched (a defaced
    copy) reuses the original's segmentation.
    """
    image = check_image(data)
    brain = np.asarray(brain, dtype=bool)
    threshold = skin_threshold(image)
    head = head_mask(image, threshold) | brain | (image > threshold)
    empty = empty_mask(image)
    try:
        air = air_mask(image, head, np.asarray(zooms, dtype=float), brain=brain, empty=empty)
    except NoBackgroundError as exc:
        return {"head": head, "air": np.zeros_like(brain), "empty": empty,
                "noise_source": "brain", "note": str(exc)}
    return {"head": head, "air": air, "empty": empty, "noise_source": "air", "note": ""}

