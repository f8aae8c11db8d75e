"""New-user mistakes give a one-line error at once (in process, via isyb.cli.main).

"At once" is checked by what did not happen, not by wall time (the machines are
noisy): no template was prepared and no task was started before the refusal.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from conftest import PLUMBING_T1W_MM, assert_one_line_error, coarser_demo_t1w
from isyb.cli import main
from isyb.synthetic.demo import build_demo_dataset


@pytest.fixture(scope="module")
def bids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 3-subject demo, its heads at 3 mm (conftest ``PLUMBING_T1W_MM``): the tests that
    run the work check what the commands print, not the anatomy."""
    root = build_demo_dataset(tmp_path_factory.mktemp("traps") / "bids", n_subjects=3)
    coarser_demo_t1w(root, 3, PLUMBING_T1W_MM)
    return root


#: Modules whose ``run_tasks`` starts a dataset mode's work.
TASK_MODULES = ("isyb.deface.dataset", "isyb.qc.dataset", "isyb.derive.dataset",
                "isyb.app.release", "isyb.study.run")


@pytest.fixture(autouse=True)
def no_expensive_work(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail a test whose command prepares a template or starts a task before refusing
    (except the tests marked ``runs_the_work``)."""
    if request.node.get_closest_marker("runs_the_work"):
        return
    def expensive(*args, **kwargs):
        raise AssertionError("expensive work started before the refusal")

    monkeypatch.setattr("isyb.templates.registry.resolve", expensive)
    for name in TASK_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "run_tasks"):
            monkeypatch.setattr(module, "run_tasks", expensive)


def _call(argv: list, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("word", "nearest"), [("defase", "deface"), ("templtes", "templates"),
                                               ("stduy", "study")])
def test_a_mistyped_command_names_the_nearest_one(word: str, nearest: str, capsys) -> None:
    code, err = _call([word, "in.nii.gz", "out.nii.gz"], capsys)
    assert_one_line_error(code, err, f"unknown command '{word}'; did you mean '{nearest}'?")


def test_an_unknown_word_that_is_no_folder_lists_the_commands(capsys) -> None:
    code, err = _call(["frobnicate"], capsys)
    assert_one_line_error(code, err, "unknown command 'frobnicate'", "deface")


@pytest.mark.parametrize("argv", [
    ["deface", "{bids}", "{tmp}/out.nii.gz"],
    ["{bids}", "{tmp}/release.nii.gz", "participant"],
    ["derive", "{bids}", "{tmp}/out.json", "participant"],
    ["qc", "{bids}", "{tmp}/qc.tsv", "participant"],
])
def test_a_file_as_out_of_a_dataset_is_refused_at_once(argv: list, bids: Path, tmp_path: Path,
                                                       capsys) -> None:
    argv = [a.format(bids=bids, tmp=tmp_path) for a in argv]
    code, err = _call(argv, capsys)
    assert_one_line_error(code, err, "must be a folder")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_as_out_of_a_file_is_refused_at_once(bids: Path, tmp_path: Path,
                                                      capsys) -> None:
    code, err = _call(["deface", bids / "sub-01/anat/sub-01_T1w.nii.gz", tmp_path],
                               capsys)
    assert_one_line_error(code, err, "is a folder")


@pytest.mark.parametrize(("split", "fragment"), [("a:2,b:2", "3"), ("a:2,b:1", "b")])
def test_study_checks_the_split_before_any_template(split: str, fragment: str, bids: Path,
                                                    tmp_path: Path, capsys) -> None:
    code, err = _call(["study", bids, tmp_path / "study", "--templates",
                                "default,MNI152NLin6Asym", "--split", split], capsys)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "study").exists()


def test_study_needs_two_templates_before_any_work(bids: Path, tmp_path: Path, capsys) -> None:
    code, err = _call(["study", bids, tmp_path / "s", "--templates", "default,default"],
                         capsys)
    assert_one_line_error(code, err, "two different templates")


def test_import_refuses_a_dataset_it_did_not_make_unless_merge(bids: Path, tmp_path: Path,
                                                                capsys) -> None:
    from isyb.synthetic.demo import build_demo_flat

    folder, mapping = build_demo_flat(tmp_path / "flat", n_subjects=2)
    code, err = _call(["import", folder, bids, "--map", mapping], capsys)
    assert_one_line_error(code, err, "was not made by isyb import", "--merge")
    fresh = tmp_path / "fresh"
    assert main(["import", str(folder), str(fresh), "--map", str(mapping)]) == 0
    assert main(["import", str(folder), str(fresh), "--map", str(mapping)]) == 0  # resumes
    merged = tmp_path / "merged"
    build_demo_dataset(merged, n_subjects=1)
    assert main(["import", str(folder), str(merged), "--map", str(mapping), "--merge"]) == 0


@pytest.mark.slow
@pytest.mark.runs_the_work
def test_single_file_deface_names_its_stages_unless_quiet(bids: Path, tmp_path: Path,
                                                          default_template, capsys) -> None:
    source = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    assert main(["deface", str(source), str(tmp_path / "a.nii.gz"), "--no-png"]) == 0
    err = capsys.readouterr().err
    where = [err.find(f"isyb: {stage}: ") for stage in ("brain", "registration", "masking",
                                                         "writing")]
    assert -1 not in where and where == sorted(where), err
    assert main(["deface", str(source), str(tmp_path / "b.nii.gz"), "--no-png", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
