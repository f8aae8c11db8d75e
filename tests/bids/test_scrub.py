"""Metadata scrubbing: sidecars, NIfTI headers, scans.tsv, and the leak scan."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from isyb.bids.scrub import (
    find_leaks,
    load_policy,
    scrub_in_place,
    scrub_sidecar,
    shift_value,
    subject_offset,
)
from isyb.errors import IsybError

FORBIDDEN = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
             "PatientWeight", "AcquisitionTime", "StudyTime", "SeriesTime", "ContentTime",
             "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
             "DeviceSerialNumber", "StationName", "ReferringPhysicianName",
             "PerformingPhysicianName", "OperatorsName", "ImageComments", "StudyInstanceUID",
             "SeriesInstanceUID")
SHIFTED = ("AcquisitionDateTime", "AcquisitionDate", "StudyDate", "SeriesDate", "ContentDate")
CBF_KEYS = ("PostLabelingDelay", "LabelingDuration", "M0Type", "RepetitionTimePreparation",
            "ArterialSpinLabelingType", "BackgroundSuppression", "LabelingEfficiency",
            "PCASLType", "MagneticFieldStrength", "VascularCrushing")


def test_default_policy_drops_or_shifts_every_listed_key() -> None:
    policy = load_policy()
    assert all(policy.action(key) == "drop" for key in FORBIDDEN)
    assert all(policy.action(key) == "shift" for key in SHIFTED)
    assert all(policy.action(key) == "keep" for key in (*CBF_KEYS, "RepetitionTime",
                                                        "SliceTiming", "PatientPosition"))
    # dcm2niix's private and free-text keys
    assert all(policy.action(key) == "drop" for key in (
        "CSASeriesHeaderInfo", "PrivateTag0019_10xx", "ProcedureStepDescription",
        "WipMemBlock", "PatientComments"))


def test_real_asl_sidecar_loses_identifiers_and_keeps_cbf_keys(data_root: Path) -> None:
    metadata = json.loads((data_root / "asl" / "perf" / "sub-01_asl.json").read_text())
    assert {"DeviceSerialNumber", "InstitutionAddress", "InstitutionName",
            "AcquisitionTime"} <= set(metadata)
    policy = load_policy()
    offset = subject_offset(b"secret", "sub-01", policy.shift_days)
    clean, changes = scrub_sidecar(metadata, policy, offset, "sub-01/perf/sub-01_asl.json")
    for key in ("DeviceSerialNumber", "InstitutionAddress", "InstitutionName",
                "AcquisitionTime"):
        assert key not in clean
    for key in CBF_KEYS:
        if key in metadata:
            assert clean[key] == metadata[key], key
    keys = {c.key for c in changes}
    assert {k for k in keys if "/" not in k} == set(metadata) - set(clean)
    # the DICOM header kept under global/const is not an acquisition parameter: dropped whole
    assert "global" in keys and "global" not in clean
    assert all(c.action in ("drop", "redact") for c in changes)


def test_shift_keeps_intervals_within_a_subject_and_differs_between_subjects() -> None:
    policy = load_policy()
    one = subject_offset(b"k", "sub-01", policy.shift_days)
    assert one == subject_offset(b"k", "sub-01", policy.shift_days)  # reproducible
    assert one != subject_offset(b"k", "sub-02", policy.shift_days)
    assert one != subject_offset(b"other key", "sub-01", policy.shift_days)
    assert policy.shift_days[0] <= one.days <= policy.shift_days[1]
    a = dt.datetime.fromisoformat(shift_value("2019-03-04T11:28:04", one))
    b = dt.datetime.fromisoformat(shift_value("2019-03-06T09:00:00", one))
    assert b - a == dt.datetime(2019, 3, 6, 9) - dt.datetime(2019, 3, 4, 11, 28, 4)
    assert shift_value("2019-03-04", dt.timedelta(days=-10, seconds=3600)) == "2019-02-22"
    assert shift_value("20190304", dt.timedelta(days=-10)) == "20190222"
    assert shift_value("23:30:00.5", dt.timedelta(days=-1, seconds=3600)) == "00:30:00.5"
    assert shift_value("not a date", one) is None
    assert shift_value(17, one) is None


def test_bad_policy_files_are_clear_errors(tmp_path: Path) -> None:
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"fields": {"PatientName": "keep"}}))  # an old deny-list
    with pytest.raises(IsybError, match="not a version 2"):
        load_policy(bad)
    bad.write_text(json.dumps({"version": 2, "keep": "RepetitionTime"}))
    with pytest.raises(IsybError, match="must be lists"):
        load_policy(bad)
    bad.write_text("{not json")
    with pytest.raises(IsybError, match="cannot read the scrubbing policy"):
        load_policy(bad)


PLANTED_NAME = "Zhang^Planted"
PLANTED_DATE = "1987-06-05"


def _planted_dataset(root: Path, data_root: Path) -> list[Path]:
    """A BIDS tree with a fake name and birth date planted in a sidecar, a header, an
    extension, and dated scans.tsv rows."""
    perf = root / "sub-01" / "perf"
    anat = root / "sub-01" / "anat"
    perf.mkdir(parents=True)
    anat.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    asl = json.loads((data_root / "asl" / "perf" / "sub-01_asl.json").read_text())
    asl.update(PatientName=PLANTED_NAME, PatientBirthDate=PLANTED_DATE,
               AcquisitionDateTime="2019-03-04T11:28:04.407500",
               ReferencedImageSequence=[{"ReferencedSOPInstanceUID": "1.2.3"}])
    (perf / "sub-01_asl.json").write_text(json.dumps(asl))
    shutil.copyfile(data_root / "asl" / "perf" / "sub-01_aslcontext.tsv",
                    perf / "sub-01_aslcontext.tsv")
    data = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    image = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header["descrip"] = f"{PLANTED_NAME} {PLANTED_DATE}".encode()
    image.header["aux_file"] = b"scanner-x"
    image.header["intent_name"] = b"who"
    image.header.extensions.append(
        nib.nifti1.Nifti1Extension(6, f"PatientName={PLANTED_NAME}".encode()))
    image.header.set_slope_inter(0.5, 10.0)
    image.to_filename(str(anat / "sub-01_T1w.nii.gz"))
    pd.DataFrame({"filename": ["anat/sub-01_T1w.nii.gz", "perf/sub-01_asl.nii.gz"],
                  "acq_time": ["2019-03-04T11:20:00", "2019-03-04T11:28:04"]}).to_csv(
        root / "sub-01" / "sub-01_scans.tsv", sep="\t", index=False)
    return [p.relative_to(root) for p in sorted(root.rglob("*")) if p.is_file()]


def test_scrub_in_place_leaves_no_planted_or_forbidden_value(tmp_path: Path,
                                                             data_root: Path) -> None:
    root = tmp_path / "release"
    files = _planted_dataset(root, data_root)
    policy = load_policy()
    needles = (PLANTED_NAME, PLANTED_DATE, "Curie_Blvd", "66044")
    before = nib.load(str(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    values = np.asanyarray(before.dataobj).copy()
    assert find_leaks(root, policy, needles)  # the scan does see them before
    changes = scrub_in_place(root, files, policy, b"release key")
    assert find_leaks(root, policy, needles) == []
    after = nib.load(str(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(after.dataobj), values)  # voxels untouched
    np.testing.assert_array_equal(after.affine, before.affine)
    sidecar = json.loads((root / "sub-01" / "perf" / "sub-01_asl.json").read_text())
    for key in CBF_KEYS:
        assert key in sidecar
    offset = subject_offset(b"release key", "sub-01", policy.shift_days)
    assert sidecar["AcquisitionDateTime"] == shift_value("2019-03-04T11:28:04.407500", offset)
    scans = pd.read_csv(root / "sub-01" / "sub-01_scans.tsv", sep="\t")
    times = pd.to_datetime(scans["acq_time"])
    assert (times[1] - times[0]).total_seconds() == 484  # the interval is kept
    assert times[0] == pd.Timestamp("2019-03-04T11:20:00") + offset
    reported = {(c.file, c.key, c.action) for c in changes}
    assert ("sub-01/perf/sub-01_asl.json", "PatientName", "drop") in reported
    assert ("sub-01/perf/sub-01_asl.json", "AcquisitionDateTime", "shift") in reported
    assert ("sub-01/anat/sub-01_T1w.nii.gz", "descrip", "clear") in reported
    assert ("sub-01/anat/sub-01_T1w.nii.gz", "extensions", "drop") in reported
    assert ("sub-01/sub-01_scans.tsv", "acq_time", "shift") in reported
    assert not any(PLANTED_NAME in c.detail for c in changes)  # old values are not reported
