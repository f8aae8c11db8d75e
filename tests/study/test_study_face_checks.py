"""The study's face checks (face detectors with the 12-view ensemble, face distances and
re-identification), which the shared simulated study skips (``--no-detectors --no-reid``):
here on a copy of two of its subjects, from their cached brain masks and registrations."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isyb.deface.engine import DefaceOptions
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions
from isyb.study.run import DETECTOR_COLUMNS, REID_COLUMNS, collect_metrics
from isyb.study.simulate import SIMULATION_MARGIN_MM
from isyb.templates.registry import resolve

OPTIONS = DefaceOptions(method="remove", face_region="template",
                        face_margin_mm=SIMULATION_MARGIN_MM)
#: One task at a time, one torch/ITK thread (the suite runs one pytest worker per core).
ONE_THREAD = ExecutorOptions(threads=1)


@pytest.fixture
def two_subjects(study_simulation: dict, tmp_path: Path) -> tuple[dict[str, Path], Path]:
    """sub-01 (ref) and sub-03 (cn200) of the shared study: images and a copy of their work."""
    work = tmp_path / "work"
    images = {}
    for subject in ("01", "03"):
        shutil.copytree(study_simulation["study"] / "work" / f"sub-{subject}",
                        work / f"sub-{subject}")
        images[subject] = (study_simulation["bids"] / f"sub-{subject}" / "anat"
                           / f"sub-{subject}_T1w.nii.gz")
    return images, work


def test_face_checks_fill_their_columns_and_the_cache_knows_which_ran(
        study_simulation: dict, two_subjects, monkeypatch) -> None:
    images, work = two_subjects
    template = resolve(str(study_simulation["templates"]["ref"]))
    # the detectors, for one pair (the ensemble is the slowest check of the study)
    row, = collect_metrics({"01": images["01"]}, [template], work, OPTIONS, progress=False,
                           executor=ONE_THREAD, detectors=True, reid=False).to_dict("records")
    assert row["status"] == "ok" and row["detectors"] and not row["reid"]
    assert isinstance(row["face_detected_original"], bool)
    assert isinstance(row["face_detected_defaced"], bool)
    assert row["ensemble_views"] == 12
    assert 0 <= row["ensemble_views_with_face_defaced"] <= 12
    assert row["ensemble_detectors"]
    assert all(pd.isna(row[column]) for column in REID_COLUMNS)
    # re-identification and face distances, for both subjects (sub-01's record lacks them)
    table = collect_metrics(images, [template], work, OPTIONS, progress=False,
                            executor=ONE_THREAD, detectors=False, reid=True)
    assert (table["status"] == "ok").all() and table["reid"].all()
    assert table["reid_rank"].between(1, 2).all() and table["reid_rank1"].between(0, 1).all()
    assert (table["face_distance_to_original_mm"] > 0).all()
    assert (table["face_distance_to_template_mm"] >= 0).all()
    assert table[list(DETECTOR_COLUMNS[:3])].isna().all().all()
    assert "subject_to_template" not in table
    calls: list[str] = []

    def fail(volume, template, options, alignment=None, subject=None):
        calls.append(template.name)
        raise IsybError("defacing failed: simulated")

    monkeypatch.setattr("isyb.study.run.deface_volume", fail)
    # fewer checks: served from the cache, with the unasked columns emptied
    fewer = collect_metrics(images, [template], work, OPTIONS, progress=False,
                            executor=ONE_THREAD, detectors=False, reid=False)
    assert calls == [] and (fewer["status"] == "ok").all()
    assert fewer[list(REID_COLUMNS)].isna().all().all()
    assert np.array_equal(fewer["nmi"], table["nmi"])
    # more checks than the cache holds: computed again
    more = collect_metrics(images, [template], work, OPTIONS, progress=False,
                           executor=ONE_THREAD, detectors=True, reid=True)
    assert calls == [template.name] * 2 and (more["status"] == "failed").all()
