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
  (both measured with the settings before issue 16's speed-up,
  ``benchmarks/README.md``). Parameters: see
  :data:`DIRECT_PARAMETERS`. The input is the cerebral cortex as
  ``antsCorticalThickness.sh`` prepares it (:mod:`isyb.derive.cortex`: deep
  grey matter folded into WM, brainstem and cerebellum left out), and the
  subject's mean CT is the mean over the cortical GM voxels with a thickness
  > 0. FreeSurfer's vertex mean is on the surface. Each GM voxel holds its
  column's thickness T and a column of area a holds a*T voxels, so the voxel
  mean is the area-weighted mean times (1 + CV^2), and the area-weighted mean
  is the harmonic mean of the voxel values (12-18 % lower on three real
  heads; ``benchmarks/README.md``). Without
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
from isyb.head.ants import start_itk

CSF, GM, WM = 1, 2, 3

DIRECT_PARAMETERS = {"its": 5, "n": 5, "r": 0.3, "m": 1.5, "t": 10.0,
                     "maximum-number-of-invert-displacement-field-iterations": 5}
"""``KellyKapowski`` settings: ``its`` = 5 iterations of ``n`` = 5 integration
points (compositions of the diffeomorphism) each, gradient step ``r`` = 0.3,
Gaussian smoothing ``m`` = 1.5 voxels of the velocity field, a thickness prior
``t`` of 10 mm (ANTs' default, the upper bound of a plausible cortex), and at
most 5 fixed-point iterations of each of the two displacement-field inversions
per integration point (ANTs' default is 20).

``antsCorticalThickness.sh`` (ANTs 2.x: ``DIRECT_CONVERGENCE="[45,0.0,10]"``,
``DIRECT_GRAD_STEP_SIZE=0.025``, ``DIRECT_SMOOTHING_PARAMETER=1.5``,
``DIRECT_THICKNESS_PRIOR=10``, ``DIRECT_NUMBER_OF_DIFF_COMPOSITIONS=10``, no
inversion setting) runs 45 x 10 integration points of step 0.025. On hard
labels that has not converged (a 3 mm shell 2.18 mm; a real 64x64x40 block
of colin27's cortex 1.54 mm), and isyb before issue 16's speed-up ran 10 x 10
points of step 0.1 with 10 inversion iterations. DiReCT's cost is the box's
voxels x iterations x integration points x (about 0.53 us + 0.08 us per
inversion iteration, one thread), so these settings cost about a sixth of
those (colin27's cerebral cortex: ``benchmarks/README.md``). Chosen on
known truths only: on eight synthetic cortices at 1 mm (folded combs of
2, 3 and 4 mm with open and merged sulci, shells of 2, 3 and 4.5 mm, the
phantom's 3 mm cortex after N4 + Atropos) their mean |error| is 4.7 %
against 4.8 % for the previous settings (largest: +10.9 % on the 2 mm
shell, against +9.3 % on the 3 mm shell before). On real heads DiReCT on
hard labels does not converge within either budget (two colin27 blocks: 20
iterations of the previous settings read 5-8 % thicker than 10, these
settings 15-17 % thinner; on the folded 3 mm cortex with closed sulci, which
a 1 mm T1w is full of, the previous settings drift from 2.96 to 3.16 mm with
20 iterations, these read 2.97), so the real-head mean depends on the budget:
2.92, 3.33 and 3.30 mm on colin27, the MNE sample and pycortex S1 before,
2.48, 2.52 and 2.61 mm with these settings. That is not a validated gain in
accuracy; isyb reports the mean as measured (``benchmarks/README.md``)."""


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


def cortical_thickness(labels: np.ndarray, zooms, parameters: dict | None = None
                       ) -> np.ndarray:
    """DiReCT thickness map (mm) of a CSF/GM/WM label image (1/2/3); 0 outside GM.

    ``parameters``: ``KellyKapowski`` settings (:data:`DIRECT_PARAMETERS` unless
    given; the benchmark times the previous ones with it).

    Only the GM and WM labels matter to DiReCT, so the image is cropped to
    the box of its GM and WM voxels plus a 3-voxel margin before ANTs sees
    it (free: at most 0.001 mm against DiReCT on the whole grid,
    ``tests/derive/test_direct_shell.py``). The cost is that box's voxel count
    × iterations × integration points (a composition, three warps, a Gaussian
    gradient, three serial loops and two field inversions each): with
    :data:`DIRECT_PARAMETERS` colin27's cerebral cortex (3.9 M voxels) takes
    82 CPU s, 491 with the previous settings, on ITK's threads
    (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``; ``benchmarks/README.md``).
    """
    ants = start_itk()

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
                                        gm_label=GM, wm_label=WM, x=0,
                                        **(DIRECT_PARAMETERS if parameters is None
                                           else parameters))
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
