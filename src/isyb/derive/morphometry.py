"""Anatomy without FreeSurfer: volumetric cortical thickness (DiReCT) and grey-matter volume.

When no FreeSurfer outputs are given (``--freesurfer-dir``,
:mod:`isyb.derive.surface`, which stays the preferred source), the T1w's
three-tissue segmentation (:func:`isyb.head.tissue.segment_tissues`, the
code the QC uses: CSF 1, GM 2, WM 3) gives:

* **cortical thickness (CT, mm)** by DiReCT (Das et al. 2009, NeuroImage
  45:867), ANTs' ``KellyKapowski`` through ANTsPy's ``kelly_kapowski``: a
  diffeomorphic registration of the GM/WM boundary outward to the GM/CSF
  boundary, whose path length is the thickness, written into every GM
  voxel. The GM and WM "probabilities" are the hard labels (0/1), not
  Atropos' posteriors. ``antsCorticalThickness.sh`` feeds its posteriors,
  but those come from six classes with template priors; isyb's three-class
  Atropos (no priors, MRF 0.01, :func:`isyb.head.tissue.atropos_tissues`)
  gives soft ones (GM posterior at most 0.89 on colin27), and DiReCT's
  thickness falls with them: the phantom's 3 mm cortex measures 2.78 mm
  with its own (near 0/1) posteriors and 2.46 mm, outside 10 %, with the GM
  posterior capped at 0.89; colin27's mean goes from 2.92 to 2.40 mm
  (``benchmarks/README.md``). Parameters: see
  :data:`DIRECT_PARAMETERS`. The input is the cerebral cortex as
  ``antsCorticalThickness.sh`` prepares it (:mod:`isyb.derive.cortex`: deep
  grey matter folded into WM, brainstem and cerebellum left out), and the
  subject's mean CT is the mean over the cortical GM voxels with a thickness
  > 0. FreeSurfer's vertex mean is on the surface; the volumetric mean
  weights thick regions by their volume (``benchmarks/README.md``). Without
  the cortical atlas (:data:`isyb.derive.cortex.INSTALL`) or a normalisation,
  DiReCT runs on the whole three-tissue "GM" label, which also holds the
  deep grey nuclei, hippocampus and the cerebellar cortex, measured as thick
  slabs.
* **grey-matter volume (GMV, ml)**: GM voxels times the voxel volume, in
  total and per region of a label image on the T1w grid.

Not provided, on purpose: cortical surface area and LGI. Both need a
closed, topologically correct white and pial surface with the banks of
each sulcus kept apart; a marching-cubes mesh of a 1 mm voxel segmentation
(scikit-image) glues opposite banks where CSF is thinner than a voxel and
its area depends on the voxel grid. isyb has no test that would show such
an area or LGI (Schaer et al. 2008) within a stated error of the truth, so
it leaves them out rather than ship a number it cannot vouch for.

Regional GMV in an atlas: FreeSurfer's ``aparc+aseg`` that
:mod:`isyb.derive.cortex` carries to the subject, per Desikan-Killiany
cortical region and aseg subcortical GM structure
(:mod:`isyb.derive.regions`, which says why not Harvard-Oxford: nilearn's
wheel holds no volumetric atlas and fetches Harvard-Oxford from NITRC);
:func:`gm_volumes` also sums the GM of any label image on the T1w grid.
"""

from __future__ import annotations

import numpy as np

from isyb.errors import IsybError

CSF, GM, WM = 1, 2, 3

DIRECT_PARAMETERS = {"its": 10, "r": 0.1, "m": 1.5, "t": 10.0,
                     "maximum-number-of-invert-displacement-field-iterations": 10}
"""``KellyKapowski`` settings: at most ``its`` iterations, gradient step ``r``,
smoothing ``m`` (voxels) of the velocity field, a thickness prior ``t`` of 10 mm
(the upper bound of a plausible cortex; ANTs' default), and at most 10
fixed-point iterations of each of the two displacement-field inversions per
integration point (ANTs' default is 20).

``antsCorticalThickness.sh`` (ANTs 2.x, ``DIRECT_CONVERGENCE="[45,0.0,10]"``,
``DIRECT_GRAD_STEP_SIZE=0.025``, ``DIRECT_SMOOTHING_PARAMETER=1.5``,
``DIRECT_THICKNESS_PRIOR=10``, 10 integration points, no inversion setting)
runs 45 iterations of step 0.025. On hard labels that has not converged: a
3 mm shell measured 2.18 mm, a real 64x64x40 block of colin27's cortex
1.54 mm where 10 iterations of step 0.1 give 2.42, in twice the time. A step
of 0.1 reaches 3.07 mm on the 3 mm shell in 10 iterations (1.77 for a 2 mm
shell, 4.34 for 4.5 mm). The inversions are half of DiReCT's time at 20
iterations; 10 change the mean CT by 0.2 % on the real block (2.426 vs
2.421 mm) and by 0.002 mm on the phantom's 3 mm cortex, for 30 % less
time (``benchmarks/README.md``)."""


class MorphometryError(IsybError, ValueError):
    """A segmentation that thickness or volume cannot be measured on."""


def _check_labels(labels: np.ndarray, zooms) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise MorphometryError(f"a tissue label image is 3-D, got shape {labels.shape}")
    zooms = np.asarray(zooms, dtype=np.float64)
    if zooms.shape != (3,) or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise MorphometryError(f"voxel sizes must be three positive numbers, got {zooms}")
    if not np.any(labels == GM):
        raise MorphometryError("the segmentation has no grey matter (label 2)")
    return labels, zooms


def cortical_thickness(labels: np.ndarray, zooms) -> np.ndarray:
    """DiReCT thickness map (mm) of a CSF/GM/WM label image (1/2/3); 0 outside GM.

    Only the GM and WM labels matter to DiReCT, so the image is cropped to
    the box of its GM and WM voxels plus a 3-voxel margin before ANTs sees
    it. The cost is that box's voxel count × 10 iterations × 10 integration
    points (warps, gradients and two field inversions each): a whole 1 mm
    brain (4.4 M voxels) takes 630-660 CPU s, the cerebrum of three real heads
    (3.2-3.9 M) 390-510 CPU s, on ITK's threads
    (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``).
    """
    import ants

    labels, zooms = _check_labels(labels, zooms)
    if not np.any(labels == WM):
        raise MorphometryError("the segmentation has no white matter (label 3): DiReCT "
                               "measures from the GM/WM boundary")
    inside = np.argwhere((labels == GM) | (labels == WM))
    low = np.maximum(inside.min(axis=0) - 3, 0)
    high = np.minimum(inside.max(axis=0) + 4, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    sub = labels[box].astype(np.float32)
    spacing = tuple(float(z) for z in zooms)

    def image(array: np.ndarray):
        return ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32), spacing=spacing)

    try:
        thickness = ants.kelly_kapowski(s=image(sub), g=image(sub == GM), w=image(sub == WM),
                                        gm_label=GM, wm_label=WM, x=0, **DIRECT_PARAMETERS)
    except RuntimeError as exc:
        raise MorphometryError(f"DiReCT (KellyKapowski) failed: {exc}") from None
    out = np.zeros(labels.shape, dtype=np.float32)
    out[box] = np.where(labels[box] == GM, thickness.numpy(), 0.0)
    return out


def mean_thickness(thickness: np.ndarray, labels: np.ndarray) -> float:
    """Mean CT (mm) over the GM voxels with a thickness > 0."""
    values = np.asarray(thickness)[(np.asarray(labels) == GM) & (np.asarray(thickness) > 0)]
    if values.size == 0:
        raise MorphometryError("no grey-matter voxel has a thickness")
    return float(values.mean())


def gm_volumes(labels: np.ndarray, zooms, regions: np.ndarray | None = None
               ) -> dict[str, float]:
    """GMV (ml): ``{"total": ...}`` and, with a ``regions`` label image on the same grid, one
    entry per non-zero region value (``"<value>"``)."""
    labels, zooms = _check_labels(labels, zooms)
    voxel_ml = float(np.prod(zooms)) / 1000.0
    gm = labels == GM
    out = {"total": float(gm.sum()) * voxel_ml}
    if regions is not None:
        regions = np.asarray(regions)
        if regions.shape != labels.shape:
            raise MorphometryError(f"the region image has shape {regions.shape}, the "
                                   f"segmentation {labels.shape}")
        values, counts = np.unique(regions[gm], return_counts=True)
        out.update({str(int(v)): float(c) * voxel_ml
                    for v, c in zip(values, counts, strict=True) if v != 0})
    return out
