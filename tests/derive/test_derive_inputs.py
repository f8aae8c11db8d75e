"""``isyb derive``'s dataset mode on tiny datasets: what it finds, what it refuses, its exit codes.

Exit 2 means refused before any work (bad dataset or options) and nothing
written; exit 1 means finished with some runs failed. The end-to-end runs on
the demo dataset are in test_derive_dataset.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_one_line_error
from isyb.cli import main
from isyb.derive.dataset import find_subjects, load_ras, scan_subject
from isyb.errors import IsybError
from isyb.synthetic.runs import Geometry, rest_bold

DERIV = Path("derivatives") / "isyb"


def _dataset(root: Path) -> Path:
    """Two subjects: sub-01 with a T1w, a BOLD run and a DWI run (no gradient files),
    sub-02 with an anatomical image only. Image contents are tiny."""
    bids = root / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "sub-01" / "func").mkdir()
    (bids / "sub-01" / "dwi").mkdir()
    (bids / "sub-02" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    for path, shape in (("sub-01/anat/sub-01_T1w.nii.gz", (6, 6, 6)),
                        ("sub-01/anat/sub-01_run-2_T1w.nii.gz", (6, 6, 6)),
                        ("sub-01/func/sub-01_task-rest_bold.nii.gz", (4, 4, 4, 12)),
                        ("sub-01/dwi/sub-01_dwi.nii.gz", (4, 4, 4, 3)),
                        ("sub-02/anat/sub-02_T1w.nii.gz", (6, 6, 6))):
        data = np.random.default_rng(0).random(shape).astype(np.float32) + 1.0
        nib.Nifti1Image(data, affine).to_filename(str(bids / path))
    (bids / "sub-01" / "func" / "sub-01_task-rest_bold.json").write_text(
        json.dumps({"RepetitionTime": 2.0}))
    return bids


@pytest.fixture()
def bids(tmp_path: Path) -> Path:
    return _dataset(tmp_path)


def test_subjects_have_their_first_t1w_and_their_runs(bids: Path) -> None:
    first, second = find_subjects(bids)
    assert first.label == "sub-01" and first.t1w == bids / "sub-01/anat/sub-01_T1w.nii.gz"
    assert [str(run.relative) for run in first.runs] == [
        "sub-01/dwi/sub-01_dwi.nii.gz", "sub-01/func/sub-01_task-rest_bold.nii.gz"]
    assert [run.suffix for run in first.runs] == ["dwi", "bold"]
    assert second.label == "sub-02" and second.runs == ()
    assert scan_subject(bids, "sub-01") == first


def test_a_run_that_fails_is_recorded_and_the_exit_code_is_1(bids: Path, tmp_path: Path,
                                                            capsys) -> None:
    out = tmp_path / "out"
    code = main(["derive", str(bids), str(out), "participant", "--metrics", "fa,md", "--quiet"])
    assert code == 1
    record = json.loads((out / DERIV / "sub-01/dwi/sub-01_desc-derive_dwi.json").read_text())
    assert record["status"] == "failed" and "bval" in record["error"]
    assert record["participant_id"] == "sub-01" and record["modality"] == "dwi"
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    description = json.loads((out / DERIV / "dataset_description.json").read_text())
    assert description["Name"] == "isyb derived metrics"
    assert description["GeneratedBy"][0]["Description"] == "derived metrics (isyb derive)"
    assert description["SourceDatasets"] == [{"URL": "file:bids"}]


@pytest.mark.parametrize("arguments, fragment", [
    (["--participant-label", "09"], "09"),
    (["--metrics", "alff,thickness"], "thickness"),
    (["--metrics", "cbf", "--cbf-formula", "ge"], "--ge-scaling"),
    (["--dask-scheduler", "tcp://127.0.0.1:8786"], "--executor dask"),
    (["--participant-label", "02"], "no BOLD, DWI or ASL runs"),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(bids: Path, tmp_path: Path, capsys,
                                                         arguments: list[str],
                                                         fragment: str) -> None:
    out = tmp_path / "out"
    code = main(["derive", str(bids), str(out), "participant", *arguments])
    assert_one_line_error(code, capsys.readouterr().err, fragment)
    assert not out.exists()


def test_a_folder_that_is_not_bids_is_refused(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    code = main(["derive", str(tmp_path / "empty"), str(tmp_path / "out"), "participant"])
    assert_one_line_error(code, capsys.readouterr().err, "dataset_description.json")
    assert not (tmp_path / "out").exists()


def test_template_without_symmetry_is_refused_for_vmhc(bids: Path, tmp_path: Path,
                                                      capsys) -> None:
    from isyb.derive.normalize import normalization_template

    template = normalization_template()
    shifted = np.roll(template.head * template.brain_mask, 6, axis=0)
    path = tmp_path / "lopsided.nii.gz"
    nib.Nifti1Image(shifted.astype(np.float32), template.affine).to_filename(str(path))
    code = main(["derive", str(bids), str(tmp_path / "out"), "participant",
                 "--template", str(path), "--metrics", "vmhc", "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "symmetric")
    assert not (tmp_path / "out").exists()


def test_a_truncated_run_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    run = rest_bold(Geometry(), n_volumes=12)
    whole = tmp_path / "whole.nii.gz"
    nib.Nifti1Image(run.series, run.affine).to_filename(str(whole))
    cut = tmp_path / "cut_bold.nii.gz"
    cut.write_bytes(whole.read_bytes()[:4000])
    # refused by the shared image loader (isyb.io.load_image) before derive looks at it
    with pytest.raises(IsybError, match="cannot be read as an image"):
        load_ras(cut)
