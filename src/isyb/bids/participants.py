"""``participants.tsv``: reading, checking against the subjects on disk, and subsets.

The discovery/validation split of the data descriptor is a seeded random
assignment of sizes given as counts (``discovery:89,validation:126``) or
fractions (``a:0.4,b:0.6``). With ``stratify`` it is made within strata
(sex, age bins, or their combination) so that each subset has about the
cohort's proportions; the requested sizes are still met exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from isyb.bids.layout import collect_participants, read_table
from isyb.errors import IsybError

SEX_VALUES = {"m", "male", "f", "female", "o", "other", "n/a"}


def read_participants(bids_dir: Path) -> pd.DataFrame | None:
    """``participants.tsv`` indexed by label without ``sub-``, or None if absent."""
    path = bids_dir / "participants.tsv"
    if not path.is_file():
        return None
    read_table(path)
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "participant_id" not in table:
        raise IsybError(f"{path}: no participant_id column")
    table.index = table["participant_id"].str.removeprefix("sub-")
    return table


def validate_participants(bids_dir: Path) -> pd.DataFrame | None:
    """Check ``participants.tsv`` against the subjects on disk; return it (or None).

    Errors: a subject listed but absent, a subject on disk but not listed, a
    duplicated ``participant_id``, an ``age`` that is not a number or
    ``n/a``, a ``sex`` outside BIDS' values. Extra columns are kept as they are.
    """
    on_disk = set(collect_participants(bids_dir))
    table = read_participants(bids_dir)
    if table is None:
        return None
    path = bids_dir / "participants.tsv"
    listed = list(table.index)
    duplicated = sorted({s for s in listed if listed.count(s) > 1})
    if duplicated:
        raise IsybError(f"{path}: participant_id repeated: {', '.join(duplicated[:5])}")
    absent = sorted(set(listed) - on_disk)
    if absent:
        raise IsybError(f"{path} names subject(s) not in the dataset: "
                        f"{', '.join('sub-' + s for s in absent[:5])}")
    missing = sorted(on_disk - set(listed))
    if missing:
        raise IsybError(f"{path} lacks subject(s) that are in the dataset: "
                        f"{', '.join('sub-' + s for s in missing[:5])}")
    if "age" in table:
        bad = [v for v in table["age"] if v != "n/a" and not _is_number(v)]
        if bad:
            raise IsybError(f"{path}: age must be a number or n/a, got {bad[0]!r}")
    if "sex" in table:
        bad = [v for v in table["sex"] if v.strip().lower() not in SEX_VALUES]
        if bad:
            raise IsybError(f"{path}: sex must be one of M, F, O, male, female, other or "
                            f"n/a, got {bad[0]!r}")
    return table


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_split(text: str) -> list[tuple[str, float]]:
    """``"discovery:89,validation:126"`` (counts) or ``"a:0.4,b:0.6"`` (fractions)."""
    parts = []
    for item in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*:\s*([0-9.]+)\s*", item)
        if not match:
            raise IsybError(f"bad split item {item!r}: expected NAME:SIZE, e.g. "
                            "discovery:89,validation:126")
        parts.append((match.group(1), float(match.group(2))))
    if len({name for name, _ in parts}) != len(parts):
        raise IsybError(f"split {text!r} names a subset twice")
    return parts


def split_counts(parts: list[tuple[str, float]], n: int) -> list[tuple[str, int]]:
    """Subset sizes for ``n`` subjects: counts must sum to n; fractions to 1."""
    sizes = np.array([size for _, size in parts])
    if np.all(sizes == np.round(sizes)) and np.all(sizes >= 1):
        if int(sizes.sum()) != n:
            raise IsybError(f"split sizes sum to {int(sizes.sum())} but the cohort has "
                            f"{n} subjects")
        counts = sizes.astype(int)
    else:
        if not np.isclose(sizes.sum(), 1.0, atol=1e-6):
            raise IsybError(f"split fractions sum to {sizes.sum():g}, not 1")
        counts = _largest_remainder(sizes * n, n)
    return [(name, int(count)) for (name, _), count in zip(parts, counts, strict=True)]


def _largest_remainder(exact: np.ndarray, total: int) -> np.ndarray:
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def strata_labels(participants: pd.DataFrame, subjects: Sequence[str],
                  stratify: Sequence[str], *, age_bins: int = 4) -> list[str]:
    """One stratum label per subject: its values of ``stratify`` columns joined.

    ``age`` (or any numeric column) is cut into ``age_bins`` quantile bins;
    other columns are used as they are (lower-cased).
    """
    labels = [[] for _ in subjects]
    for column in stratify:
        if column not in participants:
            raise IsybError(f"cannot stratify by {column!r}: no such participants.tsv column")
        values = participants.loc[list(subjects), column]
        numeric = pd.to_numeric(values.replace("n/a", np.nan), errors="coerce")
        if numeric.notna().all() and (column == "age" or values.nunique() > age_bins):
            bins = pd.qcut(numeric, q=min(age_bins, numeric.nunique()), labels=False,
                           duplicates="drop")
            parts = [f"{column}{int(b)}" for b in bins]
        else:
            parts = [str(v).strip().lower() for v in values]
        for label, part in zip(labels, parts, strict=True):
            label.append(part)
    return ["|".join(parts) for parts in labels]


def assign_split(subjects: Sequence[str], split: str, *, seed: int = 0,
                 strata: Sequence[str] | None = None) -> dict[str, str]:
    """Seeded assignment of ``subjects`` to the subsets of ``split``, optionally by strata.

    Without strata: a random permutation cut at the subset sizes. With
    strata: each stratum's share of each subset is its size times the subset's
    fraction, rounded so that both the strata sizes and the subset sizes are
    met exactly (largest fractional parts first), then filled at random.
    """
    subjects = sorted(subjects)
    counts = split_counts(parse_split(split), len(subjects))
    rng = np.random.default_rng(seed)
    if strata is None:
        order = rng.permutation(subjects)
        out, start = {}, 0
        for name, count in counts:
            out.update({str(s): name for s in order[start:start + count]})
            start += count
        return out
    by_subject = dict(zip(subjects, strata, strict=True))
    levels = sorted(set(strata))
    sizes = np.array([sum(1 for s in subjects if by_subject[s] == lev) for lev in levels])
    wanted = np.array([count for _, count in counts])
    exact = np.outer(sizes, wanted) / len(subjects)
    table = np.floor(exact).astype(int)
    rows, cols = sizes - table.sum(axis=1), wanted - table.sum(axis=0)
    for flat in np.argsort(-(exact - table), axis=None, kind="stable"):
        i, k = np.unravel_index(flat, table.shape)
        if rows[i] > 0 and cols[k] > 0:
            table[i, k] += 1
            rows[i] -= 1
            cols[k] -= 1
    while rows.sum() > 0:  # rare: the greedy pass left a deficit; close it anywhere valid
        i, k = int(np.flatnonzero(rows > 0)[0]), int(np.flatnonzero(cols > 0)[0])
        table[i, k] += 1
        rows[i] -= 1
        cols[k] -= 1
    out = {}
    for i, level in enumerate(levels):
        members = rng.permutation([s for s in subjects if by_subject[s] == level])
        start = 0
        for k, (name, _) in enumerate(counts):
            out.update({str(s): name for s in members[start:start + table[i, k]]})
            start += table[i, k]
    return out
