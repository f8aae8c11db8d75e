"""Simulated re-scans and individual faces: the cohorts of the re-identification attack.

A re-scan (:func:`simulate_rescan`) moves the head a little, changes the bias
field and the noise; :func:`vary_face` gives each simulated subject a face of
its own inside the face region; :func:`varied_phantom` draws a whole subject.
The attack itself, and what it measures, are in :mod:`isyb.evaluate.reid`.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from isyb.head.morphology import bounding_box, dilate_mm, distance_mm, skin_threshold
from isyb.head.register import resample_to
from isyb.io import Volume, volume_from_image
from isyb.templates.face import FaceRule, face_region
from isyb.templates.registry import Template


def as_volume(data: np.ndarray, affine: np.ndarray) -> Volume:
    """A RAS :class:`Volume` of an in-memory RAS array and its affine (NIfTI source header)."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    return volume_from_image(image)


def tissue_level(data: np.ndarray) -> float:
    """Typical head-tissue intensity: the median of the voxels above the skin threshold."""
    thr = skin_threshold(data)
    head = np.asarray(data)[np.asarray(data) > thr]
    return float(np.median(head)) if head.size else float(np.max(data))


def head_motion(rng: np.random.Generator, centre_mm: np.ndarray, *, max_rotation_deg: float = 5.0,
                max_shift_mm: float = 5.0) -> np.ndarray:
    """A random rigid head motion (4x4, world mm -> world mm) about ``centre_mm``.

    Three Euler angles (about x, y, z) uniform in ±``max_rotation_deg`` and a
    translation uniform in ±``max_shift_mm`` per axis.
    """
    motion = np.eye(4)
    angles = rng.uniform(-max_rotation_deg, max_rotation_deg, 3)
    motion[:3, :3] = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    centre = np.asarray(centre_mm, dtype=float)
    motion[:3, 3] = centre - motion[:3, :3] @ centre + rng.uniform(-max_shift_mm, max_shift_mm, 3)
    return motion


def simulate_rescan(volume: Volume, rng: np.random.Generator, *, max_rotation_deg: float = 5.0,
                    max_shift_mm: float = 5.0, voxel_jitter: float = 0.1,
                    noise_fraction: float = 0.04) -> tuple[Volume, np.ndarray]:
    """The scan of :func:`rescan`, and the head motion (4x4, old world -> new world mm).

    The motion maps where a point of the head was to where it is in the new
    scan; resample a mask of the original with ``resample_to(mask,
    volume.affine, new.shape, new.affine, inv(motion))`` to carry it over.
    """
    data = np.asarray(volume.data, dtype=np.float32)
    zooms = volume.zooms
    thr = skin_threshold(data)
    head = np.argwhere(data > thr)
    centre_vox = head.mean(axis=0) if head.size else (np.array(data.shape) - 1) / 2.0
    centre = volume.affine[:3, :3] @ centre_vox + volume.affine[:3, 3]
    motion = head_motion(rng, centre, max_rotation_deg=max_rotation_deg,
                         max_shift_mm=max_shift_mm)
    new_zooms = zooms * rng.uniform(1.0 - voxel_jitter, 1.0 + voxel_jitter, 3)
    extent = np.array(data.shape) * zooms
    shape = tuple(int(n) for n in np.maximum(np.rint(extent / new_zooms), 1))
    # the new grid: the old grid's axes, voxel sizes changed, same FOV centre
    directions = volume.affine[:3, :3] / zooms
    fov_centre = volume.affine[:3, :3] @ ((np.array(data.shape) - 1) / 2.0) + volume.affine[:3, 3]
    affine = np.eye(4)
    affine[:3, :3] = directions * new_zooms
    affine[:3, 3] = fov_centre - affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    moved = resample_to(data, volume.affine, shape, affine, np.linalg.inv(motion), order=1)
    sigma = np.float32(noise_fraction * tissue_level(data))
    real = moved + sigma * rng.standard_normal(shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(shape, dtype=np.float32)
    noisy = np.sqrt(real * real + imag * imag)
    return as_volume(noisy, affine), motion


def rescan(volume: Volume, rng: np.random.Generator, **kwargs: float) -> Volume:
    """``volume`` as if the person were scanned again: new pose, new grid, new noise.

    * head motion: a rigid turn of up to ±5° about each axis, about the head's
      centre, and a shift of up to ±5 mm per axis (uniform);
    * grid: each voxel size scaled by a factor uniform in 0.9..1.1, over the
      same field of view (trilinear resampling, which also blurs a little);
    * noise: Rician, from Gaussian noise of ``noise_fraction`` (4%) of the
      head's median tissue intensity (:func:`tissue_level`) on the real and the
      imaginary channel, on top of the scan's own noise.

    Keyword arguments are those of :func:`simulate_rescan`.
    """
    return simulate_rescan(volume, rng, **kwargs)[0]


def smooth_field(shape: tuple[int, ...], zooms: np.ndarray, rng: np.random.Generator,
                 scale_mm: float) -> np.ndarray:
    """Gaussian random field: white noise smoothed with sigma ``scale_mm``, unit RMS."""
    noise = rng.standard_normal(shape).astype(np.float32)
    field = ndimage.gaussian_filter(noise, scale_mm / np.asarray(zooms, dtype=float),
                                    mode="wrap")
    rms = float(np.sqrt(np.mean(field * field)))
    return field / max(rms, 1e-12)


def face_weight(volume: Volume, subject_to_template: np.ndarray, rule: FaceRule, *,
                brain: np.ndarray | None = None, brain_margin_mm: float = 15.0,
                taper_mm: float = 15.0) -> np.ndarray:
    """Where :func:`vary_face` may move tissue: a weight in 0..1 on the scan's grid.

    The face region of ``rule`` (carried into the scan by
    ``subject_to_template``), minus everything within ``brain_margin_mm`` of
    ``brain`` when given. The weight rises smoothly (smoothstep) from 0 on the
    region's border to 1 at ``taper_mm`` inside it, so the warp has no
    discontinuity that could tear the image: with the defaults of
    :func:`vary_face` the displacement's gradient stays well under 1 (no folds).
    """
    zooms = volume.zooms
    region = face_region(rule, volume.shape, subject_to_template @ volume.affine)
    if brain is not None:
        region &= ~dilate_mm(np.asarray(brain, dtype=bool), zooms, brain_margin_mm)
    if not region.any():
        return np.zeros(volume.shape, dtype=np.float32)
    inside = distance_mm(region, zooms)
    ramp = np.clip(inside / taper_mm, 0.0, 1.0)
    return (ramp * ramp * (3.0 - 2.0 * ramp)).astype(np.float32)


def vary_face(volume: Volume, weight: np.ndarray, rng: np.random.Generator, *,
              amplitude_mm: float = 3.0, scale_mm: float = 10.0) -> Volume:
    """``volume`` with an individual face: a smooth random warp where ``weight`` > 0.

    The displacement ``u(p) = amplitude_mm * weight(p) * g(p)``, with ``g`` three
    independent Gaussian random fields of correlation scale ``scale_mm`` and
    unit RMS (:func:`smooth_field`), so ``amplitude_mm`` is the RMS of each
    component where ``weight`` is 1. The new image is ``I(p + u(p))``
    (trilinear). At 3 mm and 10 mm it moves the nose, lips, brows and cheeks by
    a few millimetres each, independently: what distinguishes one adult face
    from another after affine normalisation, to an order of magnitude. Voxels
    where ``weight`` is 0 (the brain and the rest of the head) are unchanged.
    """
    data = np.asarray(volume.data, dtype=np.float32)
    zooms = volume.zooms
    weight = np.asarray(weight, dtype=np.float32)
    out = data.copy()
    if not np.any(weight > 0):
        return as_volume(out, volume.affine)
    pad = np.ceil(3 * scale_mm / zooms).astype(int)
    box = bounding_box(weight > 0, pad)
    shape = out[box].shape
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float32) for s in box],
                        indexing="ij")
    coords = []
    for axis in range(3):
        field = smooth_field(shape, zooms, rng, scale_mm)
        shift_vox = amplitude_mm * weight[box] * field / np.float32(zooms[axis])
        coords.append(grids[axis] + shift_vox)
    warped = ndimage.map_coordinates(data, coords, order=1, mode="nearest")
    out[box] = np.where(weight[box] > 0, warped, data[box])
    return as_volume(out, volume.affine)


#: Field of view (mm) and its centre for cohort phantoms: larger than the phantom's
#: default, so that a nose or chin never leaves it after a re-scan's head motion.
PHANTOM_FOV_MM = (220.0, 270.0, 300.0)
PHANTOM_FOV_CENTRE_MM = (0.0, 10.0, -20.0)
#: Default head dimensions (mm) of :func:`isyb.synthetic.phantom.make_phantom`:
#: length, width, height.
PHANTOM_SIZE_MM = (190.0, 150.0, 225.0)


def reference_to_template(template: Template, *, voxel_size: float = 2.0,
                          seed: int = 99) -> np.ndarray:
    """The subject->template affine (4x4, RAS mm) of a phantom of default size on the
    :data:`PHANTOM_FOV_MM` field of view: one :func:`isyb.deface.engine.align` with the
    phantom's exact intracranial mask. It is the ``reference_to_template`` of
    :func:`varied_phantom`."""
    from isyb.deface.engine import align
    from isyb.synthetic.phantom import Label, make_phantom, to_nifti

    phantom = make_phantom(voxel_size=voxel_size, fov_mm=PHANTOM_FOV_MM,
                           fov_center_mm=PHANTOM_FOV_CENTRE_MM, seed=seed)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    return align(volume, template, brain=brain).registration.subject_to_template


def varied_phantom(seed: int, reference_to_template: np.ndarray, rule: FaceRule, *,
                   voxel_size: float = 2.0, shape_range: float = 0.08,
                   amplitude_mm: float = 3.0, scale_mm: float = 10.0) -> tuple[Volume, np.ndarray]:
    """A phantom subject with its own head shape *and* its own face; and its brain mask.

    Head length, width and height are each the phantom default times a factor
    uniform in ``1 ± shape_range`` (seeded by ``seed``), on the
    :data:`PHANTOM_FOV_MM` field of view, with the phantom's own noise. The
    face is then varied by :func:`vary_face` (seeded by ``seed``) inside the
    face region of ``rule``. That region is placed with
    ``reference_to_template``, the subject->template affine of a phantom of
    default size (one :func:`isyb.deface.engine.align`), divided by the
    per-axis scale: the phantom's geometry scales about its world origin, so
    this is its subject->template map to within the fixed-thickness layers,
    and no registration is needed per subject. Returns the RAS volume and the
    phantom's exact intracranial mask (grey and white matter and CSF), which
    the face variation leaves untouched (it stays 15 mm away). The
    intracranial mask, rather than grey and white matter alone, is what
    deepbet's masks and the template's cover: with it the registration's
    brain-mask Dice on phantoms is about 0.82 instead of 0.77-0.80, so its
    first start is accepted (three times faster).
    """
    from isyb.synthetic.phantom import Label, make_phantom, to_nifti

    rng = np.random.default_rng(seed)
    factors = rng.uniform(1.0 - shape_range, 1.0 + shape_range, 3)
    length, width, height = (f * d for f, d in zip(factors, PHANTOM_SIZE_MM, strict=True))
    phantom = make_phantom(voxel_size=voxel_size, length=length, width=width, height=height,
                           fov_mm=PHANTOM_FOV_MM, fov_center_mm=PHANTOM_FOV_CENTRE_MM, seed=seed)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    unscale = np.diag([PHANTOM_SIZE_MM[1] / width, PHANTOM_SIZE_MM[0] / length,
                       PHANTOM_SIZE_MM[2] / height, 1.0])
    weight = face_weight(volume, np.asarray(reference_to_template) @ unscale, rule, brain=brain)
    varied = vary_face(volume, weight, rng, amplitude_mm=amplitude_mm, scale_mm=scale_mm)
    return varied, brain
