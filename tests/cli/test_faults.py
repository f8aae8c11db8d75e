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


# --------------------------------------------------------------------------- malformed inputs

MALFORMED = {
    "description": ("dataset_description.json", b"{not json", "dataset_description.json"),
    "binary participants": ("participants.tsv", b"\x00\xff\xfe\x89PNG\x00" * 40,
                            "participants.tsv"),
    "ragged participants": ("participants.tsv", b"participant_id\tage\nsub-01\t1\t2\t3\n",
                            "line 2 has 4 fields"),
    "binary sidecar": ("sub-01/anat/sub-01_T1w.json", b"\x89PNG\xff\x00", "sub-01_T1w.json"),
    "RepetitionTime two": ("sub-01/anat/sub-01_T1w.json", b'{"RepetitionTime": "two"}',
                           "sub-01_T1w.json: RepetitionTime must be a number > 0"),
}


def _commands(bids: str, out: str, source: str, mapping: str) -> dict[str, list[str]]:
    return {"deface": ["deface", bids, out],
            "qc": ["qc", bids, out, "participant"],
            "derive": ["derive", bids, out, "participant"],
            "study": ["study", bids, out, "--templates", "default,MNI152NLin6Asym"],
            "split": ["split", bids, "--output", f"{out}.tsv"],
            "import": ["import", source, bids, "--map", mapping, "--merge"],
            "participant": [bids, out, "participant"],
            "group": [bids, out, "group"]}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from isyb.synthetic.demo import build_demo_dataset, build_demo_flat

    root = tmp_path_factory.mktemp("malformed")
    flat, mapping = build_demo_flat(root / "flat", n_subjects=1)
    return {"bids": build_demo_dataset(root / "bids", n_subjects=1), "flat": flat,
            "map": mapping, "demo_func": build_demo_dataset(root / "func", n_subjects=1,
                                                            modalities=("anat", "func"))}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_malformed_input_is_one_line_exit_2_in_every_command(
        case: str, inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    import shutil

    name, data, fragment = MALFORMED[case]
    bids = tmp_path / "bids"
    shutil.copytree(inputs["bids"], bids)
    (bids / name).write_bytes(data)
    before = {p: p.read_bytes() for p in bids.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    commands = _commands(str(bids), str(out), str(inputs["flat"]), str(inputs["map"]))
    if name.startswith("sub-"):  # a subject's file: the commands that read subjects' files
        commands = {k: v for k, v in commands.items() if k not in ("split", "import", "group")}
    for command, argv in commands.items():
        code = main(argv)
        assert_one_line_error(code, capsys.readouterr().err, fragment)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"], command
        assert {p: p.read_bytes() for p in bids.rglob("*") if p.is_file()} == before, command


def test_qc_bold_with_an_invalid_sidecar_is_one_line(tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    import nibabel as nib
    import numpy as np

    monkeypatch.chdir(tmp_path)
    image = tmp_path / "sub-01_task-rest_bold.nii.gz"
    nib.Nifti1Image(np.ones((4, 4, 4, 5), np.float32), np.eye(4)).to_filename(str(image))
    sidecar = tmp_path / "sub-01_task-rest_bold.json"
    for text, fragment in (('{"RepetitionTime": ', "cannot be read as JSON"),
                           ('{"RepetitionTime": "two"}', "RepetitionTime must be")):
        sidecar.write_text(text)
        code = main(["qc", "bold", str(image)])
        assert_one_line_error(code, capsys.readouterr().err, sidecar.name, fragment)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([image.name, sidecar.name])


def test_split_refuses_to_overwrite_the_participant_ids(inputs: dict[str, Path],
                                                        capsys) -> None:
    before = (inputs["bids"] / "participants.tsv").read_bytes()
    code = main(["split", str(inputs["bids"]), "--column", "participant_id", "--in-place"])
    assert_one_line_error(code, capsys.readouterr().err, "participant_id")
    assert (inputs["bids"] / "participants.tsv").read_bytes() == before


# --------------------------------------------------------------------------- unusable outputs


def test_a_dataset_without_subjects_is_refused_with_nothing_written(tmp_path: Path,
                                                                    capsys) -> None:
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    for argv in (["deface", str(bids), str(tmp_path / "out")],
                 [str(bids), str(tmp_path / "out"), "participant"]):
        assert_one_line_error(main(argv), capsys.readouterr().err, "no sub-* folders")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["bids"]


@pytest.mark.parametrize("where", ["foreign folder", "under a file", "a file"])
def test_an_unusable_output_folder_is_refused_at_once(where: str, inputs: dict[str, Path],
                                                      tmp_path: Path, capsys) -> None:
    if where == "foreign folder":
        out = tmp_path / "photos"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"\xff\xd8")
        fragment = "isyb did not write"
    elif where == "under a file":
        (tmp_path / "notes.txt").write_text("x")
        out, fragment = tmp_path / "notes.txt" / "release", "under a file"
    else:
        (tmp_path / "release").write_text("x")
        out, fragment = tmp_path / "release", "is a file"
    before = _tree(tmp_path)
    commands = [["deface", str(inputs["bids"]), str(out)],
                [str(inputs["bids"]), str(out), "participant"]]
    if where != "foreign folder":  # qc, derive and study write only below OUT/derivatives
        commands += [["qc", str(inputs["bids"]), str(out), "participant"],
                     ["derive", str(inputs["demo_func"]), str(out), "participant"],
                     ["study", str(inputs["bids"]), str(out), "--templates", "a,b"]]
    for argv in commands:
        assert_one_line_error(main(argv), capsys.readouterr().err, fragment)
        assert _tree(tmp_path) == before


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:9", "tcp://no-port"])
def test_a_bad_scheduler_address_is_refused_before_the_scrub_key(
        address: str, inputs: dict[str, Path], tmp_path: Path, capsys) -> None:
    code = main([str(inputs["bids"]), str(tmp_path / "out"), "participant", "--executor",
                 "dask", "--dask-scheduler", address])
    assert_one_line_error(code, capsys.readouterr().err, address)
    assert _tree(tmp_path) == []


# --------------------------------------------------------------------------- kills and full disks


def test_stale_partial_files_are_swept_when_a_dataset_deface_is_rerun(
        inputs: dict[str, Path], tmp_path: Path, default_template) -> None:
    from isyb import __version__
    from isyb.bids.classify import classify_dataset, load_release_policy
    from isyb.deface.dataset import (
        DatasetJob,
        deface_dataset,
        input_stamps,
        options_key,
        record_path,
    )

    out = tmp_path / "out"
    record = record_path(out, "01")  # sub-01 finished: the rerun only sweeps and summarises
    record.parent.mkdir(parents=True)
    policy = load_release_policy()
    stamps = input_stamps(i for i in classify_dataset(inputs["bids"], policy)
                          if i.relative.startswith("sub-01/"))
    job = DatasetJob(inputs["bids"], out, "01", default_template, DefaceOptions())
    record.write_text(json.dumps({"subject": "01", "images": [], "input": stamps,
                                  "options_key": options_key(job, policy),
                                  "isyb_version": __version__}))
    stale = [out / "sub-01/anat/.sub-01_T1w.nii.gz.k3j2x9.part.nii.gz",
             out / "derivatives/isyb/sub-01/anat/.sub-01_T1w_mask.nii.gz.ab1.part.nii.gz"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an image")
    deface_dataset(inputs["bids"], out, default_template, DefaceOptions(), progress=False)
    assert [p for p in stale if p.exists()] == []


def test_stale_partial_files_beside_a_single_output_are_swept(tmp_path: Path, capsys,
                                                             default_template) -> None:
    """Swept once the input is known to be an image (here an all-zero one, refused later)."""
    import nibabel as nib
    import numpy as np

    source = tmp_path / "in.nii.gz"
    nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)).to_filename(str(source))
    stale = [tmp_path / ".d.nii.gz.x1y2z3.part.nii.gz", tmp_path / ".d_isyb.json.q9.part.json"]
    other = tmp_path / ".dog.nii.gz.x1y2z3.part.nii.gz"  # another output's: kept
    for path in (*stale, other):
        path.write_bytes(b"half")
    code = main(["deface", str(source), str(tmp_path / "d.nii.gz"), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "all zero")
    assert [p for p in stale if p.exists()] == [] and other.exists()


def test_a_full_disk_during_the_participant_level_leaves_nothing_half_written(
        inputs: dict[str, Path], tmp_path: Path, capsys, monkeypatch, default_template) -> None:
    def full(source, target, *args, **kwargs) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr("isyb.deface.dataset.shutil.copyfile", full)
    out = tmp_path / "release"
    code = main([str(inputs["bids"]), str(out), "participant", "--skip", "deface", "qc",
                 "derive", "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "No space left on device")
    assert [p for p in tmp_path.rglob("*") if ".part" in p.name] == []
    assert [p for p in out.rglob("*") if p.is_file()] == []  # nothing reached the release
