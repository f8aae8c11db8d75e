"""The study cohort: one T1w image per subject of a BIDS dataset, and its subsets."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from isyb.bids.layout import collect_participants, is_image, subject_files
from isyb.bids.participants import assign_split
from isyb.errors import IsybError

DEFAULT_SPLIT = "discovery:0.5,validation:0.5"


def find_t1w(bids_dir: Path) -> dict[str, Path]:
    """The first T1w image (sorted by path, sessions included) of every subject.

    Subjects and files come from :mod:`isyb.bids.layout`; a subject without a
    T1w image is left out of the cohort.
    """
    found: dict[str, Path] = {}
    for subject in collect_participants(bids_dir):
        first = next((item.path for item in subject_files(bids_dir, subject)
                      if item.datatype == "anat" and item.suffix == "T1w"
                      and is_image(item.path)), None)
        if first is not None:
            found[subject] = first
    if not found:
        raise IsybError(f"{bids_dir}: no sub-*/anat/*_T1w image found")
    return found


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
        if values.isna().any() or values.isin(["", "n/a"]).any():
            raise IsybError(f"participants.tsv column {column!r} is empty for some subjects")
        return {s: str(values[s]) for s in subjects}
    return assign_split(subjects, split or DEFAULT_SPLIT, seed=seed)
