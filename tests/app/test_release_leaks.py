"""The release leaks nothing planted in its input, and its leak scan fails a release that does.

Over 52 identifying items are planted in a two-subject phantom dataset, where the
fuzz campaign of issue 19 found them surviving: names and IDs in sidecars (also
under keys no deny-list knew, nested in arrays and objects, in kept free text),
dates, table columns, README, CHANGES, the description, NIfTI headers and an
ignored file. The release (faces not masked, no QC: only scrubbing matters here)
must hold none of them, searched for independently of isyb's own leak scan.
"""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from isyb.app.release import ReleaseOptions, release_group, release_participants
from isyb.bids.leaks import dataset_needles, scan_release
from isyb.bids.scrub import load_policy
from isyb.executor import ExecutorOptions
from isyb.synthetic.demo import build_demo_dataset

TEMPLATE = SimpleNamespace(name="default", info={"head_sha256": "not used"})
OPTIONS = ReleaseOptions(skip=frozenset({"deface", "qc", "derive"}))

# Each planted value, and where it goes. Dates are also searched in other forms.
SIDECAR_01 = {
    "PatientName": "Zyxwar^Quentina",
    "PatientID": "PID-77831942",
    "PatientBirthDate": "19620417",
    "patient_name": "Quentina Zyxwar",
    "DateOfBirth": "1958-11-23",
    "InstitutionName": "Bramblewood Neurological Institute",
    "InstitutionAddress": "12 Larkspur Lane, Duncaster",
    "DeviceSerialNumber": "SN4471928",
    "StationName": "MRCSTATIONZX9",
    "ReferringPhysicianName": "Ostrander^Helmut",
    "OperatorsName": "Pelletier^Ines",
    "AccessionNumber": "ACC99182736",
    "Notes": "Subject Orla Brennigan arrived late",
    "ImageComments": "call +44 20 7946 0958",
    "ExtraNames": ["Tamsin Okoro", "Wendeline Fausch"],
    "Events": [{"What": "Ysolde Marchetti fainted", "When": "2017-07-08T10:11:12"}],
    "global": {"const": {"StudyID": "STU3381207", "OtherPatientIDs": "MRN5512093"}},
    "StudyDate": "20160305",
    "AcquisitionTime": "11:28:04.407500",
}
KEPT_FREE_TEXT_01 = {  # kept keys whose text must be redacted
    "ProtocolName": "T1 for Mr. Grimsby",
    "SeriesDescription": "MPRAGE Quentina",  # a part of the PatientName above
    "TaskDescription": "contact orla.b@hospital-x.org",
    "ScanOptions": "FS Kowalczyk",  # sub-02's PatientName, in a sidecar of sub-01
}
SIDECAR_02 = {
    "PatientName": "Kowalczyk^Bartosz",
    "InstitutionalDepartmentName": "Radiology Westwing",
    "PerformingPhysicianName": "Nakashima^Reiko",
    "mrn": "00912837",
    "AcquisitionDateTime": "2015-02-14T09:15:00",
}
KEPT_FREE_TEXT_02 = {"ProtocolName": "ring 555-867-5309", "SeriesDescription": "scan 2014/01/15"}
TOP_SIDECAR = {"InstitutionName": "Foxglove Clinic", "ContactPhone": "+1 (617) 555-0142"}
PARTICIPANTS = {"name": ["Aurelio Vantongeren", "Philippa Strudwick"],
                "mrn": ["MRN0048213", "MRN0093374"],
                "birthdate": ["1971-02-03", "1980-12-24"],
                "phone": ["555 0199 2210", "555 0199 3311"]}
SCANS_01 = {"operator": "Gwendolyn Ashcombe", "scanner_serial": "SER88127",
            "acq_time": "2013-03-06T09:15:00"}
README = "Contact Dr. Ignatius Pembrook at 555-314-1592.\n"
CHANGES = "1.0.1 2012-08-09\n  - fixed by Marisol Quenneville\n"
DESCRIPTION = {"Acknowledgements": "Thanks to Leopold Farquharson, phone +49 30 901820",
               "EthicsApprovals": ["IRB-2011-00417"], "Funding": ["Grant of Cordelia Vanstone"]}
HEADER = {"descrip": "Zoltan Hrabowski 1966-09-30", "aux_file": "AUXSECRET77",
          "extension": "PatientName=Hrabowski^Zoltan"}
IGNORED = ("extra/notes_2010-10-11.txt", "Siobhan Tetlow")
#: Bypasses a review found after the fuzz campaign (the release had passed with all of them):
#: a compressed table and a ragged table with text, header
#: text outside the four usual fields and bytes between the header and the data, a
#: second README, a whole number equal to a dropped ID, a date in a key of a kept object.
RAGGED_EVENTS = "onset\tduration\nHallie Brookhurst\t0\t1\n"
PHYSIO = "0.5\t1\ncalled Evadne Quarrington, mobile 0171 555 0199\t2\n"
HEADER_TEXT = {"data_type": b"Thornbury", "db_name": b"Ulverstone Reg"}
GAP_TEXT = b"PatientName=Whitlowe^Ermintrude DOB=1962-04-17"
README_TXT = "Scanned by radiographer Lavinia Oakenshaw\n"
NUMBER_ID = 88124477
LEVEL_DATE = "pilot 2016-03-05"


def _values(item) -> list[str]:
    if isinstance(item, dict):
        return [v for value in item.values() for v in _values(value)]
    if isinstance(item, list):
        return [v for value in item for v in _values(value)]
    return [str(item)]


def planted_values() -> list[str]:
    """Every planted value; a date-time counts by its date, DICOM names by their parts."""
    groups = [SIDECAR_01, KEPT_FREE_TEXT_01, SIDECAR_02, KEPT_FREE_TEXT_02, TOP_SIDECAR,
              PARTICIPANTS, SCANS_01, DESCRIPTION, HEADER]
    values = [v for group in groups for v in _values(group)]
    values += ["Hallie Brookhurst", "Evadne Quarrington",
               "0171 555 0199", *(v.decode() for v in HEADER_TEXT.values()), "Whitlowe",
               "Ermintrude", "1962-04-17", "Lavinia Oakenshaw", str(NUMBER_ID), "2016-03-05"]
    values += ["Dr. Ignatius Pembrook", "555-314-1592", "2012-08-09", "Marisol Quenneville",
               IGNORED[0].split("_")[-1].removesuffix(".txt"), IGNORED[1],
               "Farquharson", "+49 30 901820", "Cordelia Vanstone", "Orla Brennigan"]
    # the identifying part of free text that is kept (the rest, "T1 for", may stay)
    swaps = {"T1 for Mr. Grimsby": "Grimsby", "MPRAGE Quentina": "Quentina",
             "contact orla.b@hospital-x.org": "orla.b@hospital-x.org",
             "FS Kowalczyk": "Kowalczyk", "ring 555-867-5309": "555-867-5309",
             "scan 2014/01/15": "2014/01/15", "11:28:04.407500": "11:28:04"}
    return [swaps.get(v, v) for v in values]


def _dates(value: str) -> list[str]:
    """``value`` and, for a date or date-time, its compact and ISO forms."""
    digits = "".join(c for c in value[:10] if c.isdigit())
    if len(digits) == 8 and value[:4].isdigit():
        return [value, digits, f"{digits[:4]}-{digits[4:6]}-{digits[6:]}"]
    return [value]


def build_planted(root: Path) -> Path:
    """The demo dataset with every item above planted."""
    bids = build_demo_dataset(root / "bids", n_subjects=2, modalities=("anat", "func"))
    anat1, anat2 = bids / "sub-01/anat", bids / "sub-02/anat"
    sidecar = json.loads((anat1 / "sub-01_T1w.json").read_text())
    (anat1 / "sub-01_T1w.json").write_text(json.dumps(
        {**sidecar, **SIDECAR_01, **KEPT_FREE_TEXT_01, "OtherPatientNumber": str(NUMBER_ID),
         "AcquisitionNumber": NUMBER_ID}))
    func = bids / "sub-01/func"
    (func / "sub-01_task-rest_events.tsv").write_text(RAGGED_EVENTS)
    (func / "sub-01_task-rest_physio.tsv.gz").write_bytes(gzip.compress(PHYSIO.encode()))
    (func / "sub-01_task-rest_physio.json").write_text(json.dumps(
        {"SamplingFrequency": 50, "StartTime": 0, "Columns": ["cardiac", "respiratory"]}))
    bold = nib.load(func / "sub-01_task-rest_bold.nii.gz")
    for field, value in HEADER_TEXT.items():
        bold.header[field] = value
    raw = bytearray(nib.Nifti1Image(bold.get_fdata(dtype="float32"), bold.affine,
                                    bold.header).to_bytes())  # vox_offset 352, then data
    raw[352:352] = GAP_TEXT + b"\0" * (-len(GAP_TEXT) % 16)  # data moved after the text
    raw[108:112] = np.float32(352 + len(GAP_TEXT) + (-len(GAP_TEXT) % 16)).tobytes()
    (func / "sub-01_task-rest_bold.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    (bids / "README.txt").write_text(README_TXT)
    sidecar = json.loads((anat2 / "sub-02_T1w.json").read_text())
    (anat2 / "sub-02_T1w.json").write_text(json.dumps(
        {**sidecar, **SIDECAR_02, **KEPT_FREE_TEXT_02}))
    (bids / "T1w.json").write_text(json.dumps(TOP_SIDECAR))
    lines = (bids / "participants.tsv").read_text().splitlines()
    extra = list(PARTICIPANTS)
    rows = [lines[0] + "\t" + "\t".join(extra)]
    rows += [line + "\t" + "\t".join(PARTICIPANTS[c][i] for c in extra)
             for i, line in enumerate(lines[1:])]
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    (bids / "participants.json").write_text(json.dumps(
        {"mrn": {"Description": "record number, e.g. MRN0048213"},
         "sex": {"Levels": {"F": "female", LEVEL_DATE: "first pilot"}}}))
    (bids / "sub-01/sub-01_scans.tsv").write_text(
        "filename\t" + "\t".join(SCANS_01) + "\nanat/sub-01_T1w.nii.gz\t"
        + "\t".join(SCANS_01.values()) + "\n")
    (bids / "README").write_text(README)
    (bids / "CHANGES").write_text(CHANGES)
    description = json.loads((bids / "dataset_description.json").read_text())
    (bids / "dataset_description.json").write_text(json.dumps({**description, **DESCRIPTION}))
    image = nib.load(anat1 / "sub-01_T1w.nii.gz")
    image.header["descrip"] = HEADER["descrip"].encode()
    image.header["aux_file"] = HEADER["aux_file"].encode()
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, HEADER["extension"].encode()))
    nib.Nifti1Image(image.get_fdata(), image.affine, image.header).to_filename(
        anat1 / "sub-01_T1w.nii.gz")
    (bids / ".bidsignore").write_text("extra/\n")
    (bids / IGNORED[0]).parent.mkdir()
    (bids / IGNORED[0]).write_text(IGNORED[1] + "\n")
    return bids


def release_text(out: Path) -> str:
    """Every file name and every file's text (gzip decompressed; for a NIfTI image its
    header and extensions), lower-cased, as one string."""
    parts = []
    for path in sorted(out.rglob("*")):
        parts.append(path.relative_to(out).as_posix())
        if not path.is_file():
            continue
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = zlib.decompressobj(31).decompress(data, 1 << 16)  # header and more
        parts.append(data.decode("latin-1"))
    return "\n".join(parts).lower()


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("leaks")
    bids = build_planted(root)
    out, work = root / "release", root / "work"
    release_participants(bids, out, work, TEMPLATE, OPTIONS,
                         executor=ExecutorOptions(nprocs=1), progress=False)
    summary = release_group(bids, out, work, TEMPLATE, OPTIONS)
    return {"bids": bids, "out": out, "work": work, "summary": summary}


def test_over_52_planted_items_none_in_the_release(released) -> None:
    values = planted_values()
    assert len(values) >= 52
    text = release_text(released["out"])
    found = [v for v in values if any(form.lower() in text for form in _dates(v))]
    assert found == []
    source = release_text(released["bids"])
    assert all(any(f.lower() in source for f in _dates(v)) for v in values)  # all planted


def test_the_release_is_complete_and_its_scan_clean(released) -> None:
    summary = released["summary"]
    assert summary["complete"] is True
    assert summary["leak_scan"]["findings"] == 0
    assert summary["leak_scan"]["values_searched"] > 52


def test_kept_parameters_and_allowed_columns_stay(released) -> None:
    out = released["out"]
    sidecar = json.loads((out / "sub-01/anat/sub-01_T1w.json").read_text())
    assert sidecar["RepetitionTime"] == 2.3 and sidecar["MagneticFieldStrength"] == 3
    assert sidecar["ProtocolName"] == "[redacted]"
    assert "AcquisitionDateTime" in json.loads((out / "sub-02/anat/sub-02_T1w.json").read_text())
    header = (out / "participants.tsv").read_text().splitlines()[0]
    assert header == "participant_id"
    scans = (out / "sub-01/sub-01_scans.tsv").read_text().splitlines()[0]
    assert scans == "filename\tacq_time"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "isyb phantom demo" and description["License"] == "CC0"
    assert description["Authors"] == ["isyb demo"]
    assert "Acknowledgements" not in description and "Funding" not in description
    report = (out / "derivatives/isyb/scrub_report.tsv").read_text()
    assert "participants.tsv\ttsv\tmrn\tdrop" in report


def test_one_item_slipped_into_a_finished_release_fails_it(released, tmp_path: Path,
                                                           capsys) -> None:
    from isyb.cli import main

    out, bids, work = released["out"], released["bids"], released["work"]
    policy = load_policy()
    needles = dataset_needles(bids, policy)
    assert scan_release(out, needles, policy) == []
    path = out / "sub-02/anat/sub-02_T1w.json"
    clean = path.read_text()
    try:
        sidecar = json.loads(clean)
        sidecar["SeriesDescription"] = "T1 Vantongeren"  # a participants.tsv name
        path.write_text(json.dumps(sidecar))
        findings = scan_release(out, needles, policy)
        assert findings == [{"file": "sub-02/anat/sub-02_T1w.json",
                             "where": "value SeriesDescription", "kind": "name",
                             "source": "participants.tsv:name"}]
        code = main([str(bids), str(out), "group", "--work-dir", str(work), "--skip", "deface",
                     "--skip", "qc", "--skip", "derive"])
        assert code == 1
        assert "leak scan found 1" in capsys.readouterr().err
        summary = (out / "derivatives/isyb/release_summary.json").read_text()
        assert json.loads(summary)["complete"] is False
        assert "vantongeren" not in summary.lower()  # points at the place, not the value
    finally:
        path.write_text(clean)


def test_a_date_in_a_file_name_is_found(released) -> None:
    out, bids = released["out"], released["bids"]
    policy = load_policy()
    slipped = out / "extra_2010-10-11.txt"  # the ignored file's date, in another form too
    slipped.write_text("nothing\n")
    other = out / "log_11.10.2010.txt"
    other.write_text("nothing\n")
    try:
        findings = scan_release(out, dataset_needles(bids, policy), policy)
        assert {f["file"] for f in findings} == {"extra_[redacted].txt", "log_[redacted].txt"}
        assert all(f["where"] == "file name" and f["kind"] == "date" for f in findings)
    finally:
        slipped.unlink()
        other.unlink()


def test_gzip_and_header_text_are_searched(released, tmp_path: Path) -> None:
    out, bids = released["out"], released["bids"]
    policy = load_policy()
    physio = out / "sub-01/anat/sub-01_physio.tsv.gz"
    physio.write_bytes(gzip.compress(b"0.1\t0.2\nbramblewood neurological institute\n"))
    try:
        findings = scan_release(out, dataset_needles(bids, policy), policy)
        assert [(f["file"], f["kind"]) for f in findings] == [
            ("sub-01/anat/sub-01_physio.tsv.gz", "text")]
    finally:
        physio.unlink()


def test_a_new_identifying_value_elsewhere_rescrubs_a_finished_subject(tmp_path: Path) -> None:
    """sub-01's sidecar names a person only sub-02's sidecar identifies: the resume digest
    of sub-01's scrub follows the dataset's identifying values."""
    bids = build_demo_dataset(tmp_path / "bids", n_subjects=2)
    out, work = tmp_path / "release", tmp_path / "work"
    one = bids / "sub-01/anat/sub-01_T1w.json"
    one.write_text(json.dumps({**json.loads(one.read_text()), "SeriesDescription": "T1 Okafor"}))
    release_participants(bids, out, work, TEMPLATE, OPTIONS, executor=ExecutorOptions(nprocs=1),
                         progress=False)
    released = out / "sub-01/anat/sub-01_T1w.json"
    assert json.loads(released.read_text())["SeriesDescription"] == "T1 Okafor"
    two = bids / "sub-02/anat/sub-02_T1w.json"
    two.write_text(json.dumps({**json.loads(two.read_text()), "PatientName": "Okafor^Chidi"}))
    records = release_participants(bids, out, work, TEMPLATE, OPTIONS,
                                   executor=ExecutorOptions(nprocs=1), progress=False)
    assert records[0]["steps"]["scrub"] == "done"
    assert json.loads(released.read_text())["SeriesDescription"] == "[redacted]"


def test_description_and_readme_take_only_name_license_and_authors(tmp_path: Path) -> None:
    from isyb.app.dataset_files import write_description, write_readme_and_changes
    from isyb.bids.identifiers import Needles, expand

    bids, out = tmp_path / "bids", tmp_path / "release"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "Scans of Zyxwar", "BIDSVersion": "1.8.0", "License": "CC-BY-4.0",
         "Authors": ["Ada Lovelace", "Zyxwar Q."], "Funding": ["call 555-867-5309"],
         "GeneratedBy": [{"Name": "heudiconv", "Description": "by Jane"}]}))
    (bids / "README.md").write_text("Contact Jane at 555-867-5309\n")
    needles = Needles(expand("Zyxwar^Quentina", "name", "sub-01/anat/x.json:PatientName"))
    description = write_description(bids, out, TEMPLATE, OPTIONS, needles)
    assert description == json.loads((out / "dataset_description.json").read_text())
    assert description["Name"] == "[redacted]" and description["License"] == "CC-BY-4.0"
    assert description["Authors"] == ["Ada Lovelace", "[redacted]"]
    assert [e["Name"] for e in description["GeneratedBy"]] == ["isyb"]
    assert "Funding" not in description
    write_readme_and_changes(bids, out, TEMPLATE, OPTIONS, "2026-01-01", description)
    readme = (out / "README.md").read_text()
    assert "CC-BY-4.0" in readme and "Ada Lovelace" in readme and "555" not in readme
    assert (out / "CHANGES").read_text().startswith("1.0.0 2026-01-01\n")


def test_a_group_level_that_fails_leaves_nothing_unscrubbed_and_no_complete_claim(
        released, monkeypatch: pytest.MonkeyPatch) -> None:
    """The top-level files are scrubbed in the work folder and only then moved into the
    release, and an earlier run's ``"complete": true`` goes before the work starts."""
    from isyb.errors import IsybError

    out, bids, work = released["out"], released["bids"], released["work"]
    published = (out / "participants.tsv").read_text()

    def fail(*args, **kwargs):
        raise IsybError("scrub failed")

    monkeypatch.setattr("isyb.app.dataset_files.scrub_in_place", fail)
    with pytest.raises(IsybError, match="scrub failed"):
        release_group(bids, out, work, TEMPLATE, OPTIONS)
    assert (out / "participants.tsv").read_text() == published  # not the raw copy
    summary = json.loads((out / "derivatives/isyb/release_summary.json").read_text())
    assert summary["complete"] is False
    monkeypatch.undo()
    assert release_group(bids, out, work, TEMPLATE, OPTIONS)["complete"] is True
    assert (out / "participants.tsv").read_text() == published


def test_a_second_readme_is_withheld_not_copied(released) -> None:
    """The source has README and README.txt: isyb writes its own README.txt (the first
    name BIDS lists that the source uses), and withholds the other."""
    out, work = released["out"], released["work"]
    assert not (out / "README").exists()
    assert "README\tanother README" in (work / "withheld.tsv").read_text()
    assert "Release notes (isyb)" in (out / "README.txt").read_text()


def test_a_top_level_file_no_longer_released_is_removed_by_the_next_group_level(
        released) -> None:
    """An earlier run (or an older isyb) may have published what is now withheld."""
    out, bids, work = released["out"], released["bids"], released["work"]
    stale = out / "README.md"
    stale.write_text(README_TXT)
    assert release_group(bids, out, work, TEMPLATE, OPTIONS)["complete"] is True
    assert not stale.exists() and (out / "README.txt").is_file()
