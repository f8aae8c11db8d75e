"""The BIDS-App release pipeline: validator, scrubbing, executors, faults, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from conftest import PLANTED_DATE, PLANTED_NAME, run_cli, run_isyb_killing_a_dask_worker
from isyb.bids.scrub import find_leaks, load_policy
from isyb.synthetic.demo import build_demo_dataset

pytestmark = pytest.mark.slow

PLANTED = "Planted^Person"
CBF_KEYS = ("PostLabelingDelay", "LabelingDuration", "M0Type", "RepetitionTimePreparation",
            "ArterialSpinLabelingType", "LabelingEfficiency", "BackgroundSuppression")


def _isyb(*args: str, check: bool = True) -> SimpleNamespace:
    run = run_cli(*args)
    if check:
        assert run.returncode == 0, run.stderr[-3000:]
    return run


def _release(bids: Path, out: Path, *extra: str) -> Path:
    _isyb(str(bids), str(out), "participant", "--quiet", *extra)
    _isyb(str(bids), str(out), "group", "--quiet")
    return out


def _validate(release: Path) -> dict:
    validator = shutil.which("bids-validator")
    if validator is None:
        pytest.skip("the BIDS validator is not installed (npm install -g bids-validator)")
    run = subprocess.run([validator, str(release), "--json"], capture_output=True, text=True,
                         timeout=600)
    return json.loads(run.stdout)["issues"]


def _files(root: Path, suffixes: tuple[str, ...]) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name.endswith(suffixes)}


@pytest.fixture(scope="module")
def demo(demo_release: dict[str, Path]) -> dict[str, Path]:
    """The run's shared demo release (read-only: tests write their own outputs elsewhere)."""
    return demo_release


def test_demo_release_passes_the_bids_validator(demo) -> None:
    issues = _validate(demo["release"])
    assert issues["errors"] == [], issues["errors"]
    # Documented warnings: the phantoms differ in voxel size and orientation on purpose,
    # and the demo has a single author, which the validator flags as possibly a list in one.
    assert {w["key"] for w in issues["warnings"]} <= {"INCONSISTENT_PARAMETERS",
                                                       "TOO_FEW_AUTHORS"}
    release = demo["release"]
    description = json.loads((release / "dataset_description.json").read_text())
    assert description["GeneratedBy"][-1]["Name"] == "isyb"
    assert description["SourceDatasets"] == [{"URL": "file:bids"}]
    assert json.loads((release / "derivatives/isyb/dataset_description.json").read_text())[
        "DatasetType"] == "derivative"
    assert "Release notes (isyb)" in (release / "README").read_text()
    assert "isyb" in (release / "CHANGES").read_text()
    summary = json.loads((release / "derivatives/isyb/release_summary.json").read_text())
    assert summary["leak_scan"]["findings"] == 0
    assert summary["participant_level_done"] == 2
    assert (release / "derivatives/isyb/group_T1w.tsv").is_file()
    # the secret key of the date shifts stays out of the release
    assert not list(release.rglob("scrub.key"))
    assert (demo["work"] / "scrub.key").stat().st_mode & 0o077 == 0


def _demo_without_sub02(demo: dict[str, Path], root: Path) -> tuple[Path, Path]:
    """A copy of the shared demo release (input, release, work folder: the manifest digests
    hold no absolute path) in ``root`` from which every trace of sub-02 is removed, as if
    its participant level had never run; ``(bids, release)``. A fault test then pays for one
    subject's real run, not two: sub-01 is skipped as done, sub-02 is run, and the group
    level must give the demo release's bytes again."""
    for name in ("bids", "release", "release_work"):
        shutil.copytree(demo["root"] / name, root / name)
    for folder in (root / "release", root / "release_work"):
        for path in sorted(folder.rglob("*sub-02*"), reverse=True):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    return root / "bids", root / "release"


@pytest.fixture(scope="module")
def killed_and_resumed(demo, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """SIGKILL of the participant level while sub-02 is being staged, then its resume through
    Dask with the worker of sub-02's task killed too; ``state`` says what the killed run left.

    It starts from the demo release without sub-02 (sub-01 done, as a killed run leaves it),
    and a name planted in sub-02's sidecar only adds its row to the scrub report. Sub-02 is
    being defaced in the work folder when the run is killed (its sidecars are copied there,
    unscrubbed, after its images). One real subject's run covers what the kill-and-resume,
    the kill-mid-deface (test_release_staging.py, formerly) and the Dask killed-worker tests
    each paid a run for; the local executor's resume is checked by the changed-input test
    below, test_release_staging.py and tests/deface/test_deface_dataset.py."""
    root = tmp_path_factory.mktemp("killed")
    bids, out = _demo_without_sub02(demo, root)
    sidecar = bids / "sub-02" / "anat" / "sub-02_T1w.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "PatientName": PLANTED}))
    manifest = root / "release_work" / "manifest" / "sub-01.json"
    stage = root / "release_work" / "stage" / "sub-02"
    run = subprocess.Popen(["isyb", str(bids), str(out), "participant", "--quiet"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None and not stage.is_dir():
        time.sleep(0.05)
    assert run.poll() is None, f"the run ended before sub-02 was staged: {run.stderr.read()}"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    state = {"finished": json.loads(manifest.read_text()),
             "sub02_released": (out / "sub-02").exists(),
             "planted_in_release": [p for p in out.rglob("*")
                                    if p.is_file() and PLANTED.encode() in p.read_bytes()],
             "group": run_cli(bids, out, "group")}
    run_isyb_killing_a_dask_worker([str(bids), str(out), "participant", "--quiet"])
    state["finished_after_resume"] = json.loads(manifest.read_text())
    _isyb(str(bids), str(out), "group", "--quiet")
    return {"out": out, "state": state}


def _same_as_demo_release_but_the_planted_row(demo, out: Path) -> None:
    """Every image and table of ``out`` has the demo release's bytes, but for the scrub
    report's row of the name planted in sub-02's sidecar."""
    got, expected = (_files(root, (".nii.gz", ".tsv")) for root in (out, demo["release"]))
    report = "derivatives/isyb/scrub_report.tsv"
    got_rows, expected_rows = (set(files.pop(report).decode().splitlines())
                               for files in (got, expected))
    assert expected_rows <= got_rows
    planted_rows = got_rows - expected_rows
    assert got.keys() == expected.keys()
    assert [name for name in got if got[name] != expected[name]] == []
    assert [(row.split("\t")[0], row.split("\t")[2]) for row in planted_rows] == [
        ("sub-02/anat/sub-02_T1w.json", "PatientName")]


def test_dask_with_a_killed_worker_gives_byte_identical_tables_and_images(
        demo, killed_and_resumed: dict) -> None:
    """The resume ran through Dask, and the worker of its one task (sub-02's) was killed:
    the executor gives the local bytes, and so does the task's retry (the SLURM test runs
    both subjects through Dask)."""
    _same_as_demo_release_but_the_planted_row(demo, killed_and_resumed["out"])


def test_a_killed_run_resumes_without_redoing_finished_subjects(
        demo, killed_and_resumed: dict) -> None:
    """The killed run left no file of sub-02 and no unscrubbed one in the release, the group
    level refused, and the resume skipped sub-01 and gave the demo release's bytes."""
    out, state = killed_and_resumed["out"], killed_and_resumed["state"]
    assert set(state["finished"]) >= {"deface", "scrub", "qc", "derive"}  # sub-01 was done
    assert not state["sub02_released"]
    assert state["planted_in_release"] == []
    assert state["group"].returncode == 1 and "sub-02" in state["group"].stderr
    assert state["finished_after_resume"] == state["finished"]  # sub-01 was not redone
    assert [p for p in out.rglob("*") if ".part" in p.name] == []
    _same_as_demo_release_but_the_planted_row(demo, out)
    assert [p for p in out.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()] \
        == []


def test_a_changed_input_reruns_only_what_depends_on_it(demo, tmp_path: Path) -> None:
    """A copy of the finished demo release (input, release and work folder: the manifest
    digests hold no absolute path) is rerun after sub-02's sidecar changed."""
    for name in ("bids", "release", "release_work"):
        shutil.copytree(demo["root"] / name, tmp_path / name)
    bids, out = tmp_path / "bids", tmp_path / "release"
    work = tmp_path / "release_work" / "manifest"
    before = {s: json.loads((work / f"sub-{s}.json").read_text()) for s in ("01", "02")}
    sidecar = bids / "sub-02" / "anat" / "sub-02_T1w.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "EchoTime": 0.003}))
    _isyb(str(bids), str(out), "participant", "--quiet", "--skip", "qc")
    after = {s: json.loads((work / f"sub-{s}.json").read_text()) for s in ("01", "02")}
    assert after["01"] == before["01"]
    assert after["02"]["deface"]["finished"] >= before["02"]["deface"]["finished"]
    assert after["02"]["deface"]["digest"] != before["02"]["deface"]["digest"]
    assert after["02"]["scrub"]["digest"] != before["02"]["scrub"]["digest"]


@pytest.fixture(scope="module")
def real(real_release: dict) -> dict:
    """The run's shared release of real scans (conftest ``real_release``): two real T1w heads,
    the real ASL run with a fake name and birth date planted, and a subject whose only T1w is
    corrupt. Read-only."""
    return real_release


def test_real_release_passes_the_bids_validator(real) -> None:
    issues = _validate(real["release"])
    assert issues["errors"] == [], issues["errors"]
    # Documented: the test subjects come from different scanners and only sub-01 has ASL.
    assert {w["key"] for w in issues["warnings"]} <= {"INCONSISTENT_PARAMETERS",
                                                       "INCONSISTENT_SUBJECTS"}


def test_real_asl_sidecar_is_scrubbed_and_keeps_what_cbf_needs(real) -> None:
    sidecar = json.loads((real["release"] / "sub-01/perf/sub-01_asl.json").read_text())
    for key in ("DeviceSerialNumber", "InstitutionAddress", "InstitutionName",
                "AcquisitionTime", "PatientName", "PatientBirthDate"):
        assert key not in sidecar
    for key in CBF_KEYS:
        assert sidecar[key] == real["original_asl"][key]
    report = pd.read_csv(real["release"] / "derivatives/isyb/scrub_report.tsv", sep="\t")
    listed = set(report.loc[report["file"] == "sub-01/perf/sub-01_asl.json", "key"])
    removed = set(real["original_asl"]) - set(sidecar)
    assert removed <= listed
    assert ("sub-01/anat/sub-01_T1w.nii.gz", "descrip") in set(
        zip(report["file"], report["key"], strict=True))


def test_release_derives_cbf_from_the_released_files(real) -> None:
    """The derive step ran on the scrubbed release: CBF of the real pCASL, GM from the T1w.

    The T1w is another person's (myconnectome), so the grey matter brought to
    ASL space by a rigid co-registration is approximate; the release measured
    44.8 ml/100 g/min (brain 42.7).
    """
    record = json.loads((real["release"] / "derivatives/isyb/sub-01/perf/"
                         "sub-01_desc-derive_asl.json").read_text())
    assert record["status"] == "ok" and record["gm_source"].startswith("T1w")
    assert 30.0 < record["cbf_gm_mean"] < 80.0
    assert record["parameters"]["labeling_efficiency"] == 0.72  # kept through the scrubbing
    summary = json.loads((real["release"] / "derivatives/isyb/release_summary.json").read_text())
    assert summary["derive"]["runs"] == 1 and summary["derive"]["failed"] == 0


def test_nothing_forbidden_or_planted_is_left_in_the_release(real) -> None:
    policy = load_policy()
    assert find_leaks(real["bids"], policy, (PLANTED_NAME, PLANTED_DATE))  # planted at input
    assert find_leaks(real["release"], policy, (PLANTED_NAME, PLANTED_DATE, "Curie_Blvd",
                                                "66044")) == []
    # nor the local path of the input (it can name a person or a site)
    local = (str(real["bids"].resolve()), str(real["bids"].parent.resolve()))
    assert find_leaks(real["release"], policy, local) == []


def test_a_corrupt_t1w_fails_alone_and_is_listed(real) -> None:
    participant = real["participant"]
    assert participant.returncode == 1
    assert "sub-03: failed: sub-03/anat/sub-03_T1w.nii.gz" in participant.stderr
    release = real["release"]
    assert not (release / "sub-03" / "anat" / "sub-03_T1w.nii.gz").exists()  # never copied
    assert (release / "sub-01" / "anat" / "sub-01_T1w.nii.gz").is_file()
    summary = json.loads((release / "derivatives/isyb/release_summary.json").read_text())
    assert [f["subject"] for f in summary["deface_failures"]] == ["03"]
    # QC measures the released images; the T1w that failed to deface is not one of them
    assert summary["qc"]["failed"] == 0
    assert not list((release / "derivatives/isyb/sub-03").glob("anat/*_desc-qc_T1w.json"))


def test_pipeline_bad_inputs_are_clear_errors(tmp_path: Path, capsys) -> None:
    from conftest import assert_one_line_error
    from isyb.cli import main

    code = main([str(tmp_path), str(tmp_path / "out"), "participant"])
    assert_one_line_error(code, capsys.readouterr().err, "not a BIDS dataset")
    bids = build_demo_dataset(tmp_path / "bids", n_subjects=1)
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-09\n")
    code = main([str(bids), str(tmp_path / "out"), "participant"])
    assert_one_line_error(code, capsys.readouterr().err, "sub-09", "not in the dataset")
    (bids / "participants.tsv").write_text("participant_id\n")
    code = main([str(bids), str(tmp_path / "out"), "participant"])
    assert_one_line_error(code, capsys.readouterr().err, "lacks", "sub-01")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--work-dir",
                 str(tmp_path / "out" / "work")])
    assert_one_line_error(code, capsys.readouterr().err, "must not be inside OUTPUT_DIR")
    code = main([str(bids), str(tmp_path / "out"), "participant", "--omp-nthreads", "2"])
    assert_one_line_error(code, capsys.readouterr().err, "one thread per task")
    code = main([str(bids), str(bids / "release"), "participant"])
    assert_one_line_error(code, capsys.readouterr().err, "must not be inside the input")


def test_the_release_adds_its_entry_to_the_derivatives_description(tmp_path: Path) -> None:
    """Another isyb command's entry in derivatives/isyb is kept, whichever wrote first."""
    from types import SimpleNamespace

    from isyb.app.dataset_files import write_description
    from isyb.app.release import ReleaseOptions
    from isyb.bids.layout import describe_derivatives

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "lab data", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    out = tmp_path / "release"
    derive = {"Name": "isyb", "Version": "0", "Description": "derived metrics"}
    describe_derivatives(out, bids, name="isyb derived metrics", generated_by=derive)
    template = SimpleNamespace(name="default")  # only its name is written
    write_description(bids, out, template, ReleaseOptions())
    write_description(bids, out, template, ReleaseOptions())  # a rerun replaces its own entry
    derivatives = json.loads((out / "derivatives/isyb/dataset_description.json").read_text())
    assert derivatives["Name"] == "isyb derivatives"
    assert [e["Description"] for e in derivatives["GeneratedBy"]] == [
        "derived metrics", "face masking (template default, method blur), metadata "
        "scrubbing, QC"]
    release = json.loads((out / "dataset_description.json").read_text())
    assert release["Name"] == "lab data" and release["GeneratedBy"][-1]["Name"] == "isyb"


def test_the_real_release_passes_the_gate_with_no_face_in_any_picture(real) -> None:
    """Issue 18: QC pages of the real heads are made from the defaced images, so the gate
    finds no face in any picture of the release (and no image it cannot account for)."""
    gate = json.loads((real["release"] / "derivatives/isyb/release_summary.json")
                      .read_text())["gate"]
    assert gate["passed"], gate["violations"]
    assert gate["checked"]["pictures"] >= 4  # deface QC, index page, QC pages of 2 heads
    assert gate["checked"]["anatomical_renders"] == 2


def test_the_release_carries_no_modification_time_of_the_source(demo) -> None:
    """A source file's modification time can date its scan: no released file keeps it
    (copies get their own), and no released record holds it (the deface records go
    without the stamps that a dataset deface resumes from)."""
    source = {p.stat().st_mtime_ns for p in demo["bids"].rglob("*") if p.is_file()}
    released = [p for p in demo["release"].rglob("*") if p.is_file()]
    assert [p for p in released if p.stat().st_mtime_ns in source] == []

    def numbers(value) -> list[int]:
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        if isinstance(value, list):
            return [n for v in value for n in numbers(v)]
        return [value] if isinstance(value, int) else []

    recorded = {n for p in released if p.suffix == ".json"
                for n in numbers(json.loads(p.read_text()))}
    assert recorded & source == set()
    logs = sorted((demo["release"] / "derivatives/isyb/logs").glob("sub-*.json"))
    assert logs and all("input" not in json.loads(p.read_text()) for p in logs)
