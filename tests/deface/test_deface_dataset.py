"""Dataset mode on a phantom BIDS dataset: complete copy, resume, interruption, parallelism.

Defacing is the expensive part, so the heads are the demo's phantoms on a 3 mm grid
(conftest ``PLUMBING_T1W_MM``: about 5 cpu s per defacing instead of 9 at the demo's
1.5 mm; what is tested here is the dataset mode around the defacing, which
tests/deface/test_deface_phantom.py and test_deface_real.py check at full resolution),
and the runs are module-scoped fixtures that each test reuses:

* ``first_run``: both subjects through the CLI (``--nprocs 1``, not quiet) into ``out``;
  later tests rerun into the same folder and leave it as they found it;
* the label run: ``--participant-label 01`` into a fresh folder;
* the parallel run: ``--nprocs 2`` into a fresh folder;
* the Dask run (slow): ``--executor dask`` for one subject into a fresh folder;
* ``finished_copy``: copies of ``first_run``'s input and output (same stamps), for the
  tests that change the input or the options of a finished subject and rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import PLUMBING_T1W_MM, assert_one_line_error, coarser_demo_t1w
from isyb.cli import main
from isyb.deface import dataset as dataset_mod
from isyb.deface import file as run_mod
from isyb.deface.engine import DefaceOptions
from isyb.executor import ExecutorOptions
from isyb.io import atomic_path
from isyb.synthetic.demo import build_demo_dataset

SUBJECTS = ("01", "02")
DERIV = Path("derivatives") / "isyb"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root``."""
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def anat_images(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.glob("sub-*/anat/*.nii.gz"))


def stray_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".part" in p.name]


def cli(argv: list[object]) -> tuple[int, str, str]:
    """Run ``isyb.cli.main`` in-process (usable in module fixtures, unlike capsys)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in argv])
    return code, stdout.getvalue(), stderr.getvalue()


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.fixture(scope="module")
def bids_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two phantom subjects plus non-anat files that must be copied byte for byte."""
    root = build_demo_dataset(tmp_path_factory.mktemp("bids") / "bids", n_subjects=2)
    coarser_demo_t1w(root, 2, PLUMBING_T1W_MM)
    func = root / "sub-01" / "func"
    func.mkdir()
    (func / "sub-01_task-rest_bold.json").write_text('{"RepetitionTime": 2.0, "TaskName": '
                                                    '"rest"}\n')
    rng = np.random.default_rng(7)
    bold = rng.integers(0, 500, (8, 8, 6, 3)).astype(np.int16)
    nib.Nifti1Image(bold, np.diag([3.0, 3.0, 4.0, 1.0])).to_filename(
        str(func / "sub-01_task-rest_bold.nii.gz"))
    (root / "task-rest_bold.json").write_text('{"TaskName": "rest"}\n')
    (root / "code").mkdir()
    (root / "code" / "notes.txt").write_text("not a subject folder\n")
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


@dataclass
class FirstRun:
    bids_in: Path
    out: Path
    code: int
    stdout: str
    stderr: str
    input_files: dict[str, str]
    output_files: dict[str, str]


@pytest.fixture(scope="module")
def first_run(bids_in: Path, default_template,
              tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    before = snapshot(bids_in)
    out = tmp_path_factory.mktemp("first") / "bids_defaced"
    code, stdout, stderr = cli(["deface", bids_in, out])
    assert snapshot(bids_in) == before, "the input dataset was changed"
    return FirstRun(bids_in, out, code, stdout, stderr, before, snapshot(out))


# --------------------------------------------------------------------------- complete copy


def test_run_succeeds(first_run: FirstRun) -> None:
    assert first_run.code == 0, first_run.stderr
    assert "defaced 2 image(s) of 2 subject(s)" in first_run.stderr
    assert "failed" not in first_run.stderr
    assert stray_files(first_run.out) == []


def test_every_input_file_is_in_the_output_or_withheld(first_run: FirstRun) -> None:
    out = first_run.out
    images = {str(p) for p in anat_images(first_run.bids_in)}
    assert images == {f"sub-{s}/anat/sub-{s}_T1w.nii.gz" for s in SUBJECTS}
    withheld = dict(line.split("\t") for line in
                    (out / DERIV / "withheld.tsv").read_text().splitlines()[1:])
    assert withheld == {"code/notes.txt": "folder code/ not in the release policy"}
    for relative, digest in first_run.input_files.items():
        target = out / relative
        if relative in withheld:
            assert not target.exists(), relative
            continue
        assert target.is_file(), relative
        if relative in images:
            assert sha256(target) != digest, f"{relative} was copied, not defaced"
        else:
            assert sha256(target) == digest, f"{relative} differs from the input"
    for relative in ("task-rest_bold.json", "sub-01/func/sub-01_task-rest_bold.nii.gz",
                     "sub-01/func/sub-01_task-rest_bold.json",
                     "participants.tsv", "README", "dataset_description.json"):
        assert (out / relative).is_file(), relative


def test_anat_images_keep_grid_and_dtype(first_run: FirstRun) -> None:
    for relative in anat_images(first_run.bids_in):
        source = nib.load(str(first_run.bids_in / relative))
        out = nib.load(str(first_run.out / relative))
        assert out.shape == source.shape
        assert np.array_equal(out.affine, source.affine)
        assert out.get_data_dtype() == source.get_data_dtype()
        changed = np.asarray(out.dataobj) != np.asarray(source.dataobj)
        assert 0 < changed.sum() < 0.2 * changed.size


def test_derivatives(first_run: FirstRun) -> None:
    deriv = first_run.out / DERIV
    description = json.loads((deriv / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "isyb"
    assert description["BIDSVersion"]
    for subject in SUBJECTS:
        stem = deriv / f"sub-{subject}" / "anat" / f"sub-{subject}_desc-deface"
        source = nib.load(str(first_run.bids_in / f"sub-{subject}/anat/sub-{subject}_T1w.nii.gz"))
        mask = nib.load(f"{stem}_mask.nii.gz")
        assert mask.shape == source.shape
        assert np.array_equal(mask.affine, source.affine)
        assert mask.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) == {0, 1}
        provenance = json.loads(Path(f"{stem}_provenance.json").read_text())
        assert provenance["brain_guard"]["passed"] is True
        assert provenance["changed_voxels"] > 0
        assert Path(f"{stem}_qc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        record = json.loads((deriv / "logs" / f"sub-{subject}.json").read_text())
        assert record["subject"] == subject
        assert [i["status"] for i in record["images"]] == ["ok"]
    # nothing of the derivatives leaks into the raw part of the copy
    assert not list(first_run.out.glob("sub-*/**/*desc-deface*"))


def test_index_html_is_self_contained(first_run: FirstRun) -> None:
    page = (first_run.out / DERIV / "index.html").read_text()
    for subject in SUBJECTS:
        assert f"sub-{subject}_T1w.nii.gz" in page
    sources = re.findall(r"""src\s*=\s*["']?([^"'\s>]*)""", page)
    assert len(sources) == 2
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page
    assert "2 images defaced, 0 failed" in page


def test_outputs_are_readable_like_copies(first_run: FirstRun) -> None:
    expected = 0o666 & ~umask()
    for relative in first_run.output_files:
        path = first_run.out / relative
        assert stat.S_IMODE(path.stat().st_mode) & expected == expected, relative


# --------------------------------------------------------------------------- resume


def record_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The labels of the subjects ``run_subject`` is called for from now on."""
    calls: list[str] = []
    run_subject = dataset_mod.run_subject

    def spy(job: dataset_mod.DatasetJob) -> dataset_mod.SubjectRecord:
        calls.append(job.subject)
        return run_subject(job)

    monkeypatch.setattr(dataset_mod, "run_subject", spy)
    return calls


@pytest.fixture
def finished_copy(first_run: FirstRun, tmp_path: Path) -> FirstRun:
    """``first_run``'s input and output copied with their modification times: both subjects
    finished, for a test to change and rerun without touching the shared folders."""
    bids = shutil.copytree(first_run.bids_in, tmp_path / "bids")
    out = shutil.copytree(first_run.out, tmp_path / "out")
    return FirstRun(bids, out, first_run.code, first_run.stdout, first_run.stderr,
                    first_run.input_files, first_run.output_files)


def test_rerun_skips_finished_subjects(first_run: FirstRun, default_template,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_run(job: dataset_mod.DatasetJob) -> dict:
        raise AssertionError(f"sub-{job.subject} was finished and must be skipped")

    messages: list[str] = []
    monkeypatch.setattr(dataset_mod.log, "info", lambda text, *args: messages.append(text % args))
    monkeypatch.setattr(dataset_mod, "run_subject", must_not_run)
    index = first_run.out / DERIV / "index.html"
    index.unlink()
    records = dataset_mod.deface_dataset(first_run.bids_in, first_run.out, default_template,
                                         DefaceOptions(), progress=False)
    assert [r["subject"] for r in records] == list(SUBJECTS)
    assert messages == ["2 subject(s) already finished, skipped"]
    assert index.is_file()
    assert "sub-02_T1w.nii.gz" in index.read_text()
    assert snapshot(first_run.out).keys() == first_run.output_files.keys()


def test_interrupted_subject_is_redone(first_run: FirstRun, default_template,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupt the write of sub-02's image, then rerun: only sub-02 is redone."""
    out = first_run.out
    image = out / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    record = out / DERIV / "logs" / "sub-02.json"
    sub01 = {p: p.stat().st_mtime_ns for p in out.glob("sub-01/**/*") if p.is_file()}
    sub01.update({p: p.stat().st_mtime_ns for p in (out / DERIV).glob("sub-01/**/*")
                  if p.is_file()})
    record.unlink()  # sub-02 is no longer finished

    original = run_mod.write_stored
    written = []

    def interrupted(raw, reference, path) -> None:
        if Path(path).name != image.name:
            return original(raw, reference, path)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as stream:
                stream.write(b"\x1f\x8b\x08" + bytes(4096))
            written.append(tmp)
            raise KeyboardInterrupt

    monkeypatch.setattr(run_mod, "write_stored", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dataset_mod.deface_dataset(first_run.bids_in, out, default_template, DefaceOptions(),
                                   progress=False)
    assert written and not written[0].exists()
    assert stray_files(out) == []
    assert not record.exists()
    # the previous, complete copy is still there, untouched
    relative = str(image.relative_to(out))
    assert sha256(image) == first_run.output_files[relative]

    monkeypatch.setattr(run_mod, "write_stored", original)
    calls = record_calls(monkeypatch)
    records = dataset_mod.deface_dataset(first_run.bids_in, out, default_template,
                                         DefaceOptions(), progress=False)
    assert calls == ["02"]
    assert [r["subject"] for r in records] == list(SUBJECTS)
    assert json.loads(record.read_text())["images"][0]["status"] == "ok"
    assert stray_files(out) == []
    assert sha256(image) == first_run.output_files[relative]  # deterministic
    assert {p: p.stat().st_mtime_ns for p in sub01} == sub01  # sub-01 untouched


def test_failed_subject_is_retried_after_its_input_is_fixed(
        finished_copy: FirstRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """A truncated T1w fails (exit 1, nothing of it copied); a rerun retries it, and once
    the file is fixed the subject is defaced, as if it had never failed."""
    bids, out = finished_copy.bids_in, finished_copy.out.with_name("fresh")
    relative = "sub-01/anat/sub-01_T1w.nii.gz"
    good = (bids / relative).read_bytes()
    (bids / relative).write_bytes(good[: len(good) // 2])
    record = out / DERIV / "logs" / "sub-01.json"
    argv = ["deface", bids, out, "--participant-label", "01", "--quiet"]
    calls = record_calls(monkeypatch)
    for _ in range(2):  # the second run: same broken input, retried all the same
        code, _, err = cli(argv)
        assert code == 1 and f"failed: {relative}" in err, err
        assert json.loads(record.read_text())["images"][0]["status"] == "failed"
        assert not (out / relative).exists()
    assert calls == ["01", "01"]
    (bids / relative).write_bytes(good)
    code, _, err = cli(argv)
    assert code == 0, err
    assert calls == ["01", "01", "01"]
    assert json.loads(record.read_text())["images"][0]["status"] == "ok"
    assert sha256(out / relative) == finished_copy.output_files[relative]
    assert stray_files(out) == []


def test_changed_input_is_redone(finished_copy: FirstRun, default_template,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished subject whose T1w was replaced is defaced again from the new file."""
    bids, out = finished_copy.bids_in, finished_copy.out
    relative = "sub-01/anat/sub-01_T1w.nii.gz"
    shutil.copyfile(bids / "sub-02/anat/sub-02_T1w.nii.gz", bids / relative)
    calls = record_calls(monkeypatch)
    records = dataset_mod.deface_dataset(bids, out, default_template, DefaceOptions(),
                                         progress=False)
    assert calls == ["01"]
    assert [i["status"] for r in records for i in r["images"]] == ["ok", "ok"]
    redone = nib.load(str(out / relative))
    assert redone.shape == nib.load(str(bids / relative)).shape
    assert sha256(out / relative) != finished_copy.output_files[relative]
    stamp = records[0]["input"][relative]
    assert stamp["size"] == (bids / relative).stat().st_size


def test_a_copied_file_replaced_by_an_older_one_of_the_same_size_is_copied_again(
        finished_copy: FirstRun, default_template, monkeypatch: pytest.MonkeyPatch) -> None:
    """``cp -p`` or a restore: the new sidecar has the old one's size and an older time.
    The subject is redone (its stamps changed) and the copy must follow the source."""
    bids, out = finished_copy.bids_in, finished_copy.out
    sidecar = bids / "sub-01/anat/sub-01_T1w.json"
    text = sidecar.read_text()
    sidecar.write_text(text.replace("2", "3", 1) if "2" in text else text.upper())
    assert len(sidecar.read_text()) == len(text) and sidecar.read_text() != text
    os.utime(sidecar, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    calls = record_calls(monkeypatch)
    dataset_mod.deface_dataset(bids, out, default_template, DefaceOptions(), progress=False)
    assert calls == ["01"]
    assert (out / "sub-01/anat/sub-01_T1w.json").read_text() == sidecar.read_text()


def test_changed_options_are_redone(finished_copy: FirstRun,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """``--method remove`` after ``blur`` redoes the subject with ``remove``; a second
    identical rerun then does no work."""
    bids, out = finished_copy.bids_in, finished_copy.out
    relative = "sub-01/anat/sub-01_T1w.nii.gz"
    calls = record_calls(monkeypatch)
    argv = ["deface", bids, out, "--method", "remove", "--participant-label", "01", "--quiet"]
    code, _, err = cli(argv)
    assert code == 0, err
    assert calls == ["01"]
    record = json.loads((out / DERIV / "logs" / "sub-01.json").read_text())
    assert record["images"][0]["provenance"]["method"] == "remove"
    removed = sha256(out / relative)
    assert removed != finished_copy.output_files[relative]
    code, _, err = cli(argv)
    assert code == 0, err
    assert calls == ["01"]
    assert sha256(out / relative) == removed


# --------------------------------------------------------------------------- labels, errors


def test_participant_label_only_that_subject(first_run: FirstRun, default_template,
                                             tmp_path: Path) -> None:
    out = tmp_path / "only01"
    code, _, err = cli(["deface", first_run.bids_in, out, "--participant-label", "01",
                        "--quiet"])
    assert code == 0, err
    assert (out / "sub-01" / "anat" / "sub-01_T1w.nii.gz").is_file()
    assert not (out / "sub-02").exists()
    assert not (out / DERIV / "sub-02").exists()
    assert sorted(p.name for p in (out / DERIV / "logs").iterdir()) == ["sub-01.json"]
    relative = "sub-01/anat/sub-01_T1w.nii.gz"
    assert sha256(out / relative) == first_run.output_files[relative]
    page = (out / DERIV / "index.html").read_text()
    assert "sub-01_T1w" in page and "sub-02_T1w" not in page


@pytest.mark.parametrize("labels", [["03"], ["01", "sub-07"]])
def test_unknown_label(labels: list[str], bids_in: Path, default_template, tmp_path: Path,
                       capsys) -> None:
    out = tmp_path / "out"
    code = main(["deface", str(bids_in), str(out), "--participant-label", *labels, "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, labels[-1].removeprefix("sub-"))
    assert not out.exists()


def test_input_without_description(bids_in: Path, default_template, tmp_path: Path,
                                   capsys) -> None:
    bare = tmp_path / "bare"
    (bare / "sub-01" / "anat").mkdir(parents=True)
    (bare / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(
        (bids_in / "sub-01" / "anat" / "sub-01_T1w.nii.gz").read_bytes())
    out = tmp_path / "out"
    code = main(["deface", str(bare), str(out), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "dataset_description.json")
    assert not out.exists()


@pytest.mark.parametrize("where", ["inside", "same", "parent"])
def test_output_overlapping_input(where: str, bids_in: Path, default_template,
                                  capsys) -> None:
    before = snapshot(bids_in)
    out = {"inside": bids_in / "derivatives" / "defaced", "same": bids_in,
           "parent": bids_in.parent}[where]
    code = main(["deface", str(bids_in), str(out), "--quiet"])
    assert_one_line_error(code, capsys.readouterr().err, "must not be inside")
    assert snapshot(bids_in) == before
    assert not (bids_in / "derivatives").exists()


def test_save_mask_refused_in_dataset_mode(bids_in: Path, default_template, tmp_path: Path,
                                           capsys) -> None:
    out = tmp_path / "out"
    code = main(["deface", str(bids_in), str(out), "--save-mask", str(tmp_path / "m.nii.gz")])
    assert_one_line_error(code, capsys.readouterr().err, "--save-mask")
    assert not out.exists()


# --------------------------------------------------------------------------- parallel


def test_nprocs_2_matches_nprocs_1(first_run: FirstRun, tmp_path: Path) -> None:
    out = tmp_path / "parallel"
    code, _, err = cli(["deface", first_run.bids_in, out, "--nprocs", "2", "--quiet"])
    assert code == 0, err
    for relative in anat_images(first_run.bids_in):
        assert sha256(out / relative) == first_run.output_files[str(relative)], relative
    masks = sorted((out / DERIV).glob("sub-*/anat/*_mask.nii.gz"))
    assert len(masks) == 2
    for mask in masks:
        relative = str(mask.relative_to(out))
        assert sha256(mask) == first_run.output_files[relative], relative
    assert sorted(p.name for p in (out / DERIV / "logs").iterdir()) == [
        "sub-01.json", "sub-02.json"]
    assert stray_files(out) == []


def test_executor_options_reach_the_executor(first_run: FirstRun, default_template,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--executor dask --nprocs 3`` is what runs the subjects (none left to run here)."""
    seen: list[ExecutorOptions] = []

    def spy(function, items, options, **kwargs):
        seen.append(options)
        return iter(())

    monkeypatch.setattr(dataset_mod, "run_tasks", spy)
    code, _, err = cli(["deface", first_run.bids_in, first_run.out, "--executor", "dask",
                        "--nprocs", "3", "--quiet"])
    assert code == 0, err
    assert seen == [ExecutorOptions("dask", 3)]


def test_dask_options_without_dask_executor(bids_in: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["deface", str(bids_in), str(out), "--dask-scheduler", "tcp://127.0.0.1:1"])
    assert_one_line_error(code, capsys.readouterr().err, "--executor dask")
    assert not out.exists()


@pytest.mark.slow
def test_dask_executor_matches_local(first_run: FirstRun, tmp_path: Path) -> None:
    pytest.importorskip("distributed")
    out = tmp_path / "dask"
    code, _, err = cli(["deface", first_run.bids_in, out, "--participant-label", "01",
                        "--executor", "dask", "--nprocs", "1", "--quiet"])
    assert code == 0, err
    for relative in ("sub-01/anat/sub-01_T1w.nii.gz",
                     f"{DERIV}/sub-01/anat/sub-01_desc-deface_mask.nii.gz",
                     "sub-01/func/sub-01_task-rest_bold.nii.gz"):
        assert sha256(out / relative) == first_run.output_files[relative], relative
    record = json.loads((out / DERIV / "logs" / "sub-01.json").read_text())
    assert [i["status"] for i in record["images"]] == ["ok"]
    assert stray_files(out) == []


def test_index_html_shows_each_images_own_face_fractions(first_run: FirstRun) -> None:
    """Issue 20: the summary page carries the template-independent own-face fractions of
    the provenance (which tests/evaluate/test_face_reference.py checks against an
    independent count on the phantom's labels), one row per image, in percent."""
    page = (first_run.out / DERIV / "index.html").read_text()
    assert "own face surface changed" in page
    for subject in SUBJECTS:
        record = json.loads((first_run.out / DERIV / "logs" / f"sub-{subject}.json").read_text())
        reference = record["images"][0]["provenance"]["face_reference"]
        row = next(r for r in re.findall(r"<tr[^>]*>(.*?)</tr>", page)
                   if f"sub-{subject}_T1w.nii.gz</td>" in r)
        cells = re.findall(r"<td>(.*?)</td>", row)
        thirds = " / ".join(f"{100 * reference['thirds'][t]['unreached_fraction']:.1f}%"
                            for t in ("upper", "middle", "lower"))
        assert cells[9:12] == [f"{100 * reference['changed_fraction']:.1f}%",
                               f"{100 * reference['guard_fraction']:.1f}%", thirds]
        assert 0.0 < reference["changed_fraction"] <= 1.0
