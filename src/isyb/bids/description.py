"""Pieces of ``dataset_description.json`` shared by every dataset isyb writes."""

from __future__ import annotations

from pathlib import Path


def source_dataset(bids_dir: Path, description: dict) -> dict:
    """The input dataset as a ``SourceDatasets`` entry: its DOI when it has one, else its
    folder name (never the absolute local path, which can name a person or a site)."""
    if description.get("DatasetDOI"):
        return {"DOI": description["DatasetDOI"]}
    return {"URL": f"file:{bids_dir.resolve().name}"}
