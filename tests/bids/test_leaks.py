"""The leak scan: identifying values collected from the input and searched for in a release."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.bids.identifiers import Identifier, Needles, date_forms, expand, parse_date
from isyb.bids.leaks import collect_identifiers, dataset_needles, scan_release
from isyb.bids.scrub import load_policy, scrub_in_place


def _needles(*values: tuple[str, str]) -> Needles:
    return Needles([i for value, kind in values for i in expand(value, kind, "in:key")])


def test_a_date_is_found_in_its_rewritten_forms() -> None:
    assert parse_date("19900102") == parse_date("02.01.1990") == parse_date(
        "1990-01-02T10:00:00") == parse_date("19900102101500.5") == dt.date(1990, 1, 2)
    forms = date_forms(dt.date(1990, 1, 2))
    assert {"19900102", "1990-01-02", "02.01.1990", "01/02/1990"} <= set(forms)
    needles = _needles(("1990-01-02", "date"))
    for text in ("born 19900102", "02.01.1990", "x_1990/01/02_y", "01-02-1990"):
        assert needles.search(text), text


def test_the_false_positive_rule() -> None:
    """Short values, small numbers and common words are not searched; whole tokens only."""
    needles = Needles([Identifier(v, k, "s") for v, k in (
        ("M", "text"), ("1", "id"), ("70", "text"), ("1990", "date"), ("none", "text"),
        ("What", "name"), ("Doe", "name"), ("12345", "id"), ("Bramblewood", "text"),
        ("4471928", "id"), ("Siemens", "text"), ("Body", "text"))], public=["Siemens"])
    assert sorted(needles.identifiers) == ["4471928", "bramblewood", "doe", "what"]
    assert needles.skipped == 8
    assert needles.search("Jane Doe") and not needles.search("Doerte")  # a token, not a part
    assert not needles.search("0.44719281") and needles.search("SN 4471928")
    assert not needles.search("a male, 70 kg, 1990, M") and not needles.search("Siemens")
    assert needles.search_bytes(b"\x00\x01BRAMBLEWOOD\x00")


def test_collect_finds_every_kind_of_identifying_value(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    (bids / "sub-01/anat").mkdir(parents=True)
    (bids / "extra").mkdir()
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "lab study", "BIDSVersion": "1.9.0", "Authors": ["Ada Lovelace"],
         "Acknowledgements": "call 555-867-5309"}))
    (bids / "participants.tsv").write_text(
        "participant_id\tsex\tname\tmrn\nsub-01\tM\tDoe^Jane\tMRN0048213\n")
    (bids / "README").write_text("Contact Dr. Ignatius Pembrook, jp@example.org\n")
    (bids / "extra/notes_2018-10-11.txt").write_text("x\n")
    (bids / "sub-01/sub-01_scans.tsv").write_text(
        "filename\tacq_time\nanat/sub-01_T1w.nii.gz\t2019-03-04T11:20:00\n")
    (bids / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps(
        {"Manufacturer": "Siemens", "InstitutionName": "Foxglove Clinic",
         "Events": [{"What": "Ysolde fainted"}], "AcquisitionDateTime": "2017-07-08T10:11:12",
         "ProtocolName": "T1 Mr. Grimsby"}))
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    image.header["descrip"] = b"AUXSECRET77"
    image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"PatientName=Hrabowski"))
    image.to_filename(bids / "sub-01/anat/sub-01_T1w.nii.gz")
    identifiers, public = collect_identifiers(bids, load_policy())
    by_value = {i.value: i for i in identifiers}
    expected = {"Doe^Jane": "participants.tsv:name", "Jane": "participants.tsv:name",
                "MRN0048213": "participants.tsv:mrn", "20190304": "sub-01/sub-01_scans.tsv:"
                "acq_time", "Foxglove Clinic": "sub-01/anat/sub-01_T1w.json:InstitutionName",
                "Ysolde fainted": "sub-01/anat/sub-01_T1w.json:Events/What",
                "08.07.2017": "sub-01/anat/sub-01_T1w.json:AcquisitionDateTime",
                "Grimsby": "sub-01/anat/sub-01_T1w.json:ProtocolName",
                "555-867-5309": "dataset_description.json:Acknowledgements",
                "Pembrook": "README", "jp@example.org": "README",
                "2018-10-11": "extra/notes_2018-10-11.txt:file name",
                "AUXSECRET77": "sub-01/anat/sub-01_T1w.nii.gz:header descrip",
                "Hrabowski": "sub-01/anat/sub-01_T1w.nii.gz:header extension 0"}
    assert {v: by_value[v].source for v in expected if v in by_value} == expected
    assert {"Siemens", "M", "01", "lab study", "Ada Lovelace"} <= public
    assert "What" not in by_value  # a key of a dropped object is not a value


def test_scan_reports_place_and_source_never_the_value(tmp_path: Path) -> None:
    release = tmp_path / "release"
    (release / "sub-01/anat").mkdir(parents=True)
    (release / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps(
        {"RepetitionTime": 2, "SeriesDescription": "T1 Doe", "Notes": "ok"}))
    (release / "derivatives/isyb").mkdir(parents=True)
    (release / "derivatives/isyb/report.html").write_text("<p>jane DOE</p>")
    (release / "derivatives/isyb/record.json").write_text('{"subject": "01"}')
    picture = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    (release / "derivatives/isyb/qc.png").write_bytes(b"\x89PNG\x00" + picture)
    (release / "derivatives/isyb/qc2.png").write_bytes(b"\x89PNG\x00tEXtComment Jane Doe\x00")
    (release / "Doe_notes.txt").write_text("nothing")
    needles = _needles(("Doe^Jane", "name"))
    findings = scan_release(release, needles, load_policy())
    assert {(f["file"], f["where"]) for f in findings} == {
        ("sub-01/anat/sub-01_T1w.json", "key Notes"),
        ("sub-01/anat/sub-01_T1w.json", "value SeriesDescription"),
        ("derivatives/isyb/report.html", "content"),
        ("derivatives/isyb/qc2.png", "content"),
        ("[redacted]_notes.txt", "file name")}  # random picture bytes: no false positive
    assert "doe" not in json.dumps(findings).lower() and "jane" not in json.dumps(
        findings).lower()


def test_a_header_field_left_or_planted_is_found(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    image.header["intent_name"] = b"ZXQ1990"
    image.to_filename(tmp_path / "sub-01_T1w.nii.gz")
    findings = scan_release(tmp_path, _needles(("ZXQ1990", "text")), load_policy())
    assert {(f["where"], f["kind"]) for f in findings} == {("header intent_name", "not cleared"),
                                                           ("header intent_name", "text")}


@pytest.mark.parametrize("modality, sidecar", [
    ("perf", "asl/perf/sub-01_asl.json"), ("dwi", "dwi/DWI_dir80_AP.json"),
    ("func", "bold/ge_epi_10vol.json")])
def test_no_false_positive_on_a_real_scrubbed_sidecar(tmp_path: Path, data_root: Path,
                                                      modality: str, sidecar: str) -> None:
    """Real dcm2niix sidecars, scrubbed, hold none of their own dropped values."""
    suffix = {"perf": "asl", "dwi": "dwi", "func": "task-rest_bold"}[modality]
    bids, release = tmp_path / "bids", tmp_path / "release"
    folder = bids / "sub-01" / modality
    folder.mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    shutil.copyfile(data_root / sidecar, folder / f"sub-01_{suffix}.json")
    shutil.copytree(bids, release)
    policy = load_policy()
    needles = dataset_needles(bids, policy)
    assert len(needles) > 0
    relative = Path(f"sub-01/{modality}/sub-01_{suffix}.json")
    assert scan_release(release, needles, policy)  # before scrubbing: found
    scrub_in_place(release, [relative], policy, b"key", needles=needles)
    assert scan_release(release, needles, policy) == []
    clean = json.loads((release / relative).read_text())
    original = json.loads((bids / relative).read_text())
    assert clean.get("RepetitionTime") == original.get("RepetitionTime")


def test_labels_and_the_input_derivatives_are_not_searched(tmp_path: Path) -> None:
    """A PatientID that is the BIDS label is public (it names every file); computed
    derivatives of the input are not read (their template names are isyb's too)."""
    (tmp_path / "sub-01/anat").mkdir(parents=True)
    (tmp_path / "sub-01/anat/sub-01_T1w.json").write_text(json.dumps(
        {"PatientID": "sub-01", "PatientName": "Zyxwar^Quentina"}))
    (tmp_path / "derivatives/fmriprep").mkdir(parents=True)
    (tmp_path / "derivatives/fmriprep/desc.json").write_text('{"Space": "MNI152NLin6Asym"}')
    needles = dataset_needles(tmp_path, load_policy())
    assert sorted(needles.identifiers) == ["quentina", "zyxwar", "zyxwar^quentina"]


def test_a_name_part_that_is_a_word_of_a_kept_value_is_public() -> None:
    needles = Needles(expand("Phantom^Demo01", "name", "x.json:PatientName"),
                      public=["isyb phantom"])
    assert sorted(needles.identifiers) == ["phantom^demo01"]
    assert not needles.search("Manufacturer: isyb phantom")


def test_pictures_embedded_in_a_page_are_searched_as_pictures(tmp_path: Path) -> None:
    """Base64 pixels read as text would match a short name by chance; their decoded
    printable text is searched instead, and the page's own text as text."""
    import base64

    needles = _needles(("Doe^Jane", "name"))
    noise = b"+Doe/" * 50  # base64 that holds the token 'Doe' between non-letters
    page = b'<img src="data:image/png;base64,' + noise + b'"><p>clean</p>'
    (tmp_path / "report.html").write_bytes(page)
    assert scan_release(tmp_path, needles, load_policy()) == []
    hidden = base64.b64encode(b"\x89PNG\x00tEXtAuthor Jane Doe\x00").decode()
    (tmp_path / "report.html").write_text(f'<img src="data:image/png;base64,{hidden}">')
    findings = scan_release(tmp_path, needles, load_policy())
    assert [f["where"] for f in findings] == ["content", "content"]  # Jane, Doe


def test_every_header_field_that_can_carry_text_and_the_bytes_before_the_data_are_searched(
        tmp_path: Path) -> None:
    """NIfTI-1's data_type and unused ANALYZE numbers, NIfTI-2's unused_str, and text a
    writer left between the header and the data: each flagged until the scrub clears it."""
    import gzip

    from isyb.bids.scrub import scrub_nifti_file

    one = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    one.header["data_type"] = b"ZXQWARD7"
    one.header["glmax"] = 77831942
    raw = bytearray(one.to_bytes())
    raw[352:352] = b"Zyxwar^Quentina\0"  # 16 bytes: the data now starts at 368
    raw[108:112] = np.float32(368).tobytes()
    (tmp_path / "sub-01_T1w.nii.gz").write_bytes(gzip.compress(bytes(raw), mtime=0))
    two = nib.Nifti2Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    two.header["unused_str"] = b"ZXQWARD7"
    two.to_filename(tmp_path / "sub-01_T2w.nii")
    needles = _needles(("Zyxwar^Quentina", "name"), ("ZXQWARD7", "text"),
                       ("77831942", "id"))
    policy = load_policy()
    findings = {(f["file"], f["where"], f["kind"]) for f in scan_release(tmp_path, needles,
                                                                         policy)}
    assert findings == {
        ("sub-01_T1w.nii.gz", "header data_type", "not cleared"),
        ("sub-01_T1w.nii.gz", "header data_type", "text"),
        ("sub-01_T1w.nii.gz", "header glmax", "not cleared"),
        ("sub-01_T1w.nii.gz", "header glmax", "id"),
        ("sub-01_T1w.nii.gz", "header before the data", "not cleared"),
        ("sub-01_T1w.nii.gz", "header before the data", "name"),
        ("sub-01_T2w.nii", "header unused_str", "not cleared"),
        ("sub-01_T2w.nii", "header unused_str", "text")}
    for name in ("sub-01_T1w.nii.gz", "sub-01_T2w.nii"):
        before = np.asarray(nib.load(tmp_path / name).dataobj)
        changes = scrub_nifti_file(tmp_path / name, tmp_path / name, policy, name)
        assert changes and all(c.action in ("clear", "drop") for c in changes)
        np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / name).dataobj), before)
        assert scrub_nifti_file(tmp_path / name, tmp_path / name, policy, name) == []
    assert scan_release(tmp_path, needles, policy) == []


def test_a_kept_whole_number_equal_to_a_dropped_id_is_found_and_dropped(tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    (bids / "sub-01/anat").mkdir(parents=True)
    sidecar = bids / "sub-01/anat/sub-01_T1w.json"
    sidecar.write_text(json.dumps({"PatientID": "77831942", "AcquisitionNumber": 77831942,
                                   "EchoTime": 0.003}))
    policy = load_policy()
    needles = dataset_needles(bids, policy)  # a kept number makes the ID no public value
    release = tmp_path / "release"
    shutil.copytree(bids, release)
    assert {f["where"] for f in scan_release(release, needles, policy)} == {
        "key PatientID", "value PatientID", "value AcquisitionNumber"}
    changes = scrub_in_place(release, [Path("sub-01/anat/sub-01_T1w.json")], policy, b"key",
                             needles=needles)
    assert json.loads(sidecar.read_text())["AcquisitionNumber"] == 77831942  # the input
    assert json.loads((release / "sub-01/anat/sub-01_T1w.json").read_text()) == {
        "EchoTime": 0.003}
    assert {(c.key, c.action) for c in changes} == {("PatientID", "drop"),
                                                    ("AcquisitionNumber", "drop")}
    assert scan_release(release, needles, policy) == []


def _outside_the_image(folder: Path, how: str) -> Path:
    """A small image with text where no header field shows it (``how``)."""
    import gzip
    import io

    raw = nib.Nifti1Image(np.arange(8, dtype=np.int16).reshape(2, 2, 2), np.eye(4)).to_bytes()
    if how == "appended":
        path = folder / "sub-01_T1w.nii"
        path.write_bytes(raw + b"PatientName=Zyxwar^Quentina")
        return path
    if how == "extension-size":  # an extension of 24 bytes, then text up to the data
        extension = (24).to_bytes(4, "little") + (6).to_bytes(4, "little") + b"x" * 16
        body = bytearray(raw[:348] + b"\x01\0\0\0" + extension + b"Zyxwar^Q" + raw[352:])
        body[108:112] = np.float32(352 + 24 + 8).tobytes()
        path = folder / "sub-01_T1w.nii"
        path.write_bytes(bytes(body))
        return path
    path = folder / "sub-01_T1w.nii.gz"
    if how == "member":  # a second gzip member: gzip readers join them
        path.write_bytes(gzip.compress(raw, mtime=0) + gzip.compress(b"Zyxwar^Quentina"))
    else:  # gzip header fields: the original file name, the time it was compressed
        buffer = io.BytesIO()
        with gzip.GzipFile("Zyxwar_Quentina_T1w.nii" if how == "gzip-name" else "",
                           "wb", fileobj=buffer, mtime=1262304000 if how == "gzip-time" else 0,
                           ) as stream:
            stream.write(raw)
        path.write_bytes(buffer.getvalue())
    return path


@pytest.mark.parametrize(("how", "place"), [
    ("appended", "after the data"), ("member", "after the data"),
    ("extension-size", "before the data"),
    ("gzip-name", "gzip file name"), ("gzip-time", "gzip modification time")])
def test_text_outside_the_image_is_found_and_dropped(tmp_path: Path, how: str,
                                                     place: str) -> None:
    from isyb.bids.scrub import scrub_nifti_file

    path = _outside_the_image(tmp_path, how)
    needles, policy = _needles(("Zyxwar^Quentina", "name")), load_policy()
    findings = {(f["where"], f["kind"]) for f in scan_release(tmp_path, needles, policy)}
    assert (f"header {place}", "not cleared") in findings
    if how != "gzip-time":
        assert (f"header {place}", "name") in findings
    before = np.asarray(nib.load(path).dataobj)
    changes = scrub_nifti_file(path, path, policy, path.name)
    assert ("nifti_file", place) in [(c.location, c.key) for c in changes]
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), before)
    assert b"Zyxwar" not in path.read_bytes() and scan_release(tmp_path, needles, policy) == []


def test_the_values_of_a_json_naming_a_key_twice_are_still_searched_for(tmp_path: Path) -> None:
    (tmp_path / "participants.json").write_text(
        '{"group": {"Description": "Ottoline Whitcombe"}, "group": {"Description": "arm"}}')
    identifiers, _ = collect_identifiers(tmp_path, load_policy())
    assert "Ottoline Whitcombe" in {i.value for i in identifiers}
