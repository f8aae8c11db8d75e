"""Anatomical QC end to end on the real scans of the shared test data, continued: the
heads of ``real_qc.SCAN_HEADS`` (test_qc_anat_real.py has the others), Colin27's tissue
fractions, and the check that the two files together cover every head of the data folder
(slow: deepbet, N4 and Atropos on each head, once per run; see ``tests/real_qc.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from isyb.head.register import dice
from isyb.io import load_volume
from mriqc_reference import assert_mriqc_definitions
from real_qc import QC_HEADS, SCAN_HEADS, assert_finite_metrics, real_heads, real_qc

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_the_two_qc_files_cover_every_real_scan(data_root: Path) -> None:
    heads = {path.name for path in real_heads(data_root)}
    assert heads
    assert not set(QC_HEADS) & set(SCAN_HEADS)
    assert heads <= {*QC_HEADS, *SCAN_HEADS}, heads - {*QC_HEADS, *SCAN_HEADS}


@pytest.mark.parametrize("name", SCAN_HEADS)
def test_every_real_scan_gets_finite_metrics(name: str, data_root: Path, shared_dir: Path,
                                             default_template) -> None:
    """Finite, plausible metrics, and every MRIQC-named one equal to MRIQC 24.0.2's
    formula on the same masks to 1e-4 (issue 14). The heads of real_qc.SCAN_HEADS; the others
    are in test_qc_anat_real.py."""
    path = data_root / "heads" / name
    if not path.is_file():
        pytest.skip(f"{path} not found")
    metrics, masks = real_qc(shared_dir, path, default_template)
    assert_finite_metrics(name, metrics, masks)
    assert_mriqc_definitions(name, metrics, masks)


def test_white_matter_is_30_to_45_percent_of_a_real_brain(data_root: Path, shared_dir: Path,
                                                         default_template) -> None:
    """Colin27 (issue 14): WM 30-45 % of the brain, from the QC every real scan gets
    (deepbet, N4, Atropos), whose brain agrees with Colin27's reference brain mask."""
    head = data_root / "heads" / "colin27_T1w.nii.gz"
    brain_file = data_root / "heads" / "colin27_brain.nii.gz"
    if not head.exists() or not brain_file.exists():
        pytest.skip(f"real data not found under {data_root}")
    metrics, masks = real_qc(shared_dir, head, default_template)
    assert dice(masks.brain, load_volume(brain_file).data > 0) >= 0.90  # 0.936 found
    assert 0.30 <= metrics["icvs_wm"] <= 0.45  # 0.366 found (0.384 in the reference mask)
