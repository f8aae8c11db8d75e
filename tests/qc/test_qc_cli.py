"""`isyb qc anat|bold` on single images: JSON out, per-frame TSV, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from isyb.cli import main


def _bold(path: Path, volumes: int = 20, tr: float = 2.0, nan: bool = False) -> Path:
    rng = np.random.default_rng(0)
    grid = np.indices((24, 24, 12)).astype(np.float32)
    blob = 800.0 * np.exp(-(((grid - np.array([12, 12, 6])[:, None, None, None]) ** 2)
                            / np.array([40.0, 40.0, 10.0])[:, None, None, None]).sum(axis=0))
    series = blob[..., None] + rng.normal(0.0, 5.0, size=(24, 24, 12, volumes))
    if nan:
        series[1, 1, 1, 3] = np.nan
    image = nib.Nifti1Image(series.astype(np.float32), np.diag([3.0, 3.0, 4.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = tr
    image.to_filename(str(path))
    return path


def test_qc_bold_prints_json_and_writes_the_frame_table(tmp_path: Path, capsys) -> None:
    source = _bold(tmp_path / "sub-01_task-rest_bold.nii.gz")
    tsv = tmp_path / "frames.tsv"
    assert main(["qc", "bold", str(source), "--tsv", str(tsv)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["tr_s"] == 2.0
    assert all(key in record for key in ("fd_mean", "dvars_std", "gcor", "tsnr", "efc"))
    table = pd.read_csv(tsv, sep="\t")
    assert len(table) == 20
    assert {"trans_x", "rot_z", "framewise_displacement", "dvars_std"} <= set(table.columns)


@pytest.mark.parametrize("case", ["3d-to-bold", "4d-to-anat", "few-volumes", "nan", "no-tr"])
def test_qc_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys, case: str) -> None:
    path = tmp_path / "in.nii.gz"
    kind = "bold"
    if case == "3d-to-bold":
        nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_filename(str(path))
    elif case == "4d-to-anat":
        _bold(path)
        kind = "anat"
    elif case == "few-volumes":
        _bold(path, volumes=6)
    elif case == "nan":
        _bold(path, nan=True)
    else:
        _bold(path, tr=0.0)
    extra = ["--tsv", str(tmp_path / "t.tsv")] if kind == "bold" else []
    assert main(["qc", kind, str(path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("isyb: error:")
    assert not (tmp_path / "t.tsv").exists()


@pytest.mark.parametrize("in_dataset", [True, False])
def test_qc_bold_inherits_the_sidecar_of_its_bids_dataset(tmp_path: Path, capsys,
                                                         in_dataset: bool) -> None:
    """The TR only in a top-level ``task-rest_bold.json`` applies, as in ``isyb qc BIDS``;
    outside a dataset (no dataset_description.json) only the file's own sidecar counts."""
    root = tmp_path / "bids"
    func = root / "sub-01" / "func"
    func.mkdir(parents=True)
    if in_dataset:
        (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (root / "task-rest_bold.json").write_text('{"RepetitionTime": 2.5}')
    (root / "task-other_bold.json").write_text('{"RepetitionTime": 9.0}')
    source = _bold(func / "sub-01_task-rest_bold.nii.gz", tr=1.0)
    assert main(["qc", "bold", str(source), "--tsv", str(tmp_path / "frames.tsv")]) == 0
    assert json.loads(capsys.readouterr().out)["tr_s"] == (2.5 if in_dataset else 1.0)

