"""The face detector on pictures, and the release gate on small hand-made releases.

Ground truth comes from a synthetic phantom: its QC figure (a front render and three
slices) shows a face; the same figure of the phantom with everything in front of
its ears zeroed does not.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.app.gate import allowed_copies, run_gate
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.templates.fetch import sha256_file as sha256
from isyb.viz.faces import embedded_pictures, picture_faces
from isyb.viz.render import qc_figure


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """QC figures of a phantom with its face and without (everything anterior zeroed)."""
    root = tmp_path_factory.mktemp("figures")
    phantom = make_phantom(voxel_size=2.0, seed=1)
    data = np.asarray(phantom.image, dtype=np.float32)
    zooms = (2.0, 2.0, 2.0)
    faceless = data.copy()
    faceless[:, data.shape[1] // 2 + 10:, :] = 0.0  # anterior of the ears, in RAS order
    qc_figure(data, zooms, root / "face.png", title="phantom")
    qc_figure(faceless, zooms, root / "faceless.png", title="phantom")
    nib_image = to_nifti(phantom)
    nib_image.to_filename(root / "head.nii.gz")
    return {"face": root / "face.png", "faceless": root / "faceless.png",
            "head": root / "head.nii.gz"}


def test_a_face_picture_is_found_and_a_faceless_one_is_not(figures) -> None:
    assert picture_faces(figures["face"].read_bytes())
    assert picture_faces(figures["faceless"].read_bytes()) == []


def test_pictures_embedded_in_html_are_decoded(figures) -> None:
    png = figures["face"].read_bytes()
    html = (b"<html><img src='data:image/png;base64," + base64.b64encode(png) +
            b"'><img src=\"data:image/jpeg;base64,!!!\"></html>")
    assert embedded_pictures(html) == [png]
    assert picture_faces(b"not a picture") is None


def test_copies_are_what_the_release_policy_allows_by_place_name_and_content(
        tmp_path: Path, figures) -> None:
    head = nib.load(figures["head"])
    series = nib.Nifti1Image(np.stack([np.asarray(head.dataobj)] * 3, axis=-1), head.affine)
    four_d = {"sub-01/func/sub-01_task-rest_bold.nii.gz",
              "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz",
              "sub-01/perf/sub-01_asl.nii.gz", "sub-01/func/old/sub-01_task-rest_bold.nii.gz"}
    three_d = {"sub-01/anat/sub-01_T1w.nii.gz", "sub-01/sub-01_T1w.nii.gz",
               "sub-01/func/sub-01_task-x_bold.nii.gz"}  # a head under a BOLD name
    for name in four_d | three_d:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        if name in four_d:
            series.to_filename(tmp_path / name)
        else:
            shutil.copyfile(figures["head"], tmp_path / name)
    assert allowed_copies(tmp_path) == {"sub-01/func/sub-01_task-rest_bold.nii.gz",
                                        "sub-01/ses-1/dwi/sub-01_ses-1_dwi.nii.gz",
                                        "sub-01/perf/sub-01_asl.nii.gz"}


def _release(root: Path, head: Path) -> tuple[Path, dict[str, str]]:
    """A hand-made release: one defaced T1w (its record says the guard passed) and a BOLD copy."""
    t1w = root / "sub-01/anat/sub-01_T1w.nii.gz"
    bold = root / "sub-01/func/sub-01_task-rest_bold.nii.gz"
    for path in (t1w, bold):
        path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(head, t1w)
    image = nib.load(head)
    nib.Nifti1Image(np.stack([np.asarray(image.dataobj)] * 3, axis=-1),
                    image.affine).to_filename(bold)
    record = {"subject": "01", "images": [{
        "file": "sub-01/anat/sub-01_T1w.nii.gz", "status": "ok",
        "provenance": {"brain_guard": {"passed": True, "changed_voxels_in_guard": 0}}}]}
    logs = root / "derivatives/isyb/logs"
    logs.mkdir(parents=True)
    (logs / "sub-01.json").write_text(json.dumps(record))
    return root, {"sub-01/anat/sub-01_T1w.nii.gz": sha256(t1w)}


def test_gate_passes_a_clean_release_and_names_each_violation(tmp_path: Path, figures) -> None:
    out, recorded = _release(tmp_path / "release", figures["head"])
    report = run_gate(out, recorded, render_faces=False)
    assert report.passed, report.violations
    assert report.checked["images"] == 2

    shutil.copyfile(figures["face"], out / "derivatives/isyb/planted.png")
    (out / "derivatives/isyb/page.html").write_bytes(
        b"<img src='data:image/png;base64," + base64.b64encode(figures["face"].read_bytes())
        + b"'>")
    (out / "derivatives/isyb/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    shutil.copyfile(figures["head"], out / "sub-01/anat/sub-01_acq-slipped_T1w.nii.gz")
    shutil.copyfile(figures["head"], out / "derivatives/isyb/sub-01_T1w.nii.gz")
    (out / "sub-01/anat/sub-01_T1w.nii.gz").write_bytes(b"changed after it was recorded")
    report = run_gate(out, recorded, render_faces=False)
    assert not report.passed
    assert {v["file"] for v in report.violations} == {
        "derivatives/isyb/planted.png", "derivatives/isyb/page.html",
        "derivatives/isyb/broken.jpg", "sub-01/anat/sub-01_acq-slipped_T1w.nii.gz",
        "derivatives/isyb/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.nii.gz"}


def test_a_face_on_a_render_is_for_review_and_fails_only_when_strict(tmp_path: Path,
                                                                     figures) -> None:
    out, recorded = _release(tmp_path / "release", figures["head"])  # the "defaced" T1w has a face
    report = run_gate(out, recorded)
    assert report.passed
    assert [r["file"] for r in report.review] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    strict = run_gate(out, recorded, strict=True)
    assert [v["file"] for v in strict.violations] == ["sub-01/anat/sub-01_T1w.nii.gz"]


def test_skip_deface_releases_are_listed_for_review_not_passed_silently(tmp_path: Path,
                                                                        figures) -> None:
    out, _ = _release(tmp_path / "release", figures["head"])
    (out / "derivatives/isyb/logs/sub-01.json").unlink()  # --skip deface writes no record
    refused = run_gate(out, {}, render_faces=False)
    assert [v["file"] for v in refused.violations] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    claimed = run_gate(out, {}, render_faces=False, predefaced=["01"])
    assert claimed.passed, claimed.violations
    assert [r["file"] for r in claimed.review] == ["sub-01/anat/sub-01_T1w.nii.gz"]
    shutil.copyfile(figures["head"], out / "sub-01/anat/old_T1w.nii.gz")  # not a BIDS name
    assert not run_gate(out, {}, render_faces=False, predefaced=["01"]).passed
