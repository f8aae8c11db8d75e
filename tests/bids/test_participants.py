"""participants.tsv checks and `isyb split` (seeded, stratified subsets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error
from isyb.bids.participants import assign_split, strata_labels, validate_participants
from isyb.cli import main
from isyb.errors import IsybError


def _dataset(root: Path, n: int, *, table: pd.DataFrame | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "p", "BIDSVersion": "1.9.0"}')
    for i in range(1, n + 1):
        (root / f"sub-{i:03d}" / "anat").mkdir(parents=True, exist_ok=True)
    if table is not None:
        table.to_csv(root / "participants.tsv", sep="\t", index=False)
    return root


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(1, n + 1)],
                         "age": rng.integers(18, 30, n).astype(str),
                         "sex": rng.choice(["M", "F"], n, p=[0.3, 0.7]),
                         "site": "a"})


def test_validation_errors(tmp_path: Path) -> None:
    table = _table(5)
    root = _dataset(tmp_path / "a", 5, table=table)
    assert list(validate_participants(root)["site"]) == ["a"] * 5  # extra columns kept
    root = _dataset(tmp_path / "b", 4, table=table)
    with pytest.raises(IsybError, match=r"names subject.* not in the dataset: sub-005"):
        validate_participants(root)
    root = _dataset(tmp_path / "c", 6, table=table)
    with pytest.raises(IsybError, match=r"lacks subject.*sub-006"):
        validate_participants(root)
    bad = table.copy()
    bad.loc[2, "age"] = "twenty"
    with pytest.raises(IsybError, match="age must be a number"):
        validate_participants(_dataset(tmp_path / "d", 5, table=bad))
    bad = table.copy()
    bad.loc[1, "sex"] = "X"
    with pytest.raises(IsybError, match="sex must be one of"):
        validate_participants(_dataset(tmp_path / "e", 5, table=bad))
    with pytest.raises(IsybError, match="not a BIDS dataset"):
        validate_participants(tmp_path)


def test_stratified_split_meets_sizes_and_balances_strata() -> None:
    table = _table(215, seed=4).set_index(
        pd.Index([f"{i:03d}" for i in range(1, 216)]))
    subjects = list(table.index)
    strata = strata_labels(table, subjects, ["sex"])
    subsets = assign_split(subjects, "discovery:89,validation:126", seed=1, strata=strata)
    assert assign_split(subjects, "discovery:89,validation:126", seed=1,
                        strata=strata) == subsets  # reproducible
    names = pd.Series(subsets)
    assert names.value_counts().to_dict() == {"validation": 126, "discovery": 89}
    women = table["sex"] == "F"
    share = {name: women[names.index[names == name]].mean() for name in ("discovery",
                                                                        "validation")}
    # exact counts by hand: the women of each subset differ from the cohort share by < 1 person
    for name, size in (("discovery", 89), ("validation", 126)):
        assert abs(share[name] * size - women.mean() * size) < 1.0
    ages = strata_labels(table, subjects, ["sex", "age"], age_bins=3)
    assert len(set(ages)) == 6
    both = pd.Series(assign_split(subjects, "a:0.4,b:0.6", seed=2, strata=ages))
    assert both.value_counts().to_dict() == {"b": 129, "a": 86}


def test_split_cli_writes_a_column_and_never_changes_the_input_unless_asked(
        tmp_path: Path, capsys) -> None:
    root = _dataset(tmp_path / "bids", 20, table=_table(20))
    before = (root / "participants.tsv").read_text()
    out = tmp_path / "split.tsv"
    assert main(["split", str(root), "--sizes", "d:8,v:12", "--seed", "3", "--stratify",
                 "sex", "--output", str(out)]) == 0
    assert (root / "participants.tsv").read_text() == before
    table = pd.read_csv(out, sep="\t", dtype=str)
    assert table["subset"].value_counts().to_dict() == {"v": 12, "d": 8}
    assert list(table.columns) == ["participant_id", "age", "sex", "site", "subset"]
    assert main(["split", str(root), "--sizes", "d:8,v:12", "--seed", "3", "--stratify",
                 "sex", "--in-place"]) == 0
    assert (root / "participants.tsv").read_text() == out.read_text()
    described = json.loads((root / "participants.json").read_text())["subset"]
    assert set(described["Levels"]) == {"d", "v"} and "seed 3" in described["Description"]
    capsys.readouterr()
    no_table = _dataset(tmp_path / "bare", 4)
    assert main(["split", str(no_table), "--sizes", "a:2,b:2"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == "participant_id\tsubset"
    code = main(["split", str(no_table), "--sizes", "a:2,b:3"])
    assert_one_line_error(code, capsys.readouterr().err, "sum to 5", "4 subjects")
