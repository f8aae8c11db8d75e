"""The study cohort: one T1w image per subject of a BIDS dataset, and its subsets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from isyb.errors import IsybError
from isyb.io import IMAGE_SUFFIXES

DEFAULT_SPLIT = "discovery:0.5,validation:0.5"


def find_t1w(bids_dir: Path) -> dict[str, Path]:
    """The first T1w image (sorted by path, sessions included) of every subject."""
    if not (bids_dir / "dataset_description.json").is_file():
        raise IsybError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    found: dict[str, Path] = {}
    for path in sorted(bids_dir.glob("sub-*/**/anat/*_T1w*")):
        if not path.name.endswith(IMAGE_SUFFIXES):
            continue
        subject = path.relative_to(bids_dir).parts[0].removeprefix("sub-")
        found.setdefault(subject, path)
    if not found:
        raise IsybError(f"{bids_dir}: no sub-*/anat/*_T1w image found")
    return found


def read_participants(bids_dir: Path) -> pd.DataFrame | None:
    """``participants.tsv`` indexed by label without ``sub-``, or None if absent."""
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t", dtype=str)
    if "participant_id" not in table:
        raise IsybError(f"{path}: no participant_id column")
    table.index = table["participant_id"].str.removeprefix("sub-")
    return table


def parse_split(text: str) -> list[tuple[str, float]]:
    """``"discovery:89,validation:126"`` (counts) or ``"a:0.4,b:0.6"`` (fractions)."""
    parts = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*:\s*([0-9.]+)\s*", item)
        if not match:
            raise IsybError(f"bad --split item {item!r}: expected NAME:SIZE, e.g. "
                            "discovery:89,validation:126")
        parts.append((match.group(1), float(match.group(2))))
    if len({name for name, _ in parts}) != len(parts):
        raise IsybError(f"--split {text!r} names a subset twice")
    return parts


def split_counts(parts: list[tuple[str, float]], n: int) -> list[tuple[str, int]]:
    """Subset sizes for ``n`` subjects: counts must sum to n; fractions to 1."""
    sizes = np.array([size for _, size in parts])
    if np.all(sizes == np.round(sizes)) and np.all(sizes >= 1):
        if int(sizes.sum()) != n:
            raise IsybError(f"--split sizes sum to {int(sizes.sum())} but the cohort has "
                            f"{n} subjects")
        counts = sizes.astype(int)
    else:
        if not np.isclose(sizes.sum(), 1.0, atol=1e-6):
            raise IsybError(f"--split fractions sum to {sizes.sum():g}, not 1")
        exact = sizes * n
        counts = np.floor(exact).astype(int)
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[: n - counts.sum()]] += 1
    return [(name, int(count)) for (name, _), count in zip(parts, counts, strict=True)]


def assign_subsets(subjects: list[str], *, split: str | None = None, column: str | None = None,
                   participants: pd.DataFrame | None = None, seed: int = 0) -> dict[str, str]:
    """Subset of each subject: seeded random split by sizes, or a participants column."""
    if column is not None:
        if participants is None or column not in participants:
            raise IsybError(f"--split-column {column!r}: no such column in participants.tsv")
        missing = [s for s in subjects if s not in participants.index]
        if missing:
            raise IsybError(f"participants.tsv lacks subject(s) {', '.join(missing[:5])}")
        values = participants.loc[subjects, column]
        if values.isna().any():
            raise IsybError(f"participants.tsv column {column!r} is empty for some subjects")
        return {s: str(values[s]) for s in subjects}
    counts = split_counts(parse_split(split or DEFAULT_SPLIT), len(subjects))
    order = np.random.default_rng(seed).permutation(sorted(subjects))
    out: dict[str, str] = {}
    start = 0
    for name, count in counts:
        for subject in order[start:start + count]:
            out[str(subject)] = name
        start += count
    return out
