"""Fuzz the release's deny-by-default copy with the ways a face can slip through.

Each case of ``PLANTED`` puts a copy of the phantom's face (its voxels made
unique by one marker voxel, so every planted image has its own hashes) or a
bad file where a careless data manager or an attacker would. The checks are
by content, never by name: no output file may have the SHA-256 of a planted
file, and no output image may have the SHA-256 of a planted image's voxels;
``withheld.tsv`` must name every planted path.

* the release (participant and group level, in process) with ``--skip deface
  qc derive``: classification and copying without the cost of defacing;
* one real ``isyb deface BIDS_IN BIDS_OUT`` of a 1-subject phantom dataset, where
  the original T1w and an upper-case ``.NII.GZ`` T1w must come out defaced.

The phantom head is the demo's on a 3 mm grid (conftest ``PLUMBING_T1W_MM``): what is
tested is which files are copied, defaced or withheld, not the anatomy.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from conftest import PLUMBING_T1W_MM, assert_one_line_error, coarser_demo_t1w
from isyb.app.release import ReleaseOptions, release_group, release_participants
from isyb.bids.classify import sniff
from isyb.cli import main
from isyb.errors import IsybError
from isyb.synthetic.demo import build_demo_dataset

T1W = "sub-01/anat/sub-01_T1w.nii.gz"

#: (path planted in the dataset, how: a face image, a link to one outside, or a huge sidecar)
PLANTED = [
    ("sub-01/anat/sub-01_T1w.nii.gz.orig", "face"),
    ("sub-01/anat/old/sub-01_T1w.nii.gz", "face"),
    ("sub-01/sub-01_T1w.nii.gz", "face"),
    ("sub-01/func/sub-01_T1w.nii.gz", "face"),
    ("sub-01/func/sub-01_task-rest_bold.nii.gz", "face"),
    ("sub-01/anat/sub-01_T1w.mgz", "face"),
    ("sub-01/anat/sub-01_scan.dat", "face"),
    ("sub-01/anat/sub-01_acq-ign_T1w.nii.gz", "face"),
    ("sourcedata/sub-01/anat/sub-01_T1w.nii.gz", "face"),
    ("derivatives/other/sub-01/anat/sub-01_desc-preproc_T1w.nii.gz", "face"),
    ("sub-01/anat/sub-01_T2w.nii.gz", "outside link"),
    ("sub-01/anat/sub-01_acq-huge_T1w.json", "huge sidecar"),
]
#: A malformed sidecar is not withheld but refused (exit 2, nothing written): see
#: ``test_a_malformed_sidecar_is_refused_before_any_work``.
UPPER = "sub-01/anat/sub-01_acq-up_T1w.NII.GZ"
#: What the release needs of a template when nothing is defaced (``--skip deface``): its
#: name and digest; preparing the real one would cost a minute.
STUB_TEMPLATE = SimpleNamespace(name="stub", info={"head_sha256": "0" * 64})


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def voxel_digest(path: Path) -> str | None:
    """SHA-256 of an image's voxel array (whatever its header or compression), else None."""
    kind = sniff(path)
    if kind not in ("nifti1", "nifti2", "mgh"):
        return None
    raw = path.read_bytes()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    image = (nib.MGHImage if kind == "mgh" else nib.Nifti1Image if kind == "nifti1"
             else nib.Nifti2Image).from_bytes(raw)
    return sha256(np.ascontiguousarray(np.asarray(image.dataobj)).tobytes())


@functools.cache
def _face(source: Path) -> nib.Nifti1Image:
    image = nib.load(str(source))
    return nib.Nifti1Image(np.asarray(image.dataobj), image.affine, image.header)


def face_variant(source: Path, marker: int, mgh: bool = False) -> bytes:
    """The phantom's face with one marker voxel changed: a unique file and voxel hash."""
    image = _face(source)
    data = np.asarray(image.dataobj).copy()
    data.flat[0] = marker
    out = (nib.MGHImage(data.astype(np.float32), image.affine) if mgh
           else nib.Nifti1Image(data, image.affine, image.header))
    return gzip.compress(out.to_bytes(), compresslevel=1, mtime=0)


def plant(root: Path, outside: Path) -> dict[str, tuple[str, str | None]]:
    """Plant every case; return path -> (file hash, voxel hash) of each planted file."""
    source = root / T1W
    (root / ".bidsignore").write_text("*_acq-ign_*\n")
    planted = {}
    for index, (relative, how) in enumerate(PLANTED, start=1):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if how == "face":
            path.write_bytes(face_variant(source, 1000 + index, mgh=path.suffix == ".mgz"))
        elif how == "outside link":
            outside.write_bytes(face_variant(source, 1000 + index))
            path.symlink_to(outside)
        else:
            path.write_text(json.dumps({"Blob": "x" * (3 << 20)}))
        target = outside if how == "outside link" else path
        planted[relative] = (sha256(target.read_bytes()), voxel_digest(target))
    return planted


def assert_nothing_planted_in(out: Path, planted: dict[str, tuple[str, str | None]],
                              withheld: Path) -> None:
    files = {sha for sha, _ in planted.values()}
    voxels = {v for _, v in planted.values() if v}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        relative = path.relative_to(out).as_posix()
        assert sha256(path.read_bytes()) not in files, relative
        assert voxel_digest(path) not in voxels, relative
    rows = dict(line.split("\t") for line in withheld.read_text().splitlines()[1:])
    assert set(planted) <= set(rows), sorted(set(planted) - set(rows))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fuzz")
    bids = build_demo_dataset(root / "bids", n_subjects=1)
    coarser_demo_t1w(bids, 1, PLUMBING_T1W_MM)
    planted = plant(bids, root / "outside_T1w.nii.gz")
    (bids / UPPER).write_bytes(face_variant(bids / T1W, 7))
    (bids / "sub-01" / "sub-01_scans.tsv").write_text(
        "filename\tacq_time\n" + "".join(f"{p.removeprefix('sub-01/')}\tn/a\n" for p in (
            T1W, UPPER, *[p for p, _ in PLANTED if p.startswith("sub-01/")])))
    return {"root": root, "bids": bids, "planted": planted}


def test_release_withholds_every_planted_file(fuzzed: dict) -> None:
    root, bids = fuzzed["root"], fuzzed["bids"]
    out, work = root / "release", root / "release_work"
    options = ReleaseOptions(skip=frozenset({"deface", "qc", "derive"}))
    release_participants(bids, out, work, STUB_TEMPLATE, options, progress=False)
    # A file an older isyb (or a person) left in the release is removed when the subject
    # is published again, here after its input changed.
    stale = out / "sub-01" / "anat" / "sub-01_T1w.nii.gz.orig"
    stale.write_bytes((bids / PLANTED[0][0]).read_bytes())
    sidecar = bids / "sub-01" / "anat" / "sub-01_T1w.json"
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "EchoTime": 0.0031}))
    records = release_participants(bids, out, work, STUB_TEMPLATE, options, progress=False)
    assert [r["subject"] for r in records] == ["01"]
    summary = release_group(bids, out, work, STUB_TEMPLATE, options)
    assert_nothing_planted_in(out, fuzzed["planted"], work / "withheld.tsv")
    assert not stale.exists()
    assert not (out / "derivatives" / "isyb" / "withheld.tsv").exists()  # names stay private
    assert sum(summary["withheld"].values()) == len(PLANTED) + 1  # and .bidsignore itself
    assert summary["withheld"]["symlink leading outside the dataset"] == 1
    assert (out / T1W).is_file() and (out / "participants.tsv").is_file()
    # --skip deface: the anatomical images are copied as they are, the .NII.GZ one named
    # with its extension in lower case
    lower = UPPER.replace(".NII.GZ", ".nii.gz")
    assert (out / lower).read_bytes() == (bids / UPPER).read_bytes()
    assert not (out / UPPER).exists()
    # scans.tsv lists only what is in the release, as it is named there
    scans = (out / "sub-01" / "sub-01_scans.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in scans[1:]] == [
        "anat/sub-01_T1w.nii.gz", "anat/sub-01_acq-up_T1w.nii.gz"]


def test_path_traversal_in_participants_is_refused(fuzzed: dict, tmp_path: Path) -> None:
    bids = tmp_path / "bids"
    bids.mkdir()
    for name in ("dataset_description.json", "README"):
        (bids / name).write_bytes((fuzzed["bids"] / name).read_bytes())
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / T1W).write_bytes((fuzzed["bids"] / T1W).read_bytes())
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-../../outside\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(IsybError, match=r"participants\.tsv"):
        release_participants(bids, tmp_path / "out", tmp_path / "work", STUB_TEMPLATE,
                             ReleaseOptions(skip=frozenset({"deface", "qc", "derive"})),
                             progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_deface_dataset_defaces_or_withholds_every_face(fuzzed: dict,
                                                       default_template) -> None:
    root, bids = fuzzed["root"], fuzzed["bids"]
    undefaced = dict(fuzzed["planted"])
    for relative in (T1W, UPPER):
        undefaced[relative] = (sha256((bids / relative).read_bytes()),
                               voxel_digest(bids / relative))
    out = root / "defaced"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main(["deface", str(bids), str(out), "--quiet"])
    assert code == 0, stderr.getvalue()
    assert "Traceback" not in stderr.getvalue()
    withheld = out / "derivatives" / "isyb" / "withheld.tsv"
    files = {sha for sha, _ in undefaced.values()}
    voxels = {v for _, v in undefaced.values() if v}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        relative = path.relative_to(out).as_posix()
        assert sha256(path.read_bytes()) not in files, relative
        assert voxel_digest(path) not in voxels, relative
    rows = dict(line.split("\t") for line in withheld.read_text().splitlines()[1:])
    assert set(fuzzed["planted"]) <= set(rows)
    for relative in (T1W, UPPER.replace(".NII.GZ", ".nii.gz")):
        assert nib.load(str(out / relative)).shape == nib.load(str(bids / T1W)).shape
    record = json.loads((out / "derivatives/isyb/logs/sub-01.json").read_text())
    assert [i["status"] for i in record["images"]] == ["ok", "ok"]
    assert not [p for p in out.rglob("*") if ".part" in p.name]


@pytest.mark.parametrize("command", [["deface"], []], ids=["deface", "bids-app"])
def test_a_bad_release_policy_is_refused_before_any_work(fuzzed: dict, tmp_path: Path,
                                                         command: list[str],
                                                         capsys) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text('{"deface": ["T1w"]}')
    out = tmp_path / "out"
    level = [] if command else ["participant"]
    code = main([*command, str(fuzzed["bids"]), str(out), *level, "--release-policy",
                 str(policy)])
    assert_one_line_error(code, capsys.readouterr().err, "policy.json", "release policy")
    assert not out.exists() and not (tmp_path / "out_work").exists()


@pytest.mark.parametrize("command", [["deface"], []], ids=["deface", "bids-app"])
@pytest.mark.parametrize("text", [
    '{"RepetitionTime": 2.3,',
    # json.loads keeps the last value; the raw file would publish the first
    '{"SeriesDescription": "Ottoline Whitcombe", "SeriesDescription": "rest"}',
], ids=["truncated", "key-twice"])
def test_a_malformed_sidecar_is_refused_before_any_work(tmp_path: Path, command: list[str],
                                                        text: str, capsys) -> None:
    bids = build_demo_dataset(tmp_path / "bids", n_subjects=1)
    (bids / "sub-01" / "anat" / "sub-01_T1w.json").write_text(text)
    out = tmp_path / "out"
    level = [] if command else ["participant"]
    code = main([*command, str(bids), str(out), *level])
    assert_one_line_error(code, capsys.readouterr().err, "sub-01_T1w.json", "JSON")
    assert not out.exists() and not (tmp_path / "out_work").exists()


@pytest.mark.parametrize("name", ["dataset_description.json", "participants.tsv", "README"])
def test_a_top_level_file_linked_from_outside_is_refused(tmp_path: Path, name: str,
                                                         capsys) -> None:
    """isyb reads these files itself, so withholding them is not enough: it refuses."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    (bids / "participants.tsv").write_text("participant_id\nsub-01\n")
    (bids / "README").write_text("x\n")
    (bids / "sub-01" / "anat").mkdir(parents=True)
    outside = tmp_path / f"outside_{name}"
    outside.write_bytes((bids / name).read_bytes())
    (bids / name).unlink()
    (bids / name).symlink_to(outside)
    out = tmp_path / "out"
    code = main(["deface", str(bids), str(out)])
    assert_one_line_error(code, capsys.readouterr().err, name, "outside the dataset")
    assert not out.exists()
