"""Cortical thickness, surface area, grey-matter volume and LGI from FreeSurfer outputs.

isyb does not run or reimplement FreeSurfer: it reads a subject of a
FreeSurfer ``SUBJECTS_DIR`` with nibabel and summarises FreeSurfer's own
per-vertex maps over the regions of a parcellation (``label/{hemi}.aparc.annot``
by default), the way ``mris_anatomical_stats`` builds ``stats/{hemi}.aparc.stats``:

- ``thickness``: mean of ``surf/{hemi}.thickness`` (mm) over the region's
  vertices. This is FreeSurfer's ThickAvg, an unweighted vertex mean
  (mris_anatomical_stats.cpp sums the vertex thicknesses and divides by the
  vertex count; it is not area-weighted).
- ``area``: sum of ``surf/{hemi}.area`` (mm², white-surface vertex areas,
  each a third of its faces' areas), FreeSurfer's SurfArea.
- ``volume``: sum of ``surf/{hemi}.volume`` (mm³, the per-vertex grey-matter
  volume between white and pial surfaces), FreeSurfer's GrayVol (FreeSurfer
  6+, which computes GrayVol from the same TH3 vertex volumes).
- ``lgi``: mean of ``surf/{hemi}.pial_lgi`` (local gyrification index,
  unitless). It exists only where FreeSurfer's ``recon-all -localGI`` (which
  needs Matlab) was run; when it is missing the value is NaN and the row's
  ``note`` says why.
- ``vertices``: the region's vertex count (NumVert).

Like mris_anatomical_stats, the regions ``unknown``, ``corpuscallosum``,
``Unknown`` and ``Medial_wall`` (not cortex) and vertices outside the colour
table are left out. Each hemisphere also gets a ``cortex`` row: the same
summaries over all its reported regions together.

:func:`read_aparc_stats` reads the table FreeSurfer itself wrote, to report
its numbers as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from isyb.errors import IsybError

HEMISPHERES = ("lh", "rh")
NOT_CORTEX = ("unknown", "corpuscallosum", "Unknown", "Medial_wall")
METRICS = {  # metric: (file suffix in surf/, summary over a region, unit)
    "thickness": ("thickness", "mean", "mm"),
    "area": ("area", "sum", "mm^2"),
    "volume": ("volume", "sum", "mm^3"),
    "lgi": ("pial_lgi", "mean", "unitless"),
}
UNITS = {metric: unit for metric, (_, _, unit) in METRICS.items()} | {"vertices": "count"}
OPTIONAL = ("lgi",)
COLUMNS = ("subject", "hemi", "region", "metric", "value", "unit", "note")


class SurfaceInputError(IsybError, ValueError):
    """A FreeSurfer subject or stats file that cannot be read."""


def region_summary(labels: np.ndarray, names: Sequence[str],
                   maps: Mapping[str, np.ndarray | None]) -> pd.DataFrame:
    """Per-region summaries of per-vertex maps: columns region, metric, value.

    ``labels`` holds each vertex's index into ``names`` (-1: no region);
    ``maps`` has per-vertex arrays keyed by :data:`METRICS` names (``None``
    for a missing map: NaN). Regions come in ``names`` order, then
    ``cortex`` (all reported regions); empty and non-cortex regions are left out.
    """
    labels = np.asarray(labels)
    kept = [index for index, name in enumerate(names)
            if name not in NOT_CORTEX and np.any(labels == index)]
    regions = [(names[index], labels == index) for index in kept]
    regions.append(("cortex", np.isin(labels, kept)))
    rows = []
    for region, mask in regions:
        rows.append((region, "vertices", float(mask.sum())))
        for metric, values in maps.items():
            if values is None or not mask.any():
                rows.append((region, metric, np.nan))
                continue
            how = METRICS[metric][1]
            selected = np.asarray(values, dtype=np.float64)[mask]
            rows.append((region, metric, float(selected.sum() if how == "sum"
                                               else selected.mean())))
    return pd.DataFrame(rows, columns=["region", "metric", "value"])


def _read_map(path: Path, n_vertices: int) -> np.ndarray:
    from nibabel.freesurfer import read_morph_data

    try:
        values = read_morph_data(str(path))
    except (ValueError, OSError, IndexError) as exc:
        raise SurfaceInputError(f"{path}: not a FreeSurfer per-vertex file ({exc})") from None
    if values.shape != (n_vertices,):
        raise SurfaceInputError(f"{path}: {values.size} values for the {n_vertices} vertices "
                                "of the annotation (files of different surfaces?)")
    return values


def _read_annotation(path: Path) -> tuple[np.ndarray, list[str]]:
    from nibabel.freesurfer import read_annot

    if not path.is_file():
        raise SurfaceInputError(f"{path}: missing; the parcellation is needed for regions")
    try:
        labels, _, names = read_annot(str(path))
    except (ValueError, OSError, IndexError) as exc:
        raise SurfaceInputError(f"{path}: not a FreeSurfer annotation ({exc})") from None
    return labels, [name.decode() if isinstance(name, bytes) else str(name) for name in names]


def read_surface_metrics(subjects_dir: str | Path, subject: str, *,
                         parcellation: str = "aparc") -> pd.DataFrame:
    """CT, SA, GMV, LGI and vertex counts per hemisphere and region of one FreeSurfer subject.

    A tidy table with columns subject, hemi, region, metric (``vertices``,
    ``thickness``, ``area``, ``volume``, ``lgi``), value, unit and note (empty,
    or why a value is NaN). Reads ``{subjects_dir}/{subject}/label/
    {hemi}.{parcellation}.annot`` and ``surf/{hemi}.{thickness,area,volume}``
    (required) and ``surf/{hemi}.pial_lgi`` (optional).
    """
    folder = Path(subjects_dir) / subject
    if not folder.is_dir():
        raise SurfaceInputError(f"{folder}: FreeSurfer subject folder not found")
    tables = []
    for hemi in HEMISPHERES:
        labels, names = _read_annotation(folder / "label" / f"{hemi}.{parcellation}.annot")
        maps: dict[str, np.ndarray | None] = {}
        notes: dict[str, str] = {}
        for metric, (suffix, _, _) in METRICS.items():
            path = folder / "surf" / f"{hemi}.{suffix}"
            if path.is_file():
                maps[metric] = _read_map(path, labels.size)
            elif metric in OPTIONAL:
                maps[metric] = None
                notes[metric] = (f"surf/{hemi}.{suffix} missing: FreeSurfer's localGI "
                                 "(recon-all -localGI, needs Matlab) was not run")
            else:
                raise SurfaceInputError(f"{path}: missing; FreeSurfer's recon-all writes it")
        table = region_summary(labels, names, maps)
        table.insert(0, "hemi", hemi)
        table["unit"] = table["metric"].map(UNITS)
        table["note"] = [notes.get(metric, "") for metric in table["metric"]]
        tables.append(table)
    out = pd.concat(tables, ignore_index=True)
    out.insert(0, "subject", subject)
    return out[list(COLUMNS)]


def read_aparc_stats(path: str | Path) -> pd.DataFrame:
    """The region table of a FreeSurfer ``stats/{hemi}.aparc.stats`` file, as FreeSurfer wrote it.

    Columns are those of its ``# ColHeaders`` line (StructName NumVert
    SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd CurvInd for
    aparc: mm², mm³, mm); StructName stays text, the rest are numbers.
    ``attrs["measures"]`` holds the header's ``# Measure`` lines (e.g.
    MeanThickness, WhiteSurfArea) as {name: value}.
    """
    path = Path(path)
    if not path.is_file():
        raise SurfaceInputError(f"{path}: FreeSurfer stats file not found")
    columns: list[str] | None = None
    measures: dict[str, float] = {}
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.startswith("# ColHeaders"):
            columns = line.split()[2:]
        elif line.startswith("# Measure"):
            fields = [field.strip() for field in line[len("# Measure"):].split(",")]
            try:
                measures[fields[1]] = float(fields[3])
            except (IndexError, ValueError):
                raise SurfaceInputError(f"{path}:{number}: a '# Measure' line without "
                                        "'structure, name, description, value'") from None
        elif line.strip() and not line.startswith("#"):
            if columns is None:
                raise SurfaceInputError(f"{path}:{number}: a table row before the "
                                        "'# ColHeaders' line")
            values = line.split()
            if len(values) != len(columns):
                raise SurfaceInputError(f"{path}:{number}: {len(values)} fields, the header "
                                        f"names {len(columns)}")
            rows.append(values)
    if columns is None:
        raise SurfaceInputError(f"{path}: no '# ColHeaders' line; not a FreeSurfer stats table")
    table = pd.DataFrame(rows, columns=columns)
    for column in columns[1:]:
        try:
            table[column] = pd.to_numeric(table[column])
        except ValueError as exc:
            raise SurfaceInputError(f"{path}: column {column} is not numeric ({exc})") from None
    table.attrs["measures"] = measures
    return table
