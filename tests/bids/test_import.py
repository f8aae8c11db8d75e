"""`isyb import`: a flat folder of dcm2niix outputs into BIDS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error
from isyb.bids.importer import import_flat, read_map
from isyb.cli import main
from isyb.errors import IsybError

MAP = ("series\tdatatype\tsuffix\tentities\n"
       "t1_mprage*\tanat\tT1w\t\n"
       "*rest*\tfunc\tbold\ttask-rest\n"
       "ep2d_diff*\tdwi\tdwi\t\n"
       "asl_3d*\tperf\tasl\t\n")


def _series(folder: Path, stem: str, description: str, number: int, *,
            volumes: int = 1, extra: dict | None = None) -> Path:
    shape = (6, 6, 4) if volumes == 1 else (6, 6, 4, volumes)
    image = nib.Nifti1Image(np.ones(shape, np.int16), np.eye(4))
    image.to_filename(str(folder / f"{stem}.nii.gz"))
    sidecar = {"SeriesDescription": description, "SeriesNumber": number, **(extra or {})}
    (folder / f"{stem}.json").write_text(json.dumps(sidecar))
    return folder / f"{stem}.nii.gz"


@pytest.fixture()
def flat(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "flat"
    source.mkdir()
    _series(source, "P001_t1_mprage_2", "t1_mprage", 2)
    _series(source, "P001_rest_7", "resting_state", 7, volumes=3, extra={"RepetitionTime": 2})
    _series(source, "P001_rest_9", "resting_state", 9, volumes=3, extra={"RepetitionTime": 2})
    _series(source, "P001_dwi_4", "ep2d_diff_mddw", 4, volumes=3)
    (source / "P001_dwi_4.bval").write_text("0 1000 1000\n")
    (source / "P001_dwi_4.bvec").write_text("0 1 0\n0 0 1\n0 0 0\n")
    _series(source, "P002_t1_mprage_3", "T1_MPRAGE", 3)
    _series(source, "P002_asl_5", "asl_3d_tra", 5, volumes=2)
    (source / "P002_asl_5_aslcontext.tsv").write_text("volume_type\nm0scan\nlabel\n")
    _series(source, "P002_localizer_1", "localizer", 1)
    (source / "notes.txt").write_text("not an image")
    mapping = tmp_path / "map.tsv"
    mapping.write_text(MAP)
    return source, mapping


def test_import_names_files_by_the_map_and_reports_the_rest(flat, tmp_path: Path) -> None:
    source, mapping = flat
    bids = tmp_path / "bids"
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    summary = import_flat(source, bids, mapping)
    files = sorted(p.relative_to(bids).as_posix() for p in bids.rglob("*") if p.is_file())
    assert files == [
        "dataset_description.json", "participants.tsv",
        "sub-P001/anat/sub-P001_T1w.json", "sub-P001/anat/sub-P001_T1w.nii.gz",
        "sub-P001/dwi/sub-P001_dwi.bval", "sub-P001/dwi/sub-P001_dwi.bvec",
        "sub-P001/dwi/sub-P001_dwi.json", "sub-P001/dwi/sub-P001_dwi.nii.gz",
        "sub-P001/func/sub-P001_task-rest_run-1_bold.json",
        "sub-P001/func/sub-P001_task-rest_run-1_bold.nii.gz",
        "sub-P001/func/sub-P001_task-rest_run-2_bold.json",
        "sub-P001/func/sub-P001_task-rest_run-2_bold.nii.gz",
        "sub-P002/anat/sub-P002_T1w.json", "sub-P002/anat/sub-P002_T1w.nii.gz",
        "sub-P002/perf/sub-P002_asl.json", "sub-P002/perf/sub-P002_asl.nii.gz",
        "sub-P002/perf/sub-P002_aslcontext.tsv",
    ]
    assert summary["left_out"] == ["P002_localizer_1.nii.gz (series 'localizer')"]
    run2 = json.loads((bids / "sub-P001/func/sub-P001_task-rest_run-2_bold.json").read_text())
    assert run2["SeriesNumber"] == 9 and run2["TaskName"] == "rest"  # run order = series
    assert pd.read_csv(bids / "participants.tsv", sep="\t")["participant_id"].tolist() == [
        "sub-P001", "sub-P002"]
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # copied, not moved
    again = import_flat(source, bids, mapping)  # a rerun finds everything in place
    assert again["images"] == summary["images"]


def test_import_refuses_to_overwrite_a_different_file(flat, tmp_path: Path) -> None:
    source, mapping = flat
    bids = tmp_path / "bids"
    import_flat(source, bids, mapping)
    nib.Nifti1Image(np.zeros((6, 6, 4), np.int16), np.eye(4)).to_filename(
        str(source / "P001_t1_mprage_2.nii.gz"))
    with pytest.raises(IsybError, match="exists and differs"):
        import_flat(source, bids, mapping)


def test_bad_maps_and_folders_are_clear_errors(flat, tmp_path: Path, capsys) -> None:
    source, mapping = flat
    bad = tmp_path / "bad.tsv"
    bad.write_text("series\tsuffix\nt1*\tT1w\n")
    with pytest.raises(IsybError, match="lacks column"):
        read_map(bad)
    bad.write_text("series\tdatatype\tsuffix\tentities\nt1*\tanat\tT1w\ttask_rest\n")
    with pytest.raises(IsybError, match="bad entity"):
        read_map(bad)
    code = main(["import", str(tmp_path / "missing"), str(tmp_path / "b"), "--map",
                 str(mapping)])
    assert_one_line_error(code, capsys.readouterr().err, "not a folder")
    code = main(["import", str(source), str(tmp_path / "b"), "--map", str(mapping),
                 "--subject-pattern", "^P"])
    assert_one_line_error(code, capsys.readouterr().err, "named group")


def test_merge_keeps_the_existing_dataset_description(flat, tmp_path: Path, capsys) -> None:
    source, mapping = flat
    bids = tmp_path / "lab"
    bids.mkdir()
    description = {"Name": "Lab cohort", "BIDSVersion": "1.8.0", "License": "CC0",
                   "Authors": ["A. Author"], "GeneratedBy": [{"Name": "heudiconv"}]}
    (bids / "dataset_description.json").write_text(json.dumps(description))
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-L01\t40\n")
    before = (bids / "dataset_description.json").read_bytes()
    code = main(["import", str(source), str(bids), "--map", str(mapping), "--merge",
                 "--name", "ignored"])
    assert code == 0, capsys.readouterr().err
    assert (bids / "dataset_description.json").read_bytes() == before
    assert pd.read_csv(bids / "participants.tsv", sep="\t")["participant_id"].tolist() == [
        "sub-L01", "sub-P001", "sub-P002"]


def test_rerun_keeps_what_the_lab_added_to_the_description(flat, tmp_path: Path) -> None:
    source, mapping = flat
    bids = tmp_path / "bids"
    import_flat(source, bids, mapping, name="first")
    path = bids / "dataset_description.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "License": "CC0"}))
    before = path.read_bytes()
    import_flat(source, bids, mapping, name="second")
    assert path.read_bytes() == before


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(300)],
                         ids=["empty", "binary"])
def test_unreadable_map_is_one_line_and_writes_nothing(flat, tmp_path: Path, capsys,
                                                       content: bytes) -> None:
    source, _ = flat
    bad = tmp_path / "map.tsv"
    bad.write_bytes(content)
    out = tmp_path / "out"
    code = main(["import", str(source), str(out), "--map", str(bad)])
    assert_one_line_error(code, capsys.readouterr().err, str(bad), "mapping table")
    assert not out.exists()


def test_demo_flat_folder_imports_into_a_valid_dataset(tmp_path: Path) -> None:
    from isyb.synthetic.demo import build_demo_flat

    folder, mapping = build_demo_flat(tmp_path, n_subjects=1)
    summary = import_flat(folder, tmp_path / "bids", mapping)
    assert summary["left_out"] == []
    assert sorted(summary["files"]) == ["sub-S01/anat/sub-S01_T1w.nii.gz",
                                        "sub-S01/func/sub-S01_task-rest_bold.nii.gz"]
    validator = shutil.which("bids-validator")
    if validator is None:
        pytest.skip("the BIDS validator is not installed (npm install -g bids-validator)")
    import subprocess

    run = subprocess.run([validator, str(tmp_path / "bids"), "--json"], capture_output=True,
                         text=True, timeout=600)
    assert json.loads(run.stdout)["issues"]["errors"] == []
