"""The leak scan reads a DWI gradient table as numbers, not as identifying text.

A ``bval`` line such as ``0 1000 1000 1000`` matches the phone-number pattern, so every
release of a dataset with DWI was marked incomplete (three "phone" findings in the
released copy of the table). A table that holds anything but numbers is still searched.
"""

from __future__ import annotations

import json
from pathlib import Path

from isyb.bids.leaks import collect_identifiers, dataset_needles, scan_release
from isyb.bids.scrub import load_policy


def _dataset(root: Path, bval: str) -> Path:
    dwi = root / "sub-01" / "dwi"
    dwi.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "gradients", "BIDSVersion": "1.9.0"}))
    (dwi / "sub-01_dwi.bval").write_text(bval)
    (dwi / "sub-01_dwi.bvec").write_text("0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    return root


def test_a_gradient_table_is_not_an_identifier_and_its_copy_is_no_leak(tmp_path: Path) -> None:
    policy = load_policy()
    bids = _dataset(tmp_path / "bids", "0 1000 1000 1000\n")
    found, _ = collect_identifiers(bids, policy)
    assert found == []
    assert scan_release(bids, dataset_needles(bids, policy), policy) == []


def test_text_in_a_gradient_table_is_still_searched(tmp_path: Path) -> None:
    bids = _dataset(tmp_path / "bids", "0 1000 1000 1000\ncall 0171 555 0199\n")
    found, _ = collect_identifiers(bids, load_policy())
    assert [i.kind for i in found] != []
    assert {i.source for i in found} == {"sub-01/dwi/sub-01_dwi.bval"}
