"""Anatomical QC end to end on the real scans of the shared test data: brain extraction,
segmentation and every metric, on original and defaced heads (slow: deepbet and registrations).

Each head's QC is computed once (``tests/real_qc.py``, on the deepbet brain of the head's
shared alignment); the heads of :data:`real_qc.SCAN_HEADS` and colin27's test are in
test_qc_anat_real_scans.py, so that the two files run on two workers.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from isyb.head.register import dice
from isyb.io import Volume, load_volume
from isyb.qc import anat
from isyb.qc.masks import background_masks
from mriqc_reference import assert_mriqc_definitions
from real_alignments import real_alignment
from real_qc import QC_HEADS, assert_finite_metrics, real_qc

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.fixture(scope="module")
def qc_of(data_root: Path, shared_dir: Path, default_template):
    """``qc_of(name)``: metrics and masks of the real head ``name`` (skips when absent)."""
    def get(name: str) -> tuple[dict[str, float], anat.AnatMasks]:
        path = data_root / "heads" / name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        return real_qc(shared_dir, path, default_template)
    return get


def test_qc_anat_of_a_path_and_of_an_in_memory_image_agree(data_root: Path, qc_of) -> None:
    """``qc_anat`` of a path and of an in-memory image (each with its own deepbet) agree,
    and agree with the shared QC of the module (on the brain of the shared alignment)."""
    import nibabel as nib

    name = "itk-kmeans_T1w_LSA_2x2x3mm.nii.gz"  # stored LSA, not RAS
    path = data_root / "heads" / name
    metrics, masks = qc_of(name)
    of_path = anat.qc_anat(path)
    in_memory = anat.qc_anat(nib.load(path))
    # Atropos sums in an order that depends on ITK's threads (the release runs one thread
    # per task and is byte-identical); here two runs agree to float32 rounding.
    for qc in (of_path, in_memory):
        assert qc.metrics == pytest.approx(metrics, rel=1e-5)
        assert np.array_equal(qc.masks.brain, masks.brain)
    assert set(in_memory.to_json()) == {*metrics, "noise_source",
                                        *(("note",) if masks.note else ())}
    assert in_memory.to_json()["noise_source"] == masks.noise_source


@pytest.mark.parametrize("name", QC_HEADS)
def test_every_real_scan_gets_finite_metrics(name: str, qc_of) -> None:
    """Finite, plausible metrics, and every MRIQC-named one equal to MRIQC 24.0.2's
    formula on the same masks to 1e-4 (issue 14). The heads of real_qc.QC_HEADS; the others
    are in test_qc_anat_real_scans.py."""
    metrics, masks = qc_of(name)
    assert_finite_metrics(name, metrics, masks)
    assert_mriqc_definitions(name, metrics, masks)


@pytest.fixture(scope="module")
def defaced_pycortex(data_root: Path, default_template, shared_dir: Path,
                     tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pycortex-S1_T1w and its three isyb-defaced versions (one registration and one set
    of subject masks for all: the run's shared alignment, whose brain mask is the one QC
    uses)."""
    from isyb.deface.engine import DefaceOptions, subject_masks
    from isyb.deface.file import deface_file

    source = data_root / "heads" / "pycortex-S1_T1w.nii.gz"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    out = tmp_path_factory.mktemp("qc_defaced")
    alignment = real_alignment(shared_dir, source, default_template)
    subject = subject_masks(load_volume(source), alignment.brain, DefaceOptions().guard_mm)
    files = {"original": source}
    for method in ("blur", "remove", "noise"):
        target = out / f"pycortex-S1_{method}_T1w.nii.gz"
        deface_file(source, target, default_template, DefaceOptions(method=method),
                    qc_png=False, alignment=alignment, subject=subject)
        files[method] = target
    return files


def _same_tissues(masks: anat.AnatMasks, path: Path
                  ) -> tuple[dict[str, float], anat.AnatMasks, Volume]:
    """Metrics of a copy of the head whose brain is untouched (a defaced copy), with the
    original's brain and segmentation and the copy's own background masks."""
    volume = load_volume(path)
    copy = dataclasses.replace(masks, **background_masks(volume.data, volume.zooms, masks.brain))
    return anat.anat_metrics(volume.data, volume.zooms, masks=copy), copy, volume


def test_background_metrics_are_robust_to_defacing(defaced_pycortex: dict[str, Path],
                                                   qc_of) -> None:
    """Each defaced copy: deepbet finds the original's brain, and with that brain and its
    tissues (defacing never touches the brain) the background metrics do not move."""
    from isyb.head.brain import extract_brain

    reference, masks = qc_of(defaced_pycortex["original"].name)
    results = {"original": reference}
    for name in ("blur", "remove", "noise"):
        results[name], _, volume = _same_tissues(masks, defaced_pycortex[name])
        assert dice(extract_brain(volume.data, volume.zooms), masks.brain) >= 0.98, name
    for key in ("isyb_snr", "isyb_snrd_gm", "isyb_cnr"):
        values = np.array([metrics[key] for metrics in results.values()])
        assert np.all(np.isfinite(values)) and np.all(values > 0), key
        assert values.max() / values.min() < 1.10, (key, values)


def test_already_defaced_scan_gets_sane_values(qc_of) -> None:
    metrics, masks = qc_of("ds000240-sub01_T1w_defaced.nii.gz")
    assert masks.noise_source == "air"  # a real, unsuppressed background
    for key, value in metrics.items():
        assert math.isfinite(value), key
    assert 5.0 < metrics["isyb_snrd_gm"] < 200.0
    assert 1.0 < metrics["isyb_cnr"] < 10.0
    assert metrics["isyb_fber"] > 10.0
    assert 0.30 <= metrics["icvs_wm"] <= 0.45


def test_defacing_a_real_background_again_leaves_it_unchanged(
        data_root: Path, default_template, shared_dir: Path, tmp_path: Path, qc_of) -> None:
    """ds000240 has a real (unsuppressed) background: the air path itself is tested here.

    The brain mask and the tissues QC found in the source are reused for the
    defaced copies (defacing never touches the brain), which share the registration of
    the run's alignment (on that brain) and one set of subject masks, so this checks the
    air mask, not deepbet or Atropos (the pycortex test runs deepbet on every copy).
    """
    from isyb.deface.engine import DefaceOptions, subject_masks
    from isyb.deface.file import deface_file

    source = data_root / "heads" / "ds000240-sub01_T1w_defaced.nii.gz"
    if not source.is_file():
        pytest.skip(f"{source} not found")
    reference, masks = qc_of(source.name)
    alignment = real_alignment(shared_dir, source, default_template)
    subject = subject_masks(load_volume(source), alignment.brain, DefaceOptions().guard_mm)
    for method in ("blur", "remove", "noise"):
        target = tmp_path / f"ds000240_{method}.nii.gz"
        record = deface_file(source, target, default_template, DefaceOptions(method=method),
                             qc_png=False, alignment=alignment, subject=subject)
        assert record["changed_voxels"] > 10_000
        metrics, found, _ = _same_tissues(masks, target)
        assert found.noise_source == "air"
        for key in ("isyb_snr", "isyb_snrd_gm", "isyb_cnr"):
            assert metrics[key] == pytest.approx(reference[key], rel=0.02), (method, key)
