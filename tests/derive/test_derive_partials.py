"""``isyb derive`` and the temporary files a killed run leaves (``.<name>.<random>.part<ext>``,
from :func:`isyb.io.atomic_path`): the group level never reads them, the participant level
removes its subjects' own. Records are planted; no metric is computed."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.cli import main

DERIV = Path("derivatives") / "isyb"


def _record(label: str, modality: str) -> str:
    return json.dumps({"bids_name": f"{label}_{modality}", "participant_id": label,
                       "modality": modality, "status": "ok", "source": f"{label}/{modality}"})


def test_the_group_level_reads_no_partial_record(tmp_path: Path, capsys) -> None:
    """A complete partial copy of a record would count its run twice, an empty one was a
    JSONDecodeError traceback; a partial group table from a killed group run is removed."""
    out = tmp_path / "out"
    dwi, func = out / DERIV / "sub-01" / "dwi", out / DERIV / "sub-02" / "func"
    dwi.mkdir(parents=True)
    func.mkdir(parents=True)
    (dwi / "sub-01_desc-derive_dwi.json").write_text(_record("sub-01", "dwi"))
    (dwi / ".sub-01_desc-derive_dwi.json.k3j2x9.part.json").write_text(_record("sub-01", "dwi"))
    (func / "sub-02_task-rest_desc-derive_bold.json").write_text(_record("sub-02", "bold"))
    (func / ".sub-02_task-rest_desc-derive_bold.json.ab12cd.part.json").write_text("")
    group = out / DERIV / "group"
    group.mkdir()
    stale = group / ".group_derive.tsv.x1y2z3.part.tsv"
    stale.write_text("half")
    assert main(["derive", str(tmp_path / "bids"), str(out), "group", "--metrics", "alff"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"] == 2
    assert len((group / "group_derive.tsv").read_text().splitlines()) == 3
    assert not stale.exists()
    assert (dwi / ".sub-01_desc-derive_dwi.json.k3j2x9.part.json").exists()  # not the group's


def test_the_participant_level_removes_only_its_subjects_partials(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from isyb.derive.dataset import derive_participants

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.9.0"}')
    for label in ("sub-01", "sub-02"):
        (bids / label / "func").mkdir(parents=True)
        nib.Nifti1Image(np.ones((4, 4, 4, 6), np.float32), np.eye(4)).to_filename(
            str(bids / label / "func" / f"{label}_task-rest_bold.nii.gz"))
    monkeypatch.setattr("isyb.derive.dataset.load_template", lambda options: None)
    monkeypatch.setattr("isyb.derive.dataset.run_tasks", lambda *args, **kwargs: iter(()))
    out = tmp_path / "out"
    partials = {label: out / DERIV / label / "func" / f".{label}_task-rest_desc-alff_map"
                ".nii.gz.q9w8e7.part.nii.gz" for label in ("sub-01", "sub-02")}
    for path in partials.values():
        path.parent.mkdir(parents=True)
        path.write_bytes(b"half")
    finished = out / DERIV / "sub-01" / "func" / "sub-01_task-rest_desc-derive_bold.json"
    finished.write_text(_record("sub-01", "bold"))
    derive_participants(bids, out, labels=["01"], progress=False)
    assert not partials["sub-01"].exists()
    assert partials["sub-02"].exists()  # another subject's run may be writing it
    assert finished.exists()
