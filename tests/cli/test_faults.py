"""Faults and bad values: one line on stderr, the exit code, and nothing half-written."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from conftest import assert_one_line_error
from isyb.cli import main
from isyb.deface.engine import DefaceOptions
from isyb.errors import IsybError


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) if root.exists() \
        else []


@pytest.mark.parametrize("argv", [
    ["deface", "in.nii.gz", "out.nii.gz", "--guard-mm", "nan"],
    ["deface", "in.nii.gz", "out.nii.gz", "--guard-mm", "inf"],
    ["deface", "in.nii.gz", "out.nii.gz", "--guard-mm", "-1"],
    ["deface", "in.nii.gz", "out.nii.gz", "--face-margin", "nan"],
    ["bids", "out", "participant", "--fd-threshold", "-1"],
    ["bids", "out", "participant", "--fd-threshold", "nan"],
    ["qc", "bold", "bold.nii.gz", "--fd-threshold", "-1"],
    ["qc", "bold", "bold.nii.gz", "--tr", "0"],
    ["qc", "bids", "out", "group", "--sd-threshold", "inf"],
    ["derive", "bids", "out", "participant", "--ge-scaling", "nan", "1"],
    ["split", "bids", "--seed", "-3"],
    ["study", "bids", "out", "--templates", "a,b", "--face-margin=-inf"],
    ["deface", "in", "out", "--nprocs", "0"],
])
def test_numeric_options_must_be_finite_and_in_range(argv: list[str], tmp_path: Path,
                                                     capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(main(argv), capsys.readouterr().err, "must be")
    assert _tree(tmp_path) == []


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_the_library_refuses_a_guard_that_would_fail_open(value: float) -> None:
    with pytest.raises(IsybError, match="guard_mm must be a finite number"):
        DefaceOptions(guard_mm=value)


def test_a_full_disk_is_one_line_and_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    from isyb.synthetic.demo import build_demo_dataset

    bids = build_demo_dataset(tmp_path / "bids", n_subjects=1)
    out = tmp_path / "split.tsv"

    def full(*args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr("isyb.io.Path.write_text", full)
    code = main(["split", str(bids), "--sizes", "a:1", "--output", str(out)])
    assert_one_line_error(code, capsys.readouterr().err, "No space left on device", "rerun")
    assert not out.exists() and [p for p in tmp_path.iterdir() if ".part" in p.name] == []
    json.loads((bids / "dataset_description.json").read_text())  # the input is untouched
