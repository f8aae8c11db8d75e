"""Release staging: OUTPUT_DIR never holds an unscrubbed file, even when the participant level
is killed, and the group level refuses to finish until every subject is done.

The steps that cost minutes are skipped (``--skip deface qc derive``: the images are copied,
the scrub is never skipped); a kill is simulated in process at the worst moments: before a
subject is scrubbed, and halfway through moving its scrubbed files into OUTPUT_DIR. A real
SIGKILL mid-deface is tested with the kill-and-resume test of test_release.py (one real run
for both).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from isyb.app import release
from isyb.cli import main
from isyb.synthetic.demo import build_demo_dataset

PLANTED = "Planted^Person"
CHEAP = ["--skip", "deface", "qc", "derive", "--quiet"]


@pytest.fixture
def bids(tmp_path: Path) -> Path:
    """Two phantom subjects whose sidecars name the person and the acquisition date."""
    root = build_demo_dataset(tmp_path / "bids", n_subjects=2)
    for sidecar in root.glob("sub-*/anat/*.json"):
        metadata = json.loads(sidecar.read_text())
        metadata.update(PatientName=PLANTED, AcquisitionDateTime="2024-05-10T09:15:00")
        sidecar.write_text(json.dumps(metadata))
    return root


def _contents(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _unscrubbed(root: Path) -> list[str]:
    return [name for name, data in _contents(root).items() if PLANTED.encode() in data]


def _sidecars(root: Path) -> dict[str, bytes]:
    return {k: v for k, v in _contents(root).items() if k.startswith("sub-")}


def _same_key(tmp_path: Path) -> None:
    """Give the release the reference's date-shift key, so that their dates can be compared."""
    (tmp_path / "release_work").mkdir()
    key = tmp_path / "release_work" / "scrub.key"
    key.write_bytes((tmp_path / "reference_work" / "scrub.key").read_bytes())
    key.chmod(0o600)


def _killed_at(monkeypatch: pytest.MonkeyPatch, name: str, subject: str, after: int = 0):
    """Make ``release.<name>`` raise KeyboardInterrupt (a kill) for ``subject``, after letting
    ``after`` calls of the function it wraps through."""
    original = getattr(release, name)
    calls = []

    def killed(*args, **kwargs):
        if f"sub-{subject}" in str(args[0]):
            calls.append(1)
            if len(calls) > after:
                raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(release, name, killed)


def test_a_kill_before_the_scrub_leaves_no_unscrubbed_file_and_the_group_refuses(
        bids: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_template,
        capsys) -> None:
    reference = tmp_path / "reference"
    assert main([str(bids), str(reference), "participant", *CHEAP]) == 0
    assert main([str(bids), str(reference), "group"]) == 0
    out = tmp_path / "release"
    _same_key(tmp_path)
    with monkeypatch.context() as patch:
        _killed_at(patch, "scrub_in_place", "02")
        assert main([str(bids), str(out), "participant", *CHEAP]) == 130
    assert (out / "sub-01").is_dir() and not (out / "sub-02").exists()
    assert _unscrubbed(out) == []
    assert _unscrubbed(tmp_path / "release_work" / "stage") != []  # staged, outside the release
    capsys.readouterr()
    assert main([str(bids), str(out), "group"]) == 1
    assert "sub-02" in capsys.readouterr().err
    summary = json.loads((out / "derivatives/isyb/release_summary.json").read_text())
    assert summary["complete"] is False
    assert summary["participant_level_missing"] == ["sub-02"]
    # the rerun resumes (sub-01 is not redone) and gives the release of an unkilled run
    manifest = tmp_path / "release_work" / "manifest" / "sub-01.json"
    finished = manifest.read_text()
    assert main([str(bids), str(out), "participant", *CHEAP]) == 0
    assert manifest.read_text() == finished
    assert main([str(bids), str(out), "group"]) == 0
    assert json.loads((out / "derivatives/isyb/release_summary.json").read_text())["complete"]
    assert not (tmp_path / "release_work" / "stage" / "sub-02").exists()
    assert _sidecars(out) == _sidecars(reference)


def test_a_kill_while_moving_into_the_release_never_scrubs_a_file_twice(
        bids: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, default_template) -> None:
    """Half the files moved: the rerun scrubs a fresh copy, so no date is shifted twice."""
    reference = tmp_path / "reference"
    assert main([str(bids), str(reference), "participant", *CHEAP]) == 0
    out = tmp_path / "release"
    _same_key(tmp_path)
    original = release.os.replace
    moved = []

    def killed_replace(source, target) -> None:
        if Path(target).is_relative_to(out / "sub-02"):  # a move into the release
            if moved:
                raise KeyboardInterrupt
            moved.append(target)
        original(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(release.os, "replace", killed_replace)
        assert main([str(bids), str(out), "participant", *CHEAP]) == 130
    assert len(moved) == 1 and _unscrubbed(out) == []
    assert main([str(bids), str(out), "participant", *CHEAP]) == 0
    assert _sidecars(out) == _sidecars(reference)
    assert _unscrubbed(out) == []


def test_a_rerun_after_an_input_change_replaces_the_subject_whole(
        bids: Path, tmp_path: Path, default_template) -> None:
    out = tmp_path / "release"
    assert main([str(bids), str(out), "participant", *CHEAP]) == 0
    (bids / "sub-02" / "anat" / "sub-02_T1w.json").unlink()
    assert main([str(bids), str(out), "participant", *CHEAP]) == 0
    assert not (out / "sub-02" / "anat" / "sub-02_T1w.json").exists()  # no stale copy
    assert (out / "sub-02" / "anat" / "sub-02_T1w.nii.gz").is_file()
    assert (out / "sub-01" / "anat" / "sub-01_T1w.json").is_file()


def test_the_release_date_follows_source_date_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """reproducible-builds.org's convention: the UTC date of SOURCE_DATE_EPOCH, today's date
    without it, and a one-line error for a value that is not whole seconds."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796515199")  # 2026-12-05 23:59:59 UTC
    assert release.release_date() == "2026-12-05"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796515200")
    assert release.release_date() == "2026-12-06"
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert release.release_date() == release.dt.date.today().isoformat()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(release.IsybError, match="SOURCE_DATE_EPOCH must be whole seconds"):
        release.release_date()
