"""Scrubbing by allow-list: only listed acquisition parameters and table columns stay."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from isyb.bids.identifiers import REDACTED, Needles, expand
from isyb.bids.scrub import load_policy, scrub_in_place, scrub_sidecar, scrub_table

OFFSET = dt.timedelta(days=-400, seconds=3600)
IDENTIFYING = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
               "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
               "DeviceSerialNumber", "StationName", "ReferringPhysicianName", "OperatorsName",
               "AcquisitionTime", "StudyInstanceUID", "ImageComments", "AccessionNumber")


def test_the_policy_keeps_only_schema_fields_and_documented_dcm2niix_keys() -> None:
    from bidsschematools import schema

    raw = json.loads(Path(load_policy().source).read_text())
    assert "BIDS 1.11.2 schema" in raw["_source"]
    names = {field["name"] for field in schema.load_schema().objects.metadata.values()}
    assert set(raw["keep"]) <= names
    assert not set(raw["keep_dcm2niix"]) & set(raw["keep"])  # listed apart
    policy = load_policy()
    assert all(policy.action(key) == "drop" for key in IDENTIFYING)
    assert all(policy.action(key) == "keep" for key in (
        "RepetitionTime", "EchoTime", "SliceTiming", "PhaseEncodingDirection", "TotalReadoutTime",
        "PostLabelingDelay", "M0Type", "LabelingDuration", "SeriesDescription"))


def test_unlisted_keys_are_dropped_at_any_depth_and_reported() -> None:
    policy = load_policy()
    metadata = {"RepetitionTime": 2.0, "patient_name": "Doe Jane", "DateOfBirth": "1990-01-02",
                "Notes": "Jane Doe", "Events": [{"What": "Jane fainted"}],
                "global": {"const": {"PatientName": "Doe^Jane"}},
                "AcquisitionDateTime": "2019-03-04T11:28:04", "SeriesDescription": "T1w"}
    clean, changes = scrub_sidecar(metadata, policy, OFFSET, "sub-01/anat/sub-01_T1w.json")
    assert set(clean) == {"RepetitionTime", "AcquisitionDateTime", "SeriesDescription"}
    assert clean["AcquisitionDateTime"] == "2018-01-28T12:28:04"
    dropped = {c.key for c in changes if c.action == "drop"}
    assert dropped == {"patient_name", "DateOfBirth", "Notes", "Events", "global"}
    assert all(c.detail == "not in the policy's allow-list" for c in changes
               if c.action == "drop")


@pytest.mark.parametrize("text, why", [
    ("T1 for Dr. Smith", "name"), ("MPRAGE Doe^Jane", "name"), ("scan 1990-01-02", "date"),
    ("run 02.01.1990", "date"), ("call 555-867-5309", "phone"), ("MRN1234567", "id"),
    ("from jd@example.org", "email")])
def test_kept_free_text_with_an_identifying_pattern_is_redacted(text: str, why: str) -> None:
    clean, changes = scrub_sidecar({"ProtocolName": text}, load_policy(), OFFSET, "x.json")
    assert clean == {"ProtocolName": REDACTED}
    assert why in changes[0].detail and changes[0].action == "redact"


@pytest.mark.parametrize("text", ["T1w_MPRAGE_1.0mm", "ep2d_bold_moco 2x2x2", "pCASL 3D",
                                  "DWI_dir80_AP", "rest", "*tfl3d1_16ns", "Head_32"])
def test_acquisition_names_are_not_redacted(text: str) -> None:
    clean, changes = scrub_sidecar({"SeriesDescription": text, "ProtocolName": text},
                                   load_policy(), OFFSET, "x.json")
    assert clean == {"SeriesDescription": text, "ProtocolName": text} and changes == []


def test_a_dataset_value_is_redacted_anywhere_in_a_kept_value() -> None:
    needles = Needles(expand("Doe^Jane", "name", "sub-02/anat/x.json:PatientName"))
    metadata = {"ImageType": ["ORIGINAL", "JANE"], "Manufacturer": "Siemens",
                "AnatomicalLandmarkCoordinates": {"NAS": "near Doe"}}
    clean, changes = scrub_sidecar(metadata, load_policy(), OFFSET, "x.json", needles=needles)
    assert clean["ImageType"] == ["ORIGINAL", REDACTED]
    assert clean["AnatomicalLandmarkCoordinates"] == {"NAS": REDACTED}
    assert clean["Manufacturer"] == "Siemens"
    assert {c.key for c in changes} == {"ImageType/1", "AnatomicalLandmarkCoordinates/NAS"}


def test_tables_keep_only_allowed_columns() -> None:
    policy = load_policy()
    participants = pd.DataFrame({"participant_id": ["sub-01"], "age": ["31"], "sex": ["F"],
                                 "name": ["Jane Doe"], "mrn": ["MRN1"], "birthdate": ["1990"],
                                 "subset": ["discovery"]})
    clean, changes = scrub_table(participants, policy, OFFSET, "participants.tsv")
    assert list(clean.columns) == ["participant_id", "age", "sex", "subset"]
    assert {c.key for c in changes} == {"name", "mrn", "birthdate"}
    scans = pd.DataFrame({"filename": ["anat/sub-01_T1w.nii.gz"],
                          "acq_time": ["2019-03-04T11:20:00"], "operator": ["Smith"]})
    clean, _ = scrub_table(scans, policy, OFFSET, "sub-01/sub-01_scans.tsv")
    assert list(clean.columns) == ["filename", "acq_time"]
    assert clean["acq_time"][0] == "2018-01-28T12:20:00"
    events = pd.DataFrame({"onset": ["1"], "duration": ["2"], "trial_type": ["go"],
                           "rater": ["Jane"]})
    clean, _ = scrub_table(events, policy, OFFSET, "sub-01/func/sub-01_task-x_events.tsv")
    assert list(clean.columns) == ["onset", "duration", "trial_type"]
    context = pd.DataFrame({"volume_type": ["m0scan", "label", "control"]})
    clean, changes = scrub_table(context, policy, OFFSET, "sub-01/perf/sub-01_aslcontext.tsv")
    assert clean.equals(context) and changes == []  # what CBF needs
    other = pd.DataFrame({"anything": ["x"]})
    clean, changes = scrub_table(other, policy, OFFSET, "phenotype/notes.tsv")
    assert list(clean.columns) == [] and changes[0].key == "anything"


def test_scrub_in_place_handles_tables_and_their_descriptions(tmp_path: Path) -> None:
    (tmp_path / "participants.tsv").write_text(
        "participant_id\tname\tgroup\nsub-01\tJane Doe\tcontrol\n")
    (tmp_path / "participants.json").write_text(json.dumps(
        {"name": {"Description": "full name"}, "group": {"Description": "arm"}}))
    (tmp_path / "derivatives/isyb").mkdir(parents=True)
    (tmp_path / "derivatives/isyb/record.json").write_text('{"subject": "01"}')
    files = [Path("participants.tsv"), Path("participants.json"),
             Path("derivatives/isyb/record.json")]
    changes = scrub_in_place(tmp_path, files, load_policy(), b"key")
    assert (tmp_path / "participants.tsv").read_text() == \
        "participant_id\tgroup\nsub-01\tcontrol\n"
    assert json.loads((tmp_path / "participants.json").read_text()) == {
        "group": {"Description": "arm"}}
    assert json.loads((tmp_path / "derivatives/isyb/record.json").read_text()) == {
        "subject": "01"}  # isyb's own record: not a sidecar
    assert {(c.file, c.key) for c in changes} == {("participants.tsv", "name"),
                                                  ("participants.json", "name")}


def test_a_binary_table_is_a_clear_error(tmp_path: Path) -> None:
    from isyb.errors import IsybError

    (tmp_path / "participants.tsv").write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(IsybError, match=r"participants\.tsv: cannot be read as UTF-8"):
        scrub_in_place(tmp_path, [Path("participants.tsv")], load_policy(), b"key")


def test_a_table_with_a_byte_order_mark_or_quotes_keeps_its_allowed_columns(
        tmp_path: Path) -> None:
    """Spreadsheets write a BOM, R's write.table quotes: the columns are still the
    policy's, not dropped as unknown names."""
    folder = tmp_path / "sub-01/func"
    folder.mkdir(parents=True)
    (folder / "sub-01_task-x_events.tsv").write_bytes(
        '\ufeffonset\tduration\trater\n1\t2\tJane\n'.encode())
    (folder / "sub-01_task-y_events.tsv").write_text(
        '"onset"\t"duration"\t"rater"\n"1"\t"2"\t"Jane"\n')
    files = [Path("sub-01/func/sub-01_task-x_events.tsv"),
             Path("sub-01/func/sub-01_task-y_events.tsv")]
    changes = scrub_in_place(tmp_path, files, load_policy(), b"key")
    for path in files:
        assert (tmp_path / path).read_text() == "onset\tduration\n1\t2\n"
    assert [c.key for c in changes] == ["rater", "rater"]
