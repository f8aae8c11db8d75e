"""Non-steady-state volumes are dropped as MRIQC drops them, even from a short run (issue 14)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.qc.bold import MIN_STEADY_VOLUMES, BoldInputError, bold_metrics
from isyb.qc.functional import detect_dummy_scans
from isyb.synthetic.phantom import phantom_bold


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
