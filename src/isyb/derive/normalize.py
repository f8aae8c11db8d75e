"""Registration for derived metrics: coregistration and normalization to a symmetric template.

Coordinates: every image is an array with a voxel->world affine in RAS
millimetres (``isyb.io.load_volume``). Every 4×4 ``matrix`` here maps RAS
world millimetres of one image to RAS world millimetres of another. ANTs works
in LPS physical space; images are handed to it with their full geometry
(origin, spacing, direction cosines) and its affine files are read back
through the flip ``diag(-1, -1, 1)``, both by :mod:`isyb.head.ants`.

* :func:`normalization_template`: nilearn's offline ICBM 2009a nonlinear
  symmetric template (Fonov et al. 2009/2011), the target of group maps and
  of VMHC (symmetric about x = 0).
* :func:`coregister`: a rigid (or affine) mutual-information fit between two
  images of one subject (mean BOLD or b0 to T1w), ANTs ``Rigid``/``Affine``.
* :func:`normalize`: the skull-stripped T1w to the template brain, ANTs
  affine then SyN (Avants et al. 2008), with its transform files kept on disk.
* :func:`to_template`: a subject map (3-D, or 4-D volume by volume) onto the
  template grid in one interpolation, optionally through a coregistration.
* :func:`to_space`: resampling through a world matrix (T1w masks into BOLD or
  DWI space).

ANTs registers on one ITK thread (:func:`isyb.head.ants.one_itk_thread`) with a
fixed seed, as in :mod:`isyb.head.register`, so results are reproducible.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse

from isyb.errors import IsybError, RegistrationError
from isyb.head.ants import FLIP, one_itk_thread, read_affine, seed_ants, start_itk, to_ants
from isyb.head.register import dice, resample_to, scale_to_unit, working_grid
from isyb.io import atomic_path, write_text

SEED = 42
KINDS_COREGISTER = ("Rigid", "Affine")
KINDS_NORMALIZE = ("SyN", "Affine")
INTERPOLATIONS = ("linear", "nearestNeighbor", "genericLabel")

#: Linear stages (Mattes MI, 32 bins, 25 % random sampling), three levels.
LINEAR_SETTINGS: dict[str, object] = {
    "aff_metric": "mattes", "aff_sampling": 32, "aff_random_sampling_rate": 0.25,
    "aff_iterations": (200, 100, 50), "aff_shrink_factors": (4, 2, 1),
    "aff_smoothing_sigmas": (2, 1, 0),
}
#: SyN stage: ANTsPy's default SyN (gradient step 0.2, flow sigma 3, Mattes MI,
#: 40 and 20 iterations at 1/4 and 1/2 resolution, none at full resolution).
SYN_SETTINGS: dict[str, object] = {
    "syn_metric": "mattes", "syn_sampling": 32, "reg_iterations": (40, 20, 0),
    "grad_step": 0.2, "flow_sigma": 3, "total_sigma": 0,
}
#: Voxels (of the registration grid) by which the template brain mask is grown
#: to limit the affine metric to the brain and its edge.
MASK_DILATION = 3
RECORD = "normalization.json"


class NormalizeError(IsybError, ValueError):
    """An image, mask, matrix or setting that these registrations cannot use."""


@dataclass(frozen=True)
class TemplateImages:
    """The normalization template on one grid (RAS arrays, read-only).

    ``head`` is nilearn's T1w (brain-extracted by nilearn, scaled 0..1);
    ``brain_mask`` is nilearn's brain mask (T1w > 0.2, bool); ``gm`` and
    ``wm`` are the ICBM tissue probabilities (0..1); ``csf`` is not shipped by
    nilearn and is estimated as ``clip(brain_mask - gm - wm, 0, 1)``.
    ``affine`` is voxel->RAS mm; the grid is symmetric about x = 0.
    """

    head: np.ndarray
    brain_mask: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    affine: np.ndarray
    resolution_mm: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.head.shape  # type: ignore[return-value]


@functools.lru_cache(maxsize=4)
def normalization_template(resolution_mm: int = 2) -> TemplateImages:
    """nilearn's ICBM 2009a nonlinear symmetric template at ``resolution_mm`` (1, 2, ...).

    Read offline with ``nilearn.datasets.load_mni152_template``,
    ``load_mni152_brain_mask``, ``load_mni152_gm_template`` and
    ``load_mni152_wm_template`` (nilearn resamples the 1 mm files to other
    resolutions). Cached per resolution.
    """
    if isinstance(resolution_mm, bool) or not isinstance(resolution_mm, int) \
            or resolution_mm < 1:
        raise NormalizeError(
            f"resolution_mm must be a positive whole number, got {resolution_mm!r}")
    from nilearn import datasets

    head_img = datasets.load_mni152_template(resolution=resolution_mm)
    head = np.clip(np.asarray(head_img.get_fdata(), dtype=np.float32), 0, None)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution_mm).dataobj) > 0
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata(),
                    dtype=np.float32).clip(0, 1)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(),
                    dtype=np.float32).clip(0, 1)
    csf = np.clip(brain - gm - wm, 0, 1).astype(np.float32)
    arrays = [head, brain, gm, wm, csf, np.asarray(head_img.affine, dtype=float)]
    for array in arrays:
        array.setflags(write=False)
    return TemplateImages(*arrays, resolution_mm=resolution_mm)


def _check_image(data: np.ndarray, affine: np.ndarray, name: str,
                 ndims: tuple[int, ...] = (3,)) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(data)
    if data.ndim not in ndims:
        raise NormalizeError(f"{name} must be {' or '.join(f'{n}-D' for n in ndims)}, "
                             f"got shape {data.shape}")
    return data, _check_matrix(affine, f"the affine of {name}")


def _check_matrix(matrix: np.ndarray, name: str) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)) \
            or abs(np.linalg.det(matrix[:3, :3])) < 1e-9:
        raise NormalizeError(f"{name} must be an invertible 4x4 matrix")
    return matrix


def _check_mask(mask: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise NormalizeError(f"{name} has shape {mask.shape}, its image {shape}")
    if not mask.any():
        raise NormalizeError(f"{name} is empty")
    return mask > 0


def _zooms(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((affine[:3, :3] ** 2).sum(axis=0))


def _work_grid(data: np.ndarray, affine: np.ndarray,
               spacing_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """``data`` block-averaged onto an isotropic ``spacing_mm`` grid when it is finer.

    :func:`isyb.head.register.working_grid` centres an even block half a fine
    voxel before its first voxel; the affine is moved there, so the coarse
    grid stays where its block means are.
    """
    if _zooms(affine).min() >= spacing_mm - 1e-3:
        return np.asarray(data, dtype=np.float32), affine
    grid, grid_affine = working_grid(data, affine, spacing_mm)
    size = np.maximum(np.rint(spacing_mm / _zooms(affine)), 1)
    grid_affine[:3, 3] += affine[:3, :3] @ ((size - 1) / 2 - size // 2)
    return grid, grid_affine


def coregister(moving: np.ndarray, moving_affine: np.ndarray, fixed: np.ndarray,
               fixed_affine: np.ndarray, *, fixed_mask: np.ndarray | None = None,
               kind: str = "Rigid", spacing_mm: float | None = None,
               seed: int = SEED) -> np.ndarray:
    """Fit the world matrix M (4×4, RAS mm) with ``M @ p_fixed = p_moving``.

    A point p of the fixed image (the T1w) is the same anatomy as the point
    ``M @ p`` of the moving image (mean BOLD, b0 or mean DWI): pass M as
    ``pre`` to :func:`to_template`, or as ``matrix`` to :func:`to_space` to
    carry T1w masks into the moving image's grid.

    ANTs ``kind`` ("Rigid", 6 parameters, or "Affine", 12) with Mattes mutual
    information (different contrasts of one subject), started from the
    intensity centres of mass, three levels (:data:`LINEAR_SETTINGS`).
    Images finer than ``spacing_mm`` (default: the moving image's largest voxel
    size, at least 2 mm) are block-averaged to it first. ``fixed_mask``
    (bool, fixed grid) limits the metric to, for example, the brain.
    """
    moving, moving_affine = _check_image(moving, moving_affine, "the moving image")
    fixed, fixed_affine = _check_image(fixed, fixed_affine, "the fixed image")
    if kind not in KINDS_COREGISTER:
        raise NormalizeError(f"kind must be one of {', '.join(KINDS_COREGISTER)}, got {kind!r}")
    spacing = float(spacing_mm) if spacing_mm is not None else max(2.0, _zooms(moving_affine).max())
    if not spacing > 0:
        raise NormalizeError(f"spacing_mm must be positive, got {spacing_mm}")
    if fixed_mask is not None:
        fixed_mask = _check_mask(fixed_mask, fixed.shape, "the fixed mask")
    return one_itk_thread(_register_linear, moving, moving_affine, fixed, fixed_affine,
                          fixed_mask, kind=kind, spacing=spacing, seed=seed)


def _register_linear(moving: np.ndarray, moving_affine: np.ndarray, fixed: np.ndarray,
                     fixed_affine: np.ndarray, fixed_mask: np.ndarray | None, *, kind: str,
                     spacing: float, seed: int) -> np.ndarray:
    """:func:`coregister`'s registration, run on one ITK thread (the caller's
    :func:`isyb.head.ants.one_itk_thread`)."""
    ants = seed_ants(seed)
    mov, mov_aff = _work_grid(moving, moving_affine, spacing)
    fix, fix_aff = _work_grid(fixed, fixed_affine, spacing)
    mask = None
    if fixed_mask is not None:
        mask = to_ants(_work_grid(fixed_mask.astype(np.float32), fixed_affine, spacing)[0]
                           > 0.5, fix_aff)
    with tempfile.TemporaryDirectory(prefix="isyb-coreg-") as tmp:
        result = ants.registration(
            to_ants(scale_to_unit(fix), fix_aff), to_ants(scale_to_unit(mov), mov_aff),
            type_of_transform=kind, mask=mask, outprefix=os.path.join(tmp, "coreg_"),
            **LINEAR_SETTINGS)
        return read_affine(result["fwdtransforms"][0])


@dataclass(frozen=True)
class Normalization:
    """Transform files that bring subject (T1w) images onto the template.

    ``forward`` lists ANTs transform files in ``ants.apply_transforms`` order
    (fixed = template, moving = subject): a template point x goes to the
    subject point ``forward[-1](... forward[0](x))``. ``kind`` is "SyN"
    (warp, affine) or "Affine" (affine). ``seconds`` is the registration's
    wall time, ``brain_dice`` the overlap (0..1) of the subject's brain mask
    carried onto the template with the template's, on the registration grid.
    ``stamp`` identifies the inputs and settings; ``reused`` is True when the
    files were read from disk instead of computed.
    """

    forward: tuple[str, ...]
    kind: str
    seconds: float
    brain_dice: float
    stamp: str
    reused: bool = False

    @classmethod
    def load(cls, work_prefix: str | os.PathLike) -> Normalization | None:
        """The normalization kept in the folder ``work_prefix``, or None if absent or incomplete."""
        folder = Path(work_prefix)
        try:
            record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
            forward = tuple(str(folder / name) for name in record["forward"])
            found = cls(forward, str(record["kind"]), float(record["seconds"]),
                        float(record["brain_dice"]), str(record["stamp"]), reused=True)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return found if all(Path(path).is_file() for path in forward) else None


def _stamp(*parts: object) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() if isinstance(part, np.ndarray) else repr(part).encode())
    return digest.hexdigest()[:32]


def normalize(t1w: np.ndarray, t1w_affine: np.ndarray, t1w_brain: np.ndarray,
              template: TemplateImages, work_prefix: str | os.PathLike, *, kind: str = "SyN",
              spacing_mm: float = 2.0, fail_below: float = 0.7,
              seed: int = SEED) -> Normalization:
    """Register the skull-stripped T1w (``t1w * t1w_brain``) to the template brain.

    Both brains are brought to an isotropic ``spacing_mm`` grid (never finer
    than the template's) and scaled to their 99.5th percentile. ANTs fits an
    affine (Mattes MI (Mattes et al. 2003) from the intensity centres of mass,
    sampled inside the template brain grown by :data:`MASK_DILATION` voxels,
    :data:`LINEAR_SETTINGS`) and, for ``kind="SyN"``, a SyN warp on top
    (:data:`SYN_SETTINGS`: ANTsPy's default SyN schedule, whose finest level
    is half the grid resolution). A 1 mm T1w takes about 6 s (Affine) or
    13 s (SyN) on one core.

    The transform files are kept in the folder ``work_prefix`` (written
    atomically, the record ``normalization.json`` last). When the folder holds
    a normalization of the same inputs and settings, it is returned as it is
    (``reused=True``) without registering again. A brain-mask Dice under
    ``fail_below`` raises :class:`RegistrationError` (fail closed).
    """
    t1w, t1w_affine = _check_image(t1w, t1w_affine, "the T1w image")
    brain = _check_mask(t1w_brain, t1w.shape, "the T1w brain mask")
    if kind not in KINDS_NORMALIZE:
        raise NormalizeError(f"kind must be one of {', '.join(KINDS_NORMALIZE)}, got {kind!r}")
    spacing = max(float(spacing_mm), float(_zooms(template.affine).max()))
    mov, mov_aff = _work_grid(np.where(brain, t1w, 0).astype(np.float32), t1w_affine, spacing)
    mov_brain = _work_grid(brain.astype(np.float32), t1w_affine, spacing)[0] > 0.5
    fix, fix_aff = _work_grid(np.where(template.brain_mask, template.head, 0), template.affine,
                              spacing)
    fix_brain = _work_grid(template.brain_mask.astype(np.float32), template.affine,
                           spacing)[0] > 0.5
    stamp = _stamp(kind, spacing, seed, LINEAR_SETTINGS, SYN_SETTINGS, MASK_DILATION, mov, mov_aff,
                   fix.shape, fix_aff)
    found = Normalization.load(work_prefix)
    if found is not None and found.stamp == stamp:
        return found
    return one_itk_thread(_register_normalization, fix, fix_aff, fix_brain, mov, mov_aff,
                          mov_brain, kind=kind, seed=seed, fail_below=fail_below,
                          work_prefix=work_prefix, stamp=stamp)


def _register_normalization(fix: np.ndarray, fix_aff: np.ndarray, fix_brain: np.ndarray,
                            mov: np.ndarray, mov_aff: np.ndarray, mov_brain: np.ndarray, *,
                            kind: str, seed: int, fail_below: float,
                            work_prefix: str | os.PathLike, stamp: str) -> Normalization:
    """:func:`normalize`'s registration on the work grids, run on one ITK thread (the
    caller's :func:`isyb.head.ants.one_itk_thread`), and its record."""
    ants = seed_ants(seed)
    start = time.perf_counter()
    fixed, moving = to_ants(scale_to_unit(fix), fix_aff), to_ants(scale_to_unit(mov), mov_aff)
    metric_mask = to_ants(ndimage.binary_dilation(fix_brain, iterations=MASK_DILATION),
                              fix_aff)
    with tempfile.TemporaryDirectory(prefix="isyb-norm-") as tmp:
        result = ants.registration(fixed, moving, type_of_transform="Affine", mask=metric_mask,
                                   outprefix=os.path.join(tmp, "affine_"), **LINEAR_SETTINGS)
        forward = list(result["fwdtransforms"])
        if kind == "SyN":
            result = ants.registration(fixed, moving, type_of_transform="SyNOnly",
                                       initial_transform=forward,
                                       outprefix=os.path.join(tmp, "syn_"), **SYN_SETTINGS)
            forward = list(result["fwdtransforms"])
        carried = ants.apply_transforms(fixed, to_ants(mov_brain, mov_aff), forward,
                                        interpolator="linear",
                                        whichtoinvert=[False] * len(forward))
        score = dice(carried.numpy() > 0.5, fix_brain)
        seconds = time.perf_counter() - start
        if score < fail_below:
            raise RegistrationError(
                f"normalization failed: brain-mask Dice {score:.2f} with the template is below "
                f"{fail_below:.2f}")
        names = ["warp.nii.gz" if path.endswith(".nii.gz") else "affine.mat" for path in forward]
        folder = Path(work_prefix)
        (folder / RECORD).unlink(missing_ok=True)
        for path, name in zip(forward, names, strict=True):
            with atomic_path(folder / name) as part:
                shutil.copyfile(path, part)
    record = {"kind": kind, "forward": names, "seconds": round(seconds, 3),
              "brain_dice": round(score, 4), "stamp": stamp}
    write_text(folder / RECORD, json.dumps(record, indent=1))
    return Normalization(tuple(str(folder / name) for name in names), kind, record["seconds"],
                         record["brain_dice"], stamp)


def template_points(normalization: Normalization, template: TemplateImages) -> np.ndarray:
    """Subject RAS mm (N×3, C order) of every template voxel, through the forward transforms."""
    ants = start_itk()

    reference = to_ants(np.zeros(template.shape, dtype=np.float32), template.affine)
    forward = list(normalization.forward)
    with tempfile.TemporaryDirectory(prefix="isyb-compose-") as tmp:
        path = ants.apply_transforms(reference, reference, forward,
                                     compose=os.path.join(tmp, "composed_"),
                                     whichtoinvert=[False] * len(forward))
        if path is None:
            raise NormalizeError(f"ANTs could not compose the transforms {forward}")
        displacement = ants.image_read(path).numpy().reshape(-1, 3)  # LPS mm
    ijk = np.indices(template.shape, dtype=np.float64).reshape(3, -1).T
    lps = ijk @ (FLIP @ template.affine)[:3, :3].T + (FLIP @ template.affine)[:3, 3]
    return (lps + displacement) * np.diag(FLIP)[:3]


def _interpolation_weights(ijk: np.ndarray, shape: tuple[int, ...], order: int) -> sparse.csr_array:
    """Sparse (points × voxels) weights of nearest (order 0) or trilinear (1) sampling.

    Corners outside the grid count as 0 (scipy ``map_coordinates`` with
    ``mode="constant"``, ``cval=0``).
    """
    n_points = ijk.shape[0]
    rows, cols, weights = [], [], []
    if order == 0:
        corners = [(np.floor(ijk + 0.5).astype(np.int64), np.ones(n_points, dtype=np.float32))]
    else:
        base = np.floor(ijk).astype(np.int64)
        frac = (ijk - base).astype(np.float32)
        corners = []
        for offset in np.ndindex(2, 2, 2):
            step = np.array(offset)
            weight = np.prod(np.where(step, frac, 1 - frac), axis=1)
            corners.append((base + step, weight))
    for index, weight in corners:
        keep = np.all((index >= 0) & (index < np.array(shape)), axis=1) & (weight > 0)
        rows.append(np.nonzero(keep)[0])
        cols.append(np.ravel_multi_index(tuple(index[keep].T), shape))
        weights.append(weight[keep])
    return sparse.csr_array((np.concatenate(weights), (np.concatenate(rows),
                                                       np.concatenate(cols))),
                            shape=(n_points, int(np.prod(shape))))


def to_template(image: np.ndarray, affine: np.ndarray, normalization: Normalization,
                template: TemplateImages, *, pre: np.ndarray | None = None,
                interpolation: str = "linear", points: np.ndarray | None = None) -> np.ndarray:
    """Bring a subject map (3-D, or 4-D: each volume) onto the template grid in one step.

    Each template voxel's world point goes through ``normalization.forward``
    (composed by ANTs into one displacement field) to the T1w, then through
    ``pre`` (a :func:`coregister` matrix: T1w RAS mm -> the image's RAS mm;
    identity if None) to the image, where it is sampled: "linear"
    (trilinear), "nearestNeighbor", or "genericLabel" (each label's indicator
    trilinearly, the largest wins, as ANTs' GenericLabel[Linear]). Points
    outside the image read 0. The sampling weights are built once and applied
    to all volumes as one sparse product; stacking several maps on a 4th axis
    pays for the composition once; ``points`` (:func:`template_points` of the same
    normalisation and template) skips it. Returns float32 on ``template.shape``
    (the labels' dtype for "genericLabel").
    """
    data, affine = _check_image(image, affine, "the image", ndims=(3, 4))
    if interpolation not in INTERPOLATIONS:
        raise NormalizeError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"got {interpolation!r}")
    if points is None:
        points = template_points(normalization, template)
    if pre is not None:
        pre = _check_matrix(pre, "pre")
        points = points @ pre[:3, :3].T + pre[:3, 3]
    inverse = np.linalg.inv(affine)
    ijk = points @ inverse[:3, :3].T + inverse[:3, 3]
    weights = _interpolation_weights(ijk, data.shape[:3],
                                     0 if interpolation == "nearestNeighbor" else 1)
    columns = data.reshape(int(np.prod(data.shape[:3])), -1)
    out_shape = template.shape + data.shape[3:]
    if interpolation != "genericLabel":
        return (weights @ columns.astype(np.float32)).reshape(out_shape)
    labels = np.unique(columns)
    best = np.zeros((weights.shape[0], columns.shape[1]), dtype=np.float32)
    out = np.zeros(best.shape, dtype=data.dtype)
    for label in labels:
        score = weights @ (columns == label).astype(np.float32)
        better = score > best
        out[better], best[better] = label, score[better]
    return out.reshape(out_shape)


def to_space(image: np.ndarray, affine: np.ndarray, target_shape: tuple[int, int, int],
             target_affine: np.ndarray, matrix: np.ndarray, *, order: int = 1) -> np.ndarray:
    """Resample a 3-D ``image`` onto a target grid; ``matrix`` maps image RAS mm to target RAS mm.

    With M from ``coregister(bold_mean, bold_affine, t1w, t1w_affine)``
    (T1w point -> BOLD point), ``to_space(mask_t1w, t1w_affine, bold_shape,
    bold_affine, M)`` gives the mask in BOLD space: each target voxel's world
    point p is read from the image at ``inv(matrix) @ p``. ``order`` is the
    interpolation order (0 nearest, 1 linear); points outside read 0. Returns float32
    (threshold a linearly resampled mask at 0.5).
    """
    data, affine = _check_image(image, affine, "the image")
    target_affine = _check_matrix(target_affine, "the target affine")
    matrix = _check_matrix(matrix, "matrix")
    if len(target_shape) != 3 or min(target_shape) < 1:
        raise NormalizeError(f"target_shape must be three positive sizes, got {target_shape}")
    if order not in (0, 1):
        raise NormalizeError(f"order must be 0 or 1, got {order}")
    return resample_to(data, affine, tuple(int(n) for n in target_shape), target_affine,
                       np.linalg.inv(matrix), order=order)
