"""The release gate at the end of the group level, on a real (phantom) release.

One subject of the demo dataset with every modality, released once per test run (conftest
``modalities_release``, shared with the validators; derive left out: it writes no pictures
of the head). Each test works on a copy of that release, plants something, and runs the
group level again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from isyb.app.release import ReleaseOptions, release_group
from isyb.cli import main
from isyb.io import load_volume
from isyb.viz.render import qc_figure

pytestmark = pytest.mark.slow
OPTIONS = ReleaseOptions(skip=frozenset({"derive"}))


@pytest.fixture(scope="module")
def released(modalities_release: dict[str, Path], default_template) -> dict:
    """The run's shared 1-subject release with every demo modality (conftest
    ``modalities_release``, derive left out: it writes no pictures of the head)."""
    out = modalities_release["release"]
    summary = json.loads((out / "derivatives/isyb/release_summary.json").read_text())
    return {**modalities_release, "out": out, "summary": summary, "template": default_template}


def _copy(released: dict, root: Path) -> tuple[Path, Path]:
    """A copy of the shared release and its work folder in ``root`` (the test's own)."""
    out, work = root / "release", root / "release_work"
    shutil.copytree(released["out"], out)
    shutil.copytree(released["work"], work)
    return out, work


def test_the_demo_release_passes_and_holds_no_picture_with_a_face(released) -> None:
    summary = released["summary"]
    gate = summary["gate"]
    assert summary["complete"] is True, gate
    assert gate["violations"] == [] and gate["review"] == []
    # the deface QC PNG, its copy in index.html and the QC page's figures
    assert gate["checked"]["pictures"] >= 3
    assert gate["checked"]["anatomical_renders"] == 1
    written = json.loads((released["out"] / "derivatives/isyb/release_summary.json").read_text())
    assert written["complete"] is True


def test_qc_measures_the_released_image(released) -> None:
    out = released["out"]
    record = json.loads((out / "derivatives/isyb/sub-01/anat/sub-01_desc-qc_T1w.json")
                        .read_text())
    assert record["input"]["size"] == (out / "sub-01/anat/sub-01_T1w.nii.gz").stat().st_size
    assert record["input"]["size"] != (released["bids"] / "sub-01/anat/sub-01_T1w.nii.gz"
                                       ).stat().st_size


def test_a_face_picture_planted_in_the_derivatives_fails_the_group_level(
        released, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out, work = _copy(released, tmp_path)
    raw = load_volume(released["bids"] / "sub-01/anat/sub-01_T1w.nii.gz")
    qc_figure(raw.data, raw.zooms, out / "derivatives/isyb/sub-01/anat/sub-01_face.png")
    code = main([str(released["bids"]), str(out), "group", "--work-dir", str(work)])
    err = capsys.readouterr().err
    assert code == 1
    assert "derivatives/isyb/sub-01/anat/sub-01_face.png" in err
    summary = json.loads((out / "derivatives/isyb/release_summary.json").read_text())
    assert summary["complete"] is False
    assert [v["file"] for v in summary["gate"]["violations"]] == [
        "derivatives/isyb/sub-01/anat/sub-01_face.png"]


def test_an_undefaced_head_slipped_into_the_release_is_refused(released, tmp_path: Path) -> None:
    out, work = _copy(released, tmp_path)
    raw = released["bids"] / "sub-01/anat/sub-01_T1w.nii.gz"
    shutil.copyfile(raw, out / "sub-01/anat/sub-01_acq-old_T1w.nii.gz")
    shutil.copyfile(raw, out / "sub-01/anat/sub-01_T1w.nii.gz")  # over the defaced one
    summary = release_group(released["bids"], out, work, released["template"], OPTIONS)
    assert summary["complete"] is False
    assert {v["file"] for v in summary["gate"]["violations"]} == {
        "sub-01/anat/sub-01_acq-old_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz"}
    assert {r["file"] for r in summary["gate"]["review"]} == {  # the detector sees both faces
        "sub-01/anat/sub-01_acq-old_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz"}
