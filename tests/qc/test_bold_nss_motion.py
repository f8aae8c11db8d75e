"""Non-steady-state volumes and motion reliability of BOLD QC (issue 14 items 4-5)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from isyb.qc.bold import (
    MIN_STEADY_VOLUMES,
    BoldInputError,
    bold_metrics,
    motion_reliability,
    run_bold_qc,
)
from isyb.qc.functional import detect_dummy_scans
from isyb.qc.rules import ExclusionRules, exclusion_reasons, unreliable_motion
from isyb.synthetic.epi import phantom_bold


@pytest.fixture(scope="module")
def ten_volumes() -> np.ndarray:
    series, _ = phantom_bold((24, 24, 16), (6.0, 6.0, 6.0), 10, max_trans=0.5,
                             max_rot_deg=0.5, order=1, seed=9)
    series = series.copy()
    series[..., :2] *= 1.6  # two non-steady-state volumes
    return series


def test_a_ten_volume_run_loses_its_non_steady_state_volumes(ten_volumes) -> None:
    metrics, table = bold_metrics(ten_volumes, (6.0, 6.0, 6.0), 2.0)
    assert metrics["dummy_trs"] == 2
    assert metrics["size_t"] == 8  # the metrics are computed on the 8 steady volumes
    assert table["non_steady_state"].tolist() == [True, True] + [False] * 8
    assert np.isnan(table["framewise_displacement"][:3]).all()


def test_at_least_the_minimum_of_steady_volumes_is_kept(ten_volumes) -> None:
    metrics, _ = bold_metrics(ten_volumes, (6.0, 6.0, 6.0), 2.0, dummy_scans=5)
    assert metrics["size_t"] == MIN_STEADY_VOLUMES and metrics["dummy_trs"] == 5
    with pytest.raises(BoldInputError, match="fewer than 5 volumes"):
        bold_metrics(ten_volumes, (6.0, 6.0, 6.0), 2.0, dummy_scans=6)


def test_the_real_ten_volume_run_has_a_non_steady_state_volume(data_root: Path) -> None:
    path = data_root / "bold" / "ge_epi_10vol.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    data = np.asanyarray(nib.load(path).dataobj)
    assert detect_dummy_scans(data) == 1  # nipype's detector, as MRIQC runs it


# ---------------------------------------------------------------------------
# Motion that cannot be measured is flagged, and the FD rule does not exclude on it


def test_a_field_of_view_smaller_than_the_fd_sphere_is_flagged() -> None:
    reliable, note = motion_reliability((7, 7, 14), (3.0, 3.0, 2.93))  # 21 x 21 x 41 mm
    assert not reliable and "21 x 21 x 41 mm" in note and "100 mm" in note
    assert motion_reliability((64, 64, 15), (3.75, 3.75, 5.0)) == (True, "")  # ge_epi_10vol
    assert motion_reliability((64, 64, 15), (3.75, 3.75, 5.0), fd_radius=130.0)[0] is False


def test_qc_of_a_small_crop_reports_unreliable_motion(ten_volumes) -> None:
    crop = np.ascontiguousarray(ten_volumes[6:12, 6:12, 4:12])  # 36 x 36 x 48 mm
    qc = run_bold_qc(crop, (6.0, 6.0, 6.0), 2.0, mask=np.ones(crop.shape[:3], dtype=bool))
    assert qc.metrics["motion_reliable"] == 0
    assert qc.to_json()["motion_note"].startswith("motion unreliable")
    whole = run_bold_qc(ten_volumes, (6.0, 6.0, 6.0), 2.0)
    assert whole.metrics["motion_reliable"] == 1 and "motion_note" not in whole.to_json()


def test_the_fd_rule_does_not_exclude_a_run_whose_motion_is_unmeasurable() -> None:
    table = pd.DataFrame({"bids_name": ["sub-01_bold", "sub-02_bold", "sub-03_bold"],
                          "participant_id": ["sub-01", "sub-02", "sub-03"],
                          "fd_mean": [0.1, 2.39, 0.5], "motion_reliable": [1, 0, 1]})
    reasons = exclusion_reasons(table, "bold", ExclusionRules(sd_threshold=None))
    assert reasons["bids_name"].tolist() == ["sub-03_bold"]
    assert unreliable_motion(table) == ["sub-02_bold"]
