"""A study-specific head template, built from the cohort itself (``--templates study``).

The template is an unbiased average head made with ANTsPy's template
construction (:func:`ants.build_template`, the ``buildtemplateparallel`` /
``antsMultivariateTemplateConstruction`` idea of Avants et al. 2010): every
head is registered to the current average, the warped heads are averaged, and
the average is moved by the inverse of the mean (non-rigid part of the)
transform, so that it converges to the cohort's mean shape and size.

Steps, all on a coarse isotropic grid (``resolution_mm``, 2 mm by default):

1. **Selection.** The image paths are sorted; ``n_subjects`` of them are drawn
   with ``numpy.random.default_rng(seed).permutation``, so that the same seed
   picks the same heads.
2. **Normalisation.** Each head is read in RAS order (:func:`isyb.io.load_volume`),
   block-averaged onto the working grid (:func:`isyb.head.register.working_grid`),
   and divided by the 99th percentile of its head voxels (clipped at 1.5), so
   that scans of any scale or contrast weigh the same in the average.
3. **Rigid pre-alignment.** Header origins cannot be trusted, so every head is
   aligned rigidly (6 parameters; ANTs, Mattes mutual information on a 4 mm
   grid, started from the head centroids) to the first selected head, the
   reference, and all heads are resampled onto one common grid: the reference's
   world axes, covering the union of the aligned heads plus a margin. Rigid and
   not affine, so that the heads keep their own size and the template's shape
   is the cohort's mean and not the reference's. A pre-alignment whose head
   overlap (Dice of the head masks, where both fields of view see them) is
   under :data:`PREALIGN_ACCEPT` is retried from pitched and yawed starts; a
   head whose best overlap stays under :data:`PREALIGN_FAIL` is left out, with
   a progress message (fewer than 2 heads left is an error).
4. **Template construction.** :func:`ants.build_template` with
   ``type_of_transform="Affine"`` (see :data:`TRANSFORM` for why not SyN) and
   ``iterations`` rounds. Its registrations use :data:`AFFINE_SETTINGS`, whose
   finest level is twice ``resolution_mm`` (4 mm by default). ANTs runs on one
   ITK thread with the random seed ``seed + 1`` (ANTs takes 0 to mean "seed
   from the clock"), so the same inputs and seed give the same template, to
   the bit, across processes.
5. **Field-of-view-weighted average.** build_template's last average is redone
   with each head weighted by its (feathered) field of view, so that a chin or
   a neck that some scans cut off is not dimmed (:func:`_fov_weighted_average`).

The result is written atomically as a float32 NIfTI with a RAS affine
(``qform`` = ``sform``, code 2, aligned to the reference head's world space),
intensities scaled so that the 99th percentile of the head is 1000. It is a
head with a face: :func:`isyb.templates.registry.prepare` derives its brain
mask and face rule like for any other template.

Cost, measured on a 2-core machine shared with other jobs (one ITK thread):
five real heads took 71-80 s (pre-alignment about 8 s), ten heads (six real,
four phantoms) about 4 minutes. Note for callers: while ANTs runs, file
descriptor 1 (stdout) is pointed at ``/dev/null``, because ANTsPy's affine
averaging prints diagnostics from C++; progress goes through ``progress``.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np
from scipy import ndimage

from isyb.errors import IsybError
from isyb.head.ants import (
    one_itk_thread,
    read_affine,
    registers_here,
    seed_ants,
    start_itk,
    to_ants,
)
from isyb.head.morphology import head_mask, skin_threshold
from isyb.head.register import dice, resample_to, working_grid
from isyb.io import atomic_path, load_volume

if TYPE_CHECKING:
    import ants

#: Transform of each template-construction registration. Measured on five real
#: heads (pycortex-S1, myconnectome, mne-sample, colin27, chris cropped) at 2 mm,
#: 3 iterations, one ITK thread: "Affine" built in 67 s, ANTsPy's default "SyN"
#: in about 600 s (440 s of CPU; 9x the cost). Both averages have a face that
#: the stock face detector finds at yaw -15, 0 and +15 degrees, and a brain
#: that deepbet finds (1486 and 1499 ml). SyN's is sharper (mean gradient over
#: mean intensity in the head 5.2 against 4.6) but a study cannot afford
#: minutes per head for a template that is then registered to each subject
#: with an affine only.
TRANSFORM = "Affine"
#: Weight of the average against its sharpened copy (ANTsPy's ``blending_weight``).
BLEND = 0.75
#: Width (mm) over which a scan's weight in the average fades out at the edge of its view.
FEATHER_MM = 8.0
#: Intensity (after division by the head's 99th percentile) above which voxels are clipped.
CLIP = 1.5
#: Value of the head's 99th percentile in the written template.
OUTPUT_SCALE = 1000.0
#: Grid (mm) of the rigid pre-alignment.
PREALIGN_MM = 4.0
#: Margin (mm) added around the union of the aligned heads.
MARGIN_MM = 10.0
#: Head-mask Dice under which the rigid pre-alignment tries other starts.
PREALIGN_ACCEPT = 0.75
#: Head-mask Dice under which a head is left out of the template (it could not be aligned).
PREALIGN_FAIL = 0.60
#: Extra starts of the rigid pre-alignment: (pitch, yaw) in degrees.
PREALIGN_STARTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.0), (15.0, 0.0), (-15.0, 0.0), (30.0, 0.0), (-30.0, 0.0), (0.0, 20.0), (0.0, -20.0),
)
#: ANTs settings of the template-construction registrations. The shrink factors
#: are relative to ``resolution_mm``: 12, 8 and 4 mm levels on the 2 mm grid.
AFFINE_SETTINGS: dict[str, object] = {
    "aff_metric": "mattes",
    "aff_sampling": 32,
    "aff_random_sampling_rate": 0.1,
    "aff_iterations": (200, 100, 50),
    "aff_shrink_factors": (6, 4, 2),
    "aff_smoothing_sigmas": (3, 2, 1),
}

Progress = Callable[[str], None]


@dataclass
class _Head:
    """One selected head on its working grid."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    head: np.ndarray


def select_subjects(images: Sequence[Path], n_subjects: int | None, seed: int) -> list[Path]:
    """The images a template is built from: ``n_subjects`` drawn reproducibly with ``seed``.

    The paths are de-duplicated and sorted first, so the draw does not depend on
    the order they were given in. ``None`` (or a count at least the cohort
    size) keeps every image. The chosen paths are returned sorted.
    """
    paths = sorted({Path(p) for p in images}, key=str)
    if n_subjects is not None and n_subjects < 2:
        raise IsybError(f"a study template needs at least 2 subjects, got n_subjects={n_subjects}")
    if len(paths) < 2:
        raise IsybError(f"a study template needs at least 2 images, got {len(paths)}")
    if n_subjects is None or n_subjects >= len(paths):
        return paths
    order = np.random.default_rng(seed).permutation(len(paths))[:n_subjects]
    return sorted((paths[i] for i in order), key=str)


def build_study_template(images: list[Path], out_path: Path, *, n_subjects: int | None = None,
                         iterations: int = 3, resolution_mm: float = 2.0, seed: int = 0,
                         progress: Progress | None = None) -> Path:
    """Build a head template from the cohort's own heads and write it to ``out_path``.

    ``images`` are head scans (NIfTI or MGZ, any orientation and origin) of the
    cohort; ``n_subjects`` of them (all by default) are drawn with ``seed``
    (:func:`select_subjects`). ``iterations`` is the number of template
    construction rounds, ``resolution_mm`` the isotropic voxel size of the work
    and of the written template. ``progress`` receives one-line messages.

    Returns ``out_path``. Raises :class:`IsybError` for unreadable images,
    too few subjects or bad settings.
    """
    if iterations < 1:
        raise IsybError(f"iterations must be at least 1, got {iterations}")
    if not resolution_mm > 0:
        raise IsybError(f"resolution_mm must be positive, got {resolution_mm}")
    if seed < 0:
        raise IsybError(f"seed must be 0 or more, got {seed}")
    chosen = select_subjects(images, n_subjects, seed)
    say = progress or (lambda _message: None)
    if registers_here():  # in this process, with the live progress callback
        return one_itk_thread(_build, chosen, Path(out_path), iterations, resolution_mm, seed,
                              say)
    # ITK here runs more than one thread: the build runs in the one-thread helper process
    # (isyb.head.ants.one_itk_thread), and its progress lines are passed on at its end.
    path, lines = one_itk_thread(_build_collecting, chosen, Path(out_path), iterations,
                                 resolution_mm, seed)
    for line in lines:
        say(line)
    return path


def _build_collecting(chosen: list[Path], out_path: Path, iterations: int,
                      resolution_mm: float, seed: int) -> tuple[Path, list[str]]:
    """:func:`_build`, with the progress lines returned instead of said."""
    lines: list[str] = []
    return _build(chosen, out_path, iterations, resolution_mm, seed, lines.append), lines


def _build(chosen: list[Path], out_path: Path, iterations: int, resolution_mm: float,
           seed: int, say: Progress) -> Path:
    """:func:`build_study_template` after its checks, on one ITK thread. One ITK thread and
    a fixed seed make ANTs' sampled metric reproducible; ANTs seeds from the clock when
    given 0, hence seed + 1."""
    start = time.perf_counter()
    ants = seed_ants(seed + 1)
    say(f"study template: {len(chosen)} heads at {resolution_mm:g} mm, "
        f"{iterations} iterations of {TRANSFORM} template construction")
    heads = [_load_head(path, resolution_mm) for path in chosen]
    with tempfile.TemporaryDirectory(prefix="isyb-template-") as work:
        reference = heads[0]
        # fixed (reference) RAS world -> moving RAS world, per head
        mappings = [np.eye(4)]
        kept = [reference]
        for number, head in enumerate(heads[1:], start=2):
            mapping, overlap = _prealign(reference, head, os.path.join(work, f"pre{number}_"))
            if overlap < PREALIGN_FAIL:
                say(f"study template: left out head {number}/{len(heads)} ({head.path.name}): "
                    f"it could not be aligned to {reference.path.name} (head overlap "
                    f"{overlap:.2f} < {PREALIGN_FAIL:.2f})")
                continue
            say(f"study template: pre-aligned head {number}/{len(heads)} ({head.path.name}, "
                f"head overlap {overlap:.2f})")
            mappings.append(mapping)
            kept.append(head)
        if len(kept) < 2:
            raise IsybError("study template: fewer than 2 heads could be aligned to "
                            f"{reference.path.name}; no template built")
        heads = kept
        grid_shape, grid_affine = _common_grid(heads, mappings, resolution_mm)
        moved, fovs = [], []
        for h, m in zip(heads, mappings, strict=True):
            moved.append(to_ants(resample_to(h.data, h.affine, grid_shape, grid_affine, m),
                                 grid_affine))
            fov = resample_to(_fov_weight(h.data.shape, h.affine), h.affine, grid_shape,
                              grid_affine, m)
            fovs.append(to_ants(fov, grid_affine))
        say(f"study template: building on a {'x'.join(map(str, grid_shape))} grid")
        build_dir = os.path.join(work, "build")
        with _quiet():  # build_template and ANTs' affine averaging print to stdout
            template = ants.build_template(
                image_list=moved, iterations=iterations, type_of_transform=TRANSFORM,
                blending_weight=BLEND, output_dir=build_dir, **AFFINE_SETTINGS,
            )
            covered = _fov_weighted_average(moved, fovs, build_dir)
        if covered is None:
            say("study template: ANTsPy's build_template left no transforms behind; "
                "using its plain average")
        else:
            template = covered
        data = np.asarray(template.numpy(), dtype=np.float32)
    data = _finish(data)
    image = nib.Nifti1Image(data, grid_affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(grid_affine, code=2)
    image.set_sform(grid_affine, code=2)
    image.header["descrip"] = f"isyb study template, {len(heads)} heads".encode()
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        image.to_filename(str(tmp))
    say(f"study template: wrote {out_path} ({time.perf_counter() - start:.0f} s)")
    return out_path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence stdout, Python's and the C++ library's (file descriptor 1), for a block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(io.StringIO()):
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    ctypes.CDLL(None).fflush(None)  # C/C++ buffers still aimed at devnull
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _fov_weighted_average(moved: list[ants.ANTsImage], fovs: list[ants.ANTsImage],
                          build_dir: str) -> ants.ANTsImage | None:
    """Redo build_template's last averaging step, each voxel over the heads that cover it.

    :func:`ants.build_template` averages the warped heads with fixed weights,
    so a part of the head that some scans cut off (a cropped chin, a slab)
    comes out dim. Here each head is weighted by its field of view, feathered
    over :data:`FEATHER_MM` at the edges so that no seam shows where a scan
    stops, and the weighted sum is divided by the summed weights (where they
    reach half the number of heads; voxels seen by fewer heads fade out).
    Then the last shape update (inverse of the average affine) and the
    sharpening blend are applied like in ANTsPy 0.6.
    The transforms are read from ``build_dir`` as build_template left them
    (``img0000/out0GenericAffine.mat``..., ``avgAffine.mat``); returns None
    when they are not there.
    """
    ants = start_itk()

    average = os.path.join(build_dir, "avgAffine.mat")
    transforms = [os.path.join(build_dir, f"img{k:04d}", "out0GenericAffine.mat")
                  for k in range(len(moved))]
    if not all(os.path.isfile(path) for path in [average, *transforms]):
        return None
    reference = moved[0]
    total = np.zeros(reference.shape, dtype=np.float64)
    cover = np.zeros(reference.shape, dtype=np.float64)
    for image, fov, transform in zip(moved, fovs, transforms, strict=True):
        total += ants.apply_transforms(fixed=reference, moving=image * fov,
                                       transformlist=[transform]).numpy()
        cover += ants.apply_transforms(fixed=reference, moving=fov,
                                       transformlist=[transform]).numpy()
    mean = (total / np.maximum(cover, 0.5 * len(moved))).astype(np.float32)
    image = ants.from_numpy(mean, origin=reference.origin, spacing=reference.spacing,
                            direction=reference.direction)
    image = ants.apply_transforms(fixed=image, moving=image, transformlist=[average],
                                  whichtoinvert=[1])
    return image * BLEND + ants.iMath(image, "Sharpen") * (1.0 - BLEND)


def _fov_weight(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """1 inside a scan's field of view, ramping to 0 over :data:`FEATHER_MM` at its faces."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    weight = np.ones(shape, dtype=np.float32)
    for axis, (size, zoom) in enumerate(zip(shape, zooms, strict=True)):
        index = np.arange(size, dtype=np.float32)
        edge = (np.minimum(index, size - 1 - index) + 0.5) * zoom / FEATHER_MM
        ramp = np.clip(edge, 0.0, 1.0).reshape([-1 if a == axis else 1 for a in range(3)])
        weight = weight * ramp
    return weight


def _load_head(path: Path, resolution_mm: float) -> _Head:
    """Read a head, bring it to the working grid and scale its head's 99th percentile to 1."""
    volume = load_volume(path)
    data, affine = working_grid(volume.data, volume.affine, resolution_mm)
    head = head_mask(data, skin_threshold(data))
    if head.sum() < 1000:
        raise IsybError(f"{path}: no head found on the {resolution_mm:g} mm grid")
    high = float(np.percentile(data[head], 99))
    if not high > 0:
        raise IsybError(f"{path}: the head has no signal")
    data = np.clip(data / high, 0.0, CLIP).astype(np.float32)
    return _Head(Path(path), data, affine, head)


def _centroid(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.array(ndimage.center_of_mass(mask))
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _about(point: np.ndarray, pitch: float, yaw: float) -> np.ndarray:
    """A rotation by ``pitch`` (about Right) then ``yaw`` (about Superior) about ``point``."""
    from scipy.spatial.transform import Rotation

    out = np.eye(4)
    out[:3, :3] = Rotation.from_euler("xz", [pitch, yaw], degrees=True).as_matrix()
    out[:3, 3] = point - out[:3, :3] @ point
    return out


def _prealign(reference: _Head, head: _Head, prefix: str) -> tuple[np.ndarray, float]:
    """Rigid map of reference RAS mm to ``head`` RAS mm, and its head-mask Dice.

    Both heads go to a :data:`PREALIGN_MM` grid; the moving head is first
    shifted so that its head centroid meets the reference's, and, if the Dice
    of the aligned head masks stays under :data:`PREALIGN_ACCEPT`, pre-rotated
    by the other :data:`PREALIGN_STARTS`. The best start wins.
    """
    ants = start_itk()

    fixed_data, fixed_aff = working_grid(reference.data, reference.affine, PREALIGN_MM)
    fixed_head = working_grid(reference.head.astype(np.float32), reference.affine,
                              PREALIGN_MM)[0] > 0.5
    moving_data, moving_aff = working_grid(head.data, head.affine, PREALIGN_MM)
    moving_head = working_grid(head.head.astype(np.float32), head.affine, PREALIGN_MM)[0] > 0.5
    fixed = to_ants(fixed_data, fixed_aff)
    shift = np.eye(4)  # reference world -> head world, matching head centroids
    c_fixed = _centroid(fixed_head, fixed_aff)
    shift[:3, 3] = _centroid(moving_head, moving_aff) - c_fixed
    best: tuple[float, np.ndarray] | None = None
    moving_fov = np.ones(moving_head.shape, dtype=np.float32)
    for number, (pitch, yaw) in enumerate(PREALIGN_STARTS):
        start = shift @ _about(c_fixed, pitch, yaw)  # reference world -> head world
        # The moving image, placed in the reference's world by the start.
        placed_aff = np.linalg.inv(start) @ moving_aff
        moving = to_ants(moving_data, placed_aff)
        result = ants.registration(
            fixed, moving, type_of_transform="Rigid", initial_transform="Identity",
            outprefix=f"{prefix}{number}_", aff_metric="mattes", aff_sampling=32,
            aff_random_sampling_rate=0.25, aff_iterations=(200, 100, 50),
            aff_shrink_factors=(4, 2, 1), aff_smoothing_sigmas=(2, 1, 0),
        )
        mapping = start @ read_affine(result["fwdtransforms"][0])
        warped = resample_to(moving_head.astype(np.float32), moving_aff, fixed_head.shape,
                             fixed_aff, mapping) > 0.5
        # Heads cut by either field of view are compared where both see them.
        in_both = resample_to(moving_fov, moving_aff, fixed_head.shape, fixed_aff, mapping) > 0.5
        score = dice(warped & in_both, fixed_head & in_both)
        if best is None or score > best[0]:
            best = (score, mapping)
        if score >= PREALIGN_ACCEPT:
            break
    assert best is not None
    return best[1], best[0]


def _common_grid(heads: list[_Head], mappings: list[np.ndarray],
                 resolution_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """An axis-aligned grid in reference world mm that holds every aligned head."""
    corners = []
    for head, mapping in zip(heads, mappings, strict=True):
        idx = np.argwhere(head.head)
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        box = np.array([[i, j, k] for i in (lo[0], hi[0]) for j in (lo[1], hi[1])
                        for k in (lo[2], hi[2])], dtype=float)
        world = box @ head.affine[:3, :3].T + head.affine[:3, 3]  # head world
        back = np.linalg.inv(mapping)  # head world -> reference world
        corners.append(world @ back[:3, :3].T + back[:3, 3])
    points = np.concatenate(corners)
    lower = points.min(axis=0) - MARGIN_MM
    upper = points.max(axis=0) + MARGIN_MM
    shape = tuple(int(n) for n in np.ceil((upper - lower) / resolution_mm) + 1)
    affine = np.diag([resolution_mm] * 3 + [1.0])
    affine[:3, 3] = lower
    return shape, affine  # type: ignore[return-value]


def _finish(data: np.ndarray) -> np.ndarray:
    """Rescale the average so that its head's 99th percentile is :data:`OUTPUT_SCALE`."""
    data = np.clip(np.nan_to_num(data, nan=0.0), 0.0, None)
    head = head_mask(data, skin_threshold(data))
    high = float(np.percentile(data[head], 99)) if head.any() else float(data.max())
    return (data * (OUTPUT_SCALE / max(high, 1e-6))).astype(np.float32)
