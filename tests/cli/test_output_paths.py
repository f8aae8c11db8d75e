"""Output paths: an output that would replace an input, or lie inside an input dataset, and
an output location that cannot be written, are one line and exit 2 before any work; a path
that fails during the work is one line too, never a traceback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_one_line_error
from isyb.cli import main


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from isyb.synthetic.demo import build_demo_dataset

    return build_demo_dataset(tmp_path_factory.mktemp("outputs") / "bids", n_subjects=2)


@pytest.fixture(autouse=True)
def no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test whose command prepares a template or starts a dataset task."""
    def expensive(*args, **kwargs):
        raise AssertionError("work started before the refusal")

    monkeypatch.setattr("isyb.templates.registry.resolve", expensive)
    monkeypatch.setattr("isyb.study.run.run_tasks", expensive)
    monkeypatch.setattr("isyb.deface.dataset.run_tasks", expensive)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else b"/"
            for p in root.rglob("*")}


def _image(path: Path, shape: tuple[int, ...]) -> Path:
    """Random voxels: an image no other check refuses before the one tested."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).random(shape, dtype=np.float32) + 1.0
    nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])).to_filename(str(path))
    return path


# --------------------------------------------------------------------------- B: study


@pytest.mark.parametrize("where", [".", "derivatives/study"])
def test_study_refuses_an_out_dir_that_is_or_lies_inside_the_dataset(where: str, bids: Path,
                                                                    capsys) -> None:
    before = _snapshot(bids)
    code = main(["study", str(bids), str(bids / where), "--templates", "a,b", "--split",
                 "all:2"])
    assert_one_line_error(code, capsys.readouterr().err, "must not be inside the input")
    assert _snapshot(bids) == before


# --------------------------------------------------------------------------- C: an input as output


@pytest.mark.parametrize("output", ["sub-01/anat/sub-01_T1w.nii.gz", "split.tsv"])
def test_split_refuses_an_output_inside_the_dataset(output: str, bids: Path, capsys) -> None:
    before = _snapshot(bids)
    code = main(["split", str(bids), "--sizes", "a:2", "--output", str(bids / output)])
    assert_one_line_error(code, capsys.readouterr().err, "--output lies inside the input")
    assert _snapshot(bids) == before


@pytest.mark.parametrize("output", ["image", "sidecar", "hard link"])
def test_qc_bold_refuses_a_tsv_that_is_an_input(output: str, tmp_path: Path, capsys) -> None:
    image = _image(tmp_path / "sub-01_task-rest_bold.nii.gz", (8, 8, 8, 12))
    sidecar = tmp_path / "sub-01_task-rest_bold.json"
    sidecar.write_text('{"RepetitionTime": 2}')
    link = tmp_path / "link.nii.gz"
    link.hardlink_to(image)
    tsv = {"image": tmp_path / "x" / ".." / image.name, "sidecar": sidecar,
           "hard link": link}[output]
    before = _snapshot(tmp_path)
    code = main(["qc", "bold", str(image), "--tr", "2", "--tsv", str(tsv)])
    assert_one_line_error(code, capsys.readouterr().err, "--tsv is the input")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("renders", ["orig.nii.gz", "defaced.nii.gz", "mask.nii.gz"])
def test_evaluate_refuses_renders_that_are_an_input(renders: str, tmp_path: Path,
                                                    capsys) -> None:
    for name in ("orig.nii.gz", "defaced.nii.gz", "mask.nii.gz"):
        _image(tmp_path / name, (6, 6, 6))
    before = _snapshot(tmp_path)
    code = main(["evaluate", str(tmp_path / "orig.nii.gz"), str(tmp_path / "defaced.nii.gz"),
                 "--mask", str(tmp_path / "mask.nii.gz"), "--detect", "haar",
                 "--renders", str(tmp_path / renders)])
    assert_one_line_error(code, capsys.readouterr().err, "--renders is the input")
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- D: unwritable outputs


def test_single_file_deface_under_a_file_is_refused_before_the_work(tmp_path: Path,
                                                                    capsys) -> None:
    image = _image(tmp_path / "in" / "T1w.nii.gz", (16, 16, 16))
    (tmp_path / "notes.txt").write_text("x")
    code = main(["deface", str(image), str(tmp_path / "notes.txt" / "out.nii.gz")])
    assert_one_line_error(code, capsys.readouterr().err, "notes.txt/out.nii.gz: Not a directory",
                          "under a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "notes.txt"]


def test_an_output_file_that_is_a_folder_is_refused_before_the_work(tmp_path: Path,
                                                                    capsys) -> None:
    image = _image(tmp_path / "bold.nii.gz", (8, 8, 8, 12))
    (tmp_path / "frames").mkdir()
    code = main(["qc", "bold", str(image), "--tr", "2", "--tsv", str(tmp_path / "frames")])
    assert_one_line_error(code, capsys.readouterr().err, "frames: Is a directory")
    assert list((tmp_path / "frames").iterdir()) == []


def test_an_output_folder_without_permission_is_refused_before_the_work(
        bids: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root, chmod stops nothing: the permission is denied by a patched ``os.access``."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    for argv in (["deface", str(bids), str(tmp_path / "out")],
                 ["study", str(bids), str(tmp_path / "out"), "--templates", "a,b", "--split",
                  "all:2"],
                 ["split", str(bids), "--output", str(tmp_path / "split.tsv")]):
        code = main(argv)
        assert_one_line_error(code, capsys.readouterr().err, f"{tmp_path}: Permission denied")
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["folder", "under a file", "no permission"])
def test_a_path_fault_during_the_work_is_one_line(where: str, bids: Path, tmp_path: Path,
                                                  capsys, monkeypatch) -> None:
    """What the checks before the work cannot foresee (here they are switched off: the
    output changed under a running command) is the system's one line and exit 2."""
    monkeypatch.setattr("isyb.cli.release.check_output_file", lambda path, option: None,
                        raising=False)  # the old code had no check
    (tmp_path / "notes.txt").write_text("x")
    out = {"folder": tmp_path / "frames", "under a file": tmp_path / "notes.txt" / "s.tsv",
           "no permission": tmp_path / "split.tsv"}[where]
    if where == "folder":
        out.mkdir()
    if where == "no permission":
        def denied(*args, **kwargs) -> None:
            raise PermissionError(errno.EACCES, "Permission denied", str(out))

        monkeypatch.setattr("isyb.io.Path.write_text", denied)
    before = _snapshot(tmp_path)
    code = main(["split", str(bids), "--sizes", "a:2", "--output", str(out)])
    line = assert_one_line_error(code, capsys.readouterr().err, str(out.parent))
    assert line.endswith(("Is a directory", "Not a directory", "File exists",
                          "Permission denied")), line
    assert _snapshot(tmp_path) == before  # no temporary file left
