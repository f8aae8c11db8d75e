"""FreeSurfer surface metrics: a synthetic subject written with nibabel, summaries by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from nibabel.freesurfer import read_annot, write_annot, write_morph_data

from isyb.derive.surface import SurfaceInputError, read_aparc_stats, read_surface_metrics

NAMES = ["unknown", "precentral", "postcentral", "corpuscallosum", "insula"]
CTAB = np.array([[25, 5, 25, 0], [60, 20, 220, 0], [220, 20, 20, 0], [120, 70, 50, 0],
                 [255, 192, 32, 0]])
# lh: 4 unknown vertices, 4 precentral, 3 postcentral, 1 outside the colour table (-1);
# no corpuscallosum or insula vertex. All values are exact in float32.
LH = {"labels": [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, -1],
      "thickness": [1.0, 1.5, 2.0, 2.5, 2.0, 2.5, 3.0, 3.5, 1.5, 2.0, 4.0, 9.0],
      "area": [0.5, 0.5, 0.5, 0.5, 0.5, 0.75, 1.0, 1.25, 1.0, 1.5, 2.0, 8.0],
      "volume": [1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 0.5, 0.25, 2.25, 7.0],
      "pial_lgi": [1.0, 1.0, 1.0, 1.0, 2.5, 3.0, 3.5, 4.0, 2.0, 2.0, 2.5, 9.0]}
# rh: 6 precentral, 2 corpuscallosum (left out, as FreeSurfer does), no pial_lgi
RH = {"labels": [1, 1, 1, 1, 1, 1, 3, 3],
      "thickness": [2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 0.5, 0.5],
      "area": [1.0] * 8,
      "volume": [2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 0.5, 0.5]}


def _subject(subjects_dir: Path, name: str = "sub-01") -> Path:
    folder = subjects_dir / name
    (folder / "surf").mkdir(parents=True)
    (folder / "label").mkdir()
    for hemi, data in (("lh", LH), ("rh", RH)):
        write_annot(str(folder / "label" / f"{hemi}.aparc.annot"),
                    np.asarray(data["labels"]), CTAB, NAMES)
        for suffix in ("thickness", "area", "volume", "pial_lgi"):
            if suffix in data:
                write_morph_data(str(folder / "surf" / f"{hemi}.{suffix}"),
                                 np.asarray(data[suffix], dtype=np.float32))
    return folder


def _value(table, hemi: str, region: str, metric: str) -> float:
    row = table[(table.hemi == hemi) & (table.region == region) & (table.metric == metric)]
    assert len(row) == 1, (hemi, region, metric)
    return float(row.value.iloc[0])


def test_region_summaries_match_a_hand_computation(tmp_path: Path) -> None:
    _subject(tmp_path)
    labels, _, names = read_annot(str(tmp_path / "sub-01" / "label" / "lh.aparc.annot"))
    assert labels.tolist() == LH["labels"]  # the synthetic annotation round-trips
    assert [name.decode() for name in names] == NAMES
    table = read_surface_metrics(tmp_path, "sub-01")
    assert list(table.columns) == ["subject", "hemi", "region", "metric", "value", "unit",
                                   "note"]
    assert set(table.subject) == {"sub-01"}
    # regions as in aparc.stats: unknown, corpuscallosum and empty regions are left out
    assert table[table.hemi == "lh"].region.unique().tolist() == ["precentral", "postcentral",
                                                                   "cortex"]
    assert table[table.hemi == "rh"].region.unique().tolist() == ["precentral", "cortex"]
    expected = {
        # thickness: unweighted vertex mean (FreeSurfer's ThickAvg); area-weighted would
        # give 10.25 / 3.5 = 2.929 for lh precentral, not 2.75
        ("lh", "precentral"): {"vertices": 4, "thickness": 11.0 / 4, "area": 3.5,
                               "volume": 10.0, "lgi": 13.0 / 4},
        ("lh", "postcentral"): {"vertices": 3, "thickness": 7.5 / 3, "area": 4.5,
                                "volume": 3.0, "lgi": 6.5 / 3},
        ("lh", "cortex"): {"vertices": 7, "thickness": 18.5 / 7, "area": 8.0, "volume": 13.0,
                           "lgi": 19.5 / 7},
        ("rh", "precentral"): {"vertices": 6, "thickness": 2.5, "area": 6.0, "volume": 15.0},
        ("rh", "cortex"): {"vertices": 6, "thickness": 2.5, "area": 6.0, "volume": 15.0},
    }
    for (hemi, region), metrics in expected.items():
        for metric, value in metrics.items():
            assert _value(table, hemi, region, metric) == pytest.approx(value, rel=1e-12)
    units = dict(zip(table.metric, table.unit, strict=False))
    assert units == {"vertices": "count", "thickness": "mm", "area": "mm^2", "volume": "mm^3",
                     "lgi": "unitless"}
    # rh has no pial_lgi: NaN with a note, not an error
    rh_lgi = table[(table.hemi == "rh") & (table.metric == "lgi")]
    assert len(rh_lgi) == 2 and rh_lgi.value.isna().all()
    assert rh_lgi.note.str.contains("surf/rh.pial_lgi missing").all()
    assert (table[table.metric != "lgi"].note == "").all()
    assert (table[(table.hemi == "lh")].note == "").all()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda folder: (folder / "surf" / "rh.thickness").unlink(), r"rh\.thickness: missing"),
    (lambda folder: (folder / "surf" / "lh.volume").unlink(), r"lh\.volume: missing"),
    (lambda folder: (folder / "label" / "lh.aparc.annot").unlink(), r"lh\.aparc\.annot: missing"),
    (lambda folder: write_morph_data(str(folder / "surf" / "lh.area"), np.ones(5, np.float32)),
     "5 values for the 12 vertices"),
    (lambda folder: (folder / "label" / "rh.aparc.annot").write_bytes(b""),
     "not a FreeSurfer annotation"),
])
def test_missing_or_broken_files_are_clear_errors(tmp_path: Path, damage, message: str) -> None:
    damage(_subject(tmp_path))
    with pytest.raises(SurfaceInputError, match=message):
        read_surface_metrics(tmp_path, "sub-01")


def test_missing_subject_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SurfaceInputError, match="sub-02: FreeSurfer subject folder not found"):
        read_surface_metrics(tmp_path, "sub-02")


# The layout of mris_anatomical_stats' table file (FreeSurfer 7), trimmed to two regions
APARC_STATS = """\
# Table of FreeSurfer cortical parcellation anatomical statistics
#
# CreationTime 2024/01/01-00:00:00-GMT
# generating_program mris_anatomical_stats
# cmdline mris_anatomical_stats -th3 -mgz -cortex ../label/lh.cortex.label -f \
../stats/lh.aparc.stats -b -a ../label/lh.aparc.annot -c ../label/aparc.annot.ctab sub-01 lh white
#
# SUBJECTS_DIR /data/freesurfer
# anatomy_type surface
# subjectname sub-01
# hemi lh
# AnnotationFile ../label/lh.aparc.annot
# Measure Cortex, NumVert, Number of Vertices, 131342, unitless
# Measure Cortex, WhiteSurfArea, White Surface Total Area, 91215.3, mm^2
# Measure Cortex, MeanThickness, Mean Thickness, 2.51724, mm
# NTableCols 10
# TableCol  1 ColHeader StructName
# TableCol  1 FieldName Structure Name
# TableCol  1 Units     NA
# TableCol  5 ColHeader ThickAvg
# TableCol  5 FieldName Average Thickness
# TableCol  5 Units     mm
# ColHeaders StructName NumVert SurfArea GrayVol ThickAvg ThickStd MeanCurv GausCurv FoldInd \
CurvInd
bankssts                                 1452    992   2329  2.542 0.483     0.110     0.024\
       12     1.4
caudalanteriorcingulate                   921    645   1577  2.610 0.697     0.128     0.021\
       10     0.8
"""


def test_aparc_stats_parse_to_freesurfers_own_numbers(tmp_path: Path) -> None:
    path = tmp_path / "lh.aparc.stats"
    path.write_text(APARC_STATS)
    table = read_aparc_stats(path)
    assert list(table.columns) == ["StructName", "NumVert", "SurfArea", "GrayVol", "ThickAvg",
                                   "ThickStd", "MeanCurv", "GausCurv", "FoldInd", "CurvInd"]
    assert table.StructName.tolist() == ["bankssts", "caudalanteriorcingulate"]
    assert table.NumVert.tolist() == [1452, 921] and table.NumVert.dtype.kind == "i"
    assert table.SurfArea.tolist() == [992, 645] and table.GrayVol.tolist() == [2329, 1577]
    assert table.ThickAvg.tolist() == [2.542, 2.610] and table.ThickStd.tolist() == [0.483, 0.697]
    assert table.MeanCurv.tolist() == [0.110, 0.128] and table.GausCurv.tolist() == [0.024, 0.021]
    assert table.FoldInd.tolist() == [12, 10] and table.CurvInd.tolist() == [1.4, 0.8]
    assert table.attrs["measures"] == {"NumVert": 131342, "WhiteSurfArea": 91215.3,
                                       "MeanThickness": 2.51724}


@pytest.mark.parametrize(("text", "message"), [
    ("# hemi lh\nbankssts 1452 992\n", "a table row before the '# ColHeaders' line"),
    ("# ColHeaders StructName NumVert SurfArea\nbankssts 1452\n", "2 fields, the header names 3"),
    ("# ColHeaders StructName NumVert\nbankssts many\n", "column NumVert is not numeric"),
    ("# just a comment\n", "no '# ColHeaders' line"),
])
def test_broken_stats_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "lh.aparc.stats"
    path.write_text(text)
    with pytest.raises(SurfaceInputError, match=message):
        read_aparc_stats(path)
    with pytest.raises(SurfaceInputError, match="stats file not found"):
        read_aparc_stats(tmp_path / "rh.aparc.stats")
