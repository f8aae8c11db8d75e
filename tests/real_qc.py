"""Anatomical QC of the real heads for the tests: once per head per test process, on the
brain mask of the head's shared alignment (:mod:`real_alignments`).

:func:`isyb.qc.anat.qc_anat` of a path is :func:`isyb.io.load_volume`, then
:func:`isyb.qc.masks.anat_masks` (deepbet, N4 + Atropos), then
:func:`isyb.qc.anat.anat_metrics`. :func:`real_qc` does the same, except that the brain
is the deepbet mask that :func:`real_alignments.real_alignment` already extracted from the
same voxels (``extract_brain(volume.data, volume.zooms)``; every real head is float32
and >= 0, so QC's ``check_image`` leaves it unchanged). So deepbet runs once per head per
test run instead of once for the deface tests and once for the QC tests.
``tests/qc/test_qc_anat_real.py::test_qc_anat_of_a_path_and_of_an_in_memory_image_agree``
checks that the result is ``qc_anat``'s own.

The QC tests of the real heads are split over two files (each head's QC is computed in
one of them), so that pytest-xdist's ``--dist loadfile`` runs them on two workers:
:data:`QC_HEADS` and :data:`SCAN_HEADS` together must be every head of the data folder.
"""

from __future__ import annotations

import math
from pathlib import Path

from isyb.io import load_volume
from isyb.qc.anat import anat_metrics
from isyb.qc.masks import AnatMasks, anat_masks
from isyb.templates.registry import Template
from real_alignments import real_alignment

METRIC_KEYS = {"isyb_snr", "isyb_snrd_gm", "isyb_cnr", "isyb_fber", "fber", "efc", "fwhm_x",
               "fwhm_y", "fwhm_z", "fwhm_avg", "fwhm_avg_mm", "cjv", "wm2max", "icvs_wm"}

#: Heads whose QC ``tests/qc/test_qc_anat_real.py`` computes (its other tests need them).
QC_HEADS = ("itk-kmeans_T1w_LSA_2x2x3mm.nii.gz", "pycortex-S1_T1w.nii.gz",
            "ds000240-sub01_T1w_defaced.nii.gz")
#: Heads whose QC ``tests/qc/test_qc_anat_real_scans.py`` computes.
SCAN_HEADS = ("chris_T1w_cropped.nii.gz", "colin27_T1w.nii.gz", "mne-sample_T1w_3mm.mgz",
              "myconnectome_T1w_1p6mm.nii.gz", "myconnectome_T2w_slab.nii.gz")

_MEMORY: dict[str, tuple[dict[str, float], AnatMasks]] = {}


def real_heads(data_root: Path) -> list[Path]:
    """Every head scan (T1w or T2w, not a brain mask) in ``data_root/heads``."""
    files = sorted(p for p in (data_root / "heads").iterdir()
                   if p.name.endswith((".nii.gz", ".nii", ".mgz")) and "_brain" not in p.name)
    return [p for p in files if "T1w" in p.name or "T2w" in p.name]


def real_qc(shared_dir: Path, path: Path, template: Template
            ) -> tuple[dict[str, float], AnatMasks]:
    """Metrics and masks of ``qc_anat(path)`` (T2w when the name says so), with the brain
    of the head's shared alignment to ``template``; cached per process."""
    key = str(path)
    if key not in _MEMORY:
        contrast = "T2w" if "T2w" in path.name else "T1w"
        volume = load_volume(path)
        brain = real_alignment(shared_dir, path, template).brain
        masks = anat_masks(volume.data, volume.zooms, brain=brain, contrast=contrast)
        metrics = anat_metrics(volume.data, volume.zooms, contrast=contrast, masks=masks)
        _MEMORY[key] = (metrics, masks)
    return _MEMORY[key]


def assert_finite_metrics(name: str, metrics: dict[str, float], masks: AnatMasks) -> None:
    """What every real scan's QC must give: every metric, finite, positive where it is a
    size or a ratio of signals, plausible EFC and smoothness, both tissues found, and on a
    full-brain T1w white matter 30-45 % of the brain (0.365-0.405 on the seven heads)."""
    assert set(metrics) >= METRIC_KEYS, name
    for key, value in metrics.items():
        assert math.isfinite(value), (name, key, value)
        if key.startswith(("isyb_", "fwhm_", "icvs_", "snr_")):
            assert value > 0, (name, key, value)
    assert 0.0 < metrics["efc"] < 1.0, name
    assert 0.5 < metrics["fwhm_avg"] < 15.0, name
    assert masks.gm.sum() >= 100 and masks.wm.sum() >= 100, name
    if "T1w" in name:  # every T1w of heads/ holds a whole brain (the T2w is a slab)
        assert 0.30 <= metrics["icvs_wm"] <= 0.45, (name, metrics["icvs_wm"])  # issue 14
