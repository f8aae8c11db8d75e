"""`isyb qc` dataset mode without running QC: exclusion rules, run discovery, sidecar
inheritance, and the one-line errors of a bad call."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from isyb.cli import main
from isyb.qc.bold import bold_sidecar
from isyb.qc.dataset import find_runs
from isyb.qc.rules import ExclusionRules, exclusion_reasons, exclusions


def _hand_table() -> pd.DataFrame:
    """12 BOLD runs: run 12 has an SNR outlier, runs 3 and 12 move, run 5 sits at 0.2 mm."""
    names = [f"sub-{i:02d}_task-rest_bold" for i in range(1, 13)]
    snr = [10.0] * 11 + [40.0]
    fd = [0.1] * 12
    fd[2], fd[4], fd[11] = 0.25, 0.2, 0.3
    tsnr = [50.0] * 12
    tsnr[3] = 100.0
    constant = [1.0] * 12
    return pd.DataFrame({"bids_name": names, "participant_id": [n[:6] for n in names],
                         "snr": snr, "fd_mean": fd, "tsnr": tsnr, "fber": constant,
                         "efc": constant, "fwhm_avg": constant, "dvars_std": constant,
                         "gcor": constant})


def test_rules_reproduce_a_hand_computed_example() -> None:
    # By hand: SNR mean = (11 x 10 + 40) / 12 = 12.5; SD = sqrt((11 x 2.5^2 + 27.5^2) / 11)
    # = sqrt(75); z(40) = 27.5 / sqrt(75) = 3.175 > 3, z(10) = -0.289.
    # FD: 0.25 and 0.3 are > 0.2; 0.2 is not (strict). FD's own z is at most 2.29 < 3.
    # tSNR has an outlier but is not in the descriptor's BOLD list; constant metrics have SD 0.
    reasons = exclusion_reasons(_hand_table(), "bold", ExclusionRules())
    assert list(zip(reasons["bids_name"], reasons["rule"], reasons["metric"], strict=True)) == [
        ("sub-12_task-rest_bold", "sd", "snr"),
        ("sub-03_task-rest_bold", "fd", "fd_mean"),
        ("sub-12_task-rest_bold", "fd", "fd_mean"),
    ]
    snr = reasons.iloc[0]
    assert snr["group_mean"] == pytest.approx(12.5, abs=1e-12)
    assert snr["group_sd"] == pytest.approx(math.sqrt(75.0), abs=1e-12)
    assert snr["z"] == pytest.approx(27.5 / math.sqrt(75.0), abs=1e-12)
    table = exclusions(reasons)
    assert table["bids_name"].tolist() == ["sub-03_task-rest_bold", "sub-12_task-rest_bold"]
    assert table["rules"].tolist() == ["fd", "sd;fd"]
    assert table["metrics"].tolist() == ["fd_mean", "snr;fd_mean"]
    assert table["values"].tolist() == ["0.25", "40;0.3"]


def test_rule_switches() -> None:
    table = _hand_table()
    only_fd = exclusion_reasons(table, "bold", ExclusionRules(sd_threshold=None))
    assert set(only_fd["rule"]) == {"fd"}
    only_sd = exclusion_reasons(table, "bold", ExclusionRules(fd_threshold=None))
    assert only_sd["bids_name"].tolist() == ["sub-12_task-rest_bold"]
    with_tsnr = exclusion_reasons(table, "bold", ExclusionRules(fd_threshold=None,
                                                                sd_metrics=("tsnr",)))
    assert with_tsnr["bids_name"].tolist() == ["sub-04_task-rest_bold"]
    assert exclusion_reasons(table, "bold", ExclusionRules(sd_threshold=3.2,
                                                           fd_threshold=0.3)).empty
    # Anatomical tables never get the FD rule, and fewer than 3 values never the SD rule.
    assert exclusion_reasons(table, "T1w", ExclusionRules(sd_metrics=("snr",))).shape[0] == 1
    assert exclusion_reasons(table.iloc[:2], "bold", ExclusionRules(fd_threshold=None)).empty


def test_sidecar_inheritance(tmp_path: Path) -> None:
    root = tmp_path / "bids"
    func = root / "sub-01" / "ses-1" / "func"
    func.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (root / "task-rest_bold.json").write_text('{"RepetitionTime": 3.0, "TaskName": "rest"}')
    (root / "task-other_bold.json").write_text('{"RepetitionTime": 9.0}')
    (func / "sub-01_ses-1_task-rest_bold.json").write_text('{"RepetitionTime": 2.5}')
    nib.Nifti1Image(np.zeros((2, 2, 2, 2), np.float32), np.eye(4)).to_filename(
        str(func / "sub-01_ses-1_task-rest_bold.nii.gz"))
    [run] = find_runs(root)
    assert run.relative == Path("sub-01/ses-1/func/sub-01_ses-1_task-rest_bold.nii.gz")
    assert bold_sidecar(run.path) == {"RepetitionTime": 2.5, "TaskName": "rest"}


def test_group_level_without_participant_level_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from conftest import assert_one_line_error

    (tmp_path / "bids").mkdir()
    code = main(["qc", str(tmp_path / "bids"), str(tmp_path / "out"), "group"])
    assert_one_line_error(code, capsys.readouterr().err, "participant level first")


def test_not_a_bids_dataset_is_a_clear_error(tmp_path: Path, capsys) -> None:
    from conftest import assert_one_line_error

    code = main(["qc", str(tmp_path), str(tmp_path / "out"), "participant"])
    assert_one_line_error(code, capsys.readouterr().err, "not a BIDS dataset")


def test_executor_options_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    from conftest import assert_one_line_error

    code = main(["qc", str(tmp_path), str(tmp_path / "out"), "participant",
                 "--dask-scheduler", "tcp://127.0.0.1:8786"])
    assert_one_line_error(code, capsys.readouterr().err, "--executor dask")
    assert not (tmp_path / "out").exists()
