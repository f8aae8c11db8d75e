"""Single-volume references with a face (a field-map magnitude, an sbref that is a whole
head) are withheld from the release, not copied as they are (isyb.app.references).

A phantom head, the demo's T1w, is saved as ``fmap/sub-01_magnitude1.nii.gz`` and as
``func/sub-01_task-rest_sbref.nii.gz``; a smooth blob with no face as an m0scan field map
must still be released. ``--skip deface qc derive`` keeps the run to seconds: the check
runs after the deface step whichever way it copied the subject's files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from conftest import run_cli
from isyb.app.gate import run_gate
from isyb.app.references import FACE, UNCHECKED, face_check
from isyb.synthetic.demo import build_demo_dataset

CHEAP = ["--skip", "deface", "qc", "derive", "--quiet"]
MAGNITUDE = "sub-01/fmap/sub-01_magnitude1.nii.gz"
SBREF = "sub-01/func/sub-01_task-rest_sbref.nii.gz"
BLOB = "sub-01/fmap/sub-01_m0scan.nii.gz"


def _blob() -> nib.Nifti1Image:
    """A smooth 3-mm ellipsoid (a brain-like reference without a face)."""
    grid = np.indices((48, 56, 44)).astype(float)
    centre = np.array([24, 28, 22])[:, None, None, None]
    radii = np.array([18, 22, 16])[:, None, None, None]
    inside = (((grid - centre) / radii) ** 2).sum(axis=0) <= 1
    data = ndimage.gaussian_filter(inside * 800.0, 1.5) + 5.0
    return nib.Nifti1Image(data.astype(np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory, default_template) -> dict:
    root = tmp_path_factory.mktemp("references")
    bids = build_demo_dataset(root / "bids", n_subjects=1)
    head = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    for name in (MAGNITUDE, SBREF):
        (bids / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(head, bids / name)
        (bids / name.replace(".nii.gz", ".json")).write_text(json.dumps({"EchoTime": 0.005}))
    _blob().to_filename(str(bids / BLOB))
    (bids / "sub-01/sub-01_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_T1w.nii.gz\tn/a\n"
        "fmap/sub-01_magnitude1.nii.gz\tn/a\nfunc/sub-01_task-rest_sbref.nii.gz\tn/a\n"
        "fmap/sub-01_m0scan.nii.gz\tn/a\n")
    out, work = root / "release", root / "release_work"
    runs = [run_cli(bids, out, level, *CHEAP) for level in ("participant", "group")]
    return {"bids": bids, "out": out, "work": work, "runs": runs,
            "summary": json.loads((out / "derivatives/isyb/release_summary.json").read_text())}


def test_a_reference_with_a_face_is_withheld_with_its_sidecar_and_scans_row(released) -> None:
    out = released["out"]
    assert [r.returncode for r in released["runs"]] == [0, 0], released["runs"][-1].stderr
    for name in (MAGNITUDE, SBREF):
        assert not (out / name).exists(), name
        assert not (out / name.replace(".nii.gz", ".json")).exists(), name
    assert (out / BLOB).is_file()  # no face: released as it is
    scans = (out / "sub-01/sub-01_scans.tsv").read_text()
    assert "magnitude1" not in scans and "sbref" not in scans and "m0scan" in scans


def test_the_withheld_references_are_listed_and_counted(released) -> None:
    rows = (released["work"] / "withheld.tsv").read_text().splitlines()
    assert f"{MAGNITUDE}\t{FACE}" in rows and f"{SBREF}\t{FACE}" in rows
    summary = released["summary"]
    assert summary["withheld"][FACE] == 2
    assert summary["complete"] is True, summary["gate"]
    assert summary["gate"]["checked"]["reference_renders"] == 1  # the blob


def test_the_gate_fails_a_reference_with_a_face_slipped_into_the_release(
        released, tmp_path: Path) -> None:
    out = tmp_path / "release"
    shutil.copytree(released["out"], out)
    shutil.copyfile(released["bids"] / "sub-01/anat/sub-01_T1w.nii.gz", out / MAGNITUDE)
    gate = run_gate(out, {}, predefaced=["01"])
    assert {v["file"]: v["reason"] for v in gate.violations} == {MAGNITUDE: FACE}
    assert not gate.passed


def test_a_reference_that_cannot_be_read_counts_as_unchecked(tmp_path: Path) -> None:
    broken = tmp_path / "sub-01_magnitude1.nii.gz"
    broken.write_bytes(b"\x1f\x8b not really gzip")
    assert face_check(broken) == UNCHECKED
    path = tmp_path / "blob.nii.gz"
    _blob().to_filename(str(path))
    assert face_check(path) is None
