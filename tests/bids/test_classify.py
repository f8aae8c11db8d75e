"""Deny-by-default classification of a BIDS dataset (:mod:`isyb.bids.classify`).

A tiny dataset (16-voxel images, no defacing) with one planted entry per case;
each case names the expected kind and, for a withheld entry, its reason.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.bids.classify import (
    classify_dataset,
    classify_subject,
    default_release_policy_path,
    filter_scans,
    load_release_policy,
    sniff,
    split_name,
    withheld_counts,
    withheld_tsv,
)
from isyb.errors import IsybError


def nifti(path: Path, shape: tuple[int, ...] = (16, 16, 16)) -> None:
    """A small NIfTI-1 image at ``path``, gzipped when the name says ``.gz`` (any case)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape)
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if ".gz" in path.name.lower() else raw)


def text(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "bids"
    text(root / "dataset_description.json", '{"Name": "t", "BIDSVersion": "1.9.0"}')
    text(root / "participants.tsv", "participant_id\nsub-01\n")
    text(root / "README", "tiny\n")
    text(root / "task-rest_bold.json", '{"TaskName": "rest"}')
    anat, func = root / "sub-01" / "anat", root / "sub-01" / "func"
    nifti(anat / "sub-01_T1w.nii.gz")
    text(anat / "sub-01_T1w.json", "{}")
    nifti(func / "sub-01_task-rest_bold.nii.gz", (8, 8, 8, 3))
    text(func / "sub-01_task-rest_bold.json", '{"RepetitionTime": 2}')
    text(func / "sub-01_task-rest_events.tsv", "onset\tduration\n0\t1\n")
    text(root / "sub-01" / "sub-01_scans.tsv", "filename\nanat/sub-01_T1w.nii.gz\n")
    return root


#: (relative path, how it is planted, expected kind, reason fragment)
CASES = [
    ("sub-01/anat/sub-01_T1w.nii.gz", None, "deface", ""),
    ("sub-01/anat/sub-01_T1w.json", None, "copy", ""),
    ("sub-01/func/sub-01_task-rest_bold.nii.gz", None, "copy", ""),
    ("sub-01/func/sub-01_task-rest_events.tsv", None, "copy", ""),
    ("sub-01/sub-01_scans.tsv", None, "copy", ""),
    ("task-rest_bold.json", None, "top", ""),
    ("participants.tsv", None, "top", ""),
    ("sub-01/anat/sub-01_T1w.nii.gz.orig", "head", "withheld", "backup copy"),
    ("sub-01/anat/sub-01_T1w.nii.gz~", "head", "withheld", "backup copy"),
    ("sub-01/anat/old/sub-01_T1w.nii.gz", "head", "withheld", "backup copy"),
    ("sub-01/anat/extra/sub-01_T1w.nii.gz", "head", "withheld", "subfolder"),
    ("sub-01/sub-01_T1w.nii.gz", "head", "withheld", "outside a datatype folder"),
    ("sub-01_T1w.nii.gz", "head", "withheld", "outside a datatype folder"),
    ("sub-01/func/sub-01_T1w.nii.gz", "head", "withheld", "suffix T1w not allowed in func/"),
    ("sub-01/func/sub-01_task-x_bold.nii.gz", "head", "withheld", "single 3-D volume"),
    ("sub-01/fmap/sub-01_magnitude1.nii.gz", "head", "copy", ""),
    ("sub-01/anat/sub-01_UNIT1.nii.gz", "head", "withheld", "suffix UNIT1 not allowed"),
    ("sourcedata/sub-01/anat/sub-01_T1w.nii.gz", "head", "withheld", "sourcedata/"),
    ("derivatives/x/sub-01/anat/sub-01_T1w.nii.gz", "head", "withheld", "derivatives/"),
    ("sub-01/.hidden/sub-01_T1w.nii.gz", "head", "withheld", "hidden"),
    ("sub-01/anat/sub-01_acq-up_T1w.NII.GZ", "head", "deface", ""),
    ("sub-01/anat/sub-01_acq-x_T1w.json", "json", "withheld", "without its image"),
    ("sub-01/anat/sub-01_notes.txt", "head", "withheld", "image content under a non-image"),
    ("sub-01/anat/sub-01_acq-fake_T1w.nii.gz", "text", "withheld", "not a NIfTI image"),
    ("sub-01/anat/sub-01_acq-huge_T1w.json", "huge", "withheld", "sidecar larger than"),
    ("sub-01/anat/sub-01_acq-bad_T1w.json", "badjson", "withheld", "not a JSON object"),
    ("sub-01/anat/sub-01_T1w.dcm", "dicom", "withheld", "DICOM file"),
    ("sub-01/anat/sub-02_T1w.nii.gz", "head", "withheld", "does not start with sub-01_"),
    ("sub-01/ANAT/sub-01_T1w.nii.gz", "head", "withheld", "datatype folder ANAT/"),
    ("code/convert.py", "text", "withheld", "folder code/ not in the release policy"),
    ("notes.txt", "text", "withheld", "not in the release policy"),
    ("sub-01/anat/sub-01_T2w.nii.gz", "outside", "withheld", "outside the dataset"),
    ("sub-01/anat/sub-01_acq-in_T1w.nii.gz", "inside", "deface", ""),
    ("sub-01/anat/sub-01_acq-gone_T1w.nii.gz", "broken", "withheld", "broken symlink"),
    ("sub-01/dirlink", "dirlink", "withheld", "symlink to a folder"),
    ("sub-01/anat/sub-01_acq-ign_T1w.nii.gz", "ignored", "withheld", ".bidsignore"),
    ("sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "head", "deface", ""),
    ("sub-01/ses-1/anat/sub-01_T1w.nii.gz", "head", "withheld", "start with sub-01_ses-1_"),
    ("sub-01/ses-1/sub-01_ses-1_scans.tsv", "text", "copy", ""),
    ("sub-01/ses-1/sub-01_ses-1_T1w.nii.gz", "head", "withheld", "outside a datatype folder"),
    # What the scrub could not read as other readers do: withheld, not copied as it is.
    ("sub-01/func/sub-01_task-rest_events.tsv", "ragged", "withheld", "as many fields"),
    ("sub-01/func/sub-01_task-rest_physio.tsv.gz", "numbers", "copy", ""),
    ("sub-01/func/sub-01_task-rest_stim.tsv.gz", "wordsgz", "withheld", "more than numbers"),
    ("sub-01/func/sub-01_task-rest_physio.tsv.gz", "nangz", "copy", ""),
    ("sub-01/func/sub-01_task-rest_recording-bad_physio.tsv.gz", "badgz", "withheld",
     "more than numbers"),
    ("sub-01/anat/sub-01_T1w.json", "dupjson", "withheld", "names a key twice"),
    ("task-rest_bold.json", "dupjson", "withheld", "names a key twice"),
    ("participants.json", "listjson", "withheld", "not a JSON object"),
]


def plant(root: Path, relative: str, how: str | None) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "head":
        nifti(path)
    elif how == "json":
        text(path, "{}")
    elif how == "text":
        text(path, "just text\n")
    elif how == "huge":
        text(path, json.dumps({"Blob": "x" * (2 << 20)}))
    elif how == "badjson":
        text(path, "[1, 2")
    elif how == "ragged":  # pandas would take the name for a row label, outside any column
        text(path, "onset\tduration\nHallie Brookhurst\t0\t1\n")
    elif how in ("numbers", "wordsgz"):
        rows = "0.5\t1\tn/a\n1.5\t-2e3\t3\n" + ("called Hallie\t0\t0\n" if how == "wordsgz"
                                                 else "")
        path.write_bytes(gzip.compress(rows.encode()))
    elif how == "nangz":  # a dropped sample, and a tab at the end of a row
        path.write_bytes(gzip.compress(b"0.5\tnan\t\n1.5\t2\t\n"))
    elif how == "badgz":  # a damaged block
        data = bytearray(gzip.compress(b"0.5\t1\n" * 1000))
        data[20:30] = b"\xff" * 10
        path.write_bytes(bytes(data))
    elif how == "dupjson":
        text(path, '{"SeriesDescription": "Ottoline Whitcombe", "SeriesDescription": "rest"}')
    elif how == "listjson":
        text(path, '["Ottoline Whitcombe"]')
    elif how == "dicom":
        path.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 200)
    elif how == "outside":
        nifti(root.parent / "outside_T1w.nii.gz")
        path.symlink_to(root.parent / "outside_T1w.nii.gz")
    elif how == "inside":
        path.symlink_to("sub-01_T1w.nii.gz")
    elif how == "broken":
        path.symlink_to("nowhere.nii.gz")
    elif how == "dirlink":
        path.symlink_to("anat")
    elif how == "ignored":
        nifti(path)
        text(root / ".bidsignore", "# comment\n*_acq-ign_*\n")


@pytest.mark.parametrize(("relative", "how", "kind", "reason"), CASES,
                         ids=[f"{c[0]}:{c[1]}" for c in CASES])
def test_each_case(dataset: Path, relative: str, how: str | None, kind: str,
                   reason: str) -> None:
    if how is not None:
        plant(dataset, relative, how)
    items = {i.relative: i for i in classify_dataset(dataset, load_release_policy())}
    item = items[relative]
    assert (item.kind, reason in item.reason) == (kind, True), item
    if kind == "withheld":
        assert f"{relative}\t{item.reason}" in withheld_tsv(list(items.values()))
        assert item.output == ""


def test_default_dataset_has_nothing_withheld(dataset: Path) -> None:
    items = classify_dataset(dataset, load_release_policy())
    assert withheld_counts(items) == {}
    assert withheld_tsv(items) == "path\treason\n"


def test_upper_case_extension_is_released_lower_case(dataset: Path) -> None:
    plant(dataset, "sub-01/anat/sub-01_acq-up_T1w.NII.GZ", "head")
    item = next(i for i in classify_subject(dataset, "01", load_release_policy())
                if "acq-up" in i.relative)
    assert item.output == "sub-01/anat/sub-01_acq-up_T1w.nii.gz"
    assert split_name("a_T1w.Nii.Gz") == ("a_T1w", ".nii.gz")


def test_same_name_but_extension_case_is_withheld(dataset: Path) -> None:
    plant(dataset, "sub-01/anat/sub-01_T1w.NII.GZ", "head")
    items = {i.relative: i for i in classify_subject(dataset, "01", load_release_policy())}
    assert items["sub-01/anat/sub-01_T1w.nii.gz"].kind == "deface"
    assert "extension's case" in items["sub-01/anat/sub-01_T1w.NII.GZ"].reason


def test_nothing_is_read_through_an_outside_link(dataset: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    plant(dataset, "sub-01/anat/sub-01_T2w.nii.gz", "outside")
    outside = (dataset.parent / "outside_T1w.nii.gz").resolve()
    opened = []
    real_open = open

    def spy(file, *args, **kwargs):
        opened.append(Path(os.fspath(file)).resolve())
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    classify_dataset(dataset, load_release_policy())
    assert opened and outside not in opened


def test_policy_can_allow_more(dataset: Path, tmp_path: Path) -> None:
    plant(dataset, "code/convert.py", "text")
    plant(dataset, "sub-01/anat/sub-01_UNIT1.nii.gz", "head")
    plant(dataset, "code/head.nii.gz", "head")
    raw = json.loads(default_release_policy_path().read_text())
    raw["allow"] = ["code/*"]
    raw["deface"].append("UNIT1")
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(raw))
    items = {i.relative: i for i in classify_dataset(dataset, load_release_policy(path))}
    assert items["code/convert.py"].kind == "top"
    assert items["sub-01/anat/sub-01_UNIT1.nii.gz"].kind == "deface"
    assert items["code/head.nii.gz"].kind == "withheld"  # images are never allowed by path


@pytest.mark.parametrize("content", ["{", '{"deface": []}', '{"deface": [], "datatypes": {}, '
                                     '"extensions": {"image": ["nii"], "other": []}, '
                                     '"top_level": []}'])
def test_bad_policy_is_one_line_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "policy.json"
    path.write_text(content)
    with pytest.raises(IsybError) as error:
        load_release_policy(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_sniff_sees_through_names(tmp_path: Path) -> None:
    nifti(tmp_path / "a.json")
    image = nib.MGHImage(np.zeros((4, 4, 4), np.float32), np.eye(4))
    image.to_filename(str(tmp_path / "b.mgz"))
    (tmp_path / "b.mgz").rename(tmp_path / "b.tsv")
    (tmp_path / "c.tsv").write_text("onset\n1\n")
    assert [sniff(tmp_path / n) for n in ("a.json", "b.tsv", "c.tsv")] == [
        "nifti1", "mgh", None]


def test_scans_table_keeps_only_rows_of_released_files() -> None:
    text = ("filename\tacq_time\nanat/sub-01_T1w.nii.gz\t2020-01-01T10:00:00\n"
            "anat/sub-01_acq-up_T1w.NII.GZ\tn/a\nanat/sub-01_T1w.nii.gz.orig\tn/a\n"
            "func/sub-01_task-rest_bold.nii.gz\tn/a\n")
    outputs = {"sub-01/anat/sub-01_T1w.nii.gz": "sub-01/anat/sub-01_T1w.nii.gz",
               "sub-01/anat/sub-01_acq-up_T1w.NII.GZ": "sub-01/anat/sub-01_acq-up_T1w.nii.gz"}
    assert filter_scans(text, "sub-01", outputs) == (
        "filename\tacq_time\nanat/sub-01_T1w.nii.gz\t2020-01-01T10:00:00\n"
        "anat/sub-01_acq-up_T1w.nii.gz\tn/a\n")
    assert filter_scans("a\tb\n1\t2\n", "sub-01", outputs) == "a\tb\n1\t2\n"


def test_temporary_names_do_not_depend_on_extension_case(tmp_path: Path) -> None:
    """nibabel picks the format from the temporary name: ``.NII.GZ`` must still work."""
    from isyb.io import atomic_path

    image = nib.Nifti1Image(np.ones((4, 4, 4), np.int16), np.eye(4))
    for name in ("a_T1w.NII.GZ", "b_T1w.nii.gz", "c_T1w.NII"):
        with atomic_path(tmp_path / name) as tmp:
            assert tmp.name.endswith(".part.nii.gz" if "gz" in name.lower() else ".part.nii")
            image.to_filename(str(tmp))
        assert nib.load(str(tmp_path / name)).shape == (4, 4, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_T1w.NII.GZ", "b_T1w.nii.gz",
                                                          "c_T1w.NII"]


@pytest.mark.parametrize(("source", "stem"), [
    ("sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_desc-deface"),
    ("sub-01/anat/sub-01_T2w.nii.gz", "sub-01/anat/sub-01_desc-defaceT2w"),
    ("sub-01/ses-1/anat/sub-01_ses-1_acq-mp_run-2_T1w.nii.gz",
     "sub-01/ses-1/anat/sub-01_ses-1_acq-mp_run-2_desc-deface"),
])
def test_deface_derivative_names_follow_bids_derivatives(source: str, stem: str) -> None:
    """Source entities, then desc-<label>; T1w and T2w of one subject never collide."""
    from isyb.bids.layout import BIDSFile
    from isyb.deface.dataset import deface_stem

    out = Path("/out")
    item = BIDSFile(out / source, Path(source), "01")
    assert deface_stem(out, item) == out / "derivatives" / "isyb" / stem
