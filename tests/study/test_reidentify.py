"""`isyb study`'s re-identification step (:func:`isyb.study.run.reidentify`) on stored
descriptors: one task per original face, the same ranks on any executor, a record of an
earlier version (no stored original) completed and stored, and the distance cache
(:mod:`isyb.study.reid_columns`): a rerun fits nothing, a new subject its row and column,
a changed descriptor its row."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from isyb.deface.engine import DefaceOptions
from isyb.evaluate import reid
from isyb.executor import ExecutorOptions
from isyb.io import load_volume
from isyb.study import reid_columns
from isyb.study.run import (
    DESCRIPTOR,
    METRICS_VERSION,
    ORIGINAL_DESCRIPTOR,
    SubjectJob,
    _current_record,
    reidentify,
    work_name,
)
from isyb.synthetic import rescan
from isyb.synthetic.phantom import make_phantom, to_nifti

OPTIONS = DefaceOptions(method="remove")


def _face(seed: int, shape: tuple[int, int] = (60, 60)) -> np.ndarray:
    """A face-like depth map (mm) with its own bumps: a dome plus four Gaussian features."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    centre = (np.array(shape) - 1) / 2
    radius2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    depth = 80.0 - radius2 / 80.0
    for _ in range(4):
        r, c = rng.uniform(0.25, 0.75, 2) * shape
        depth += rng.uniform(-8, 15) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2)
                                               / (2 * rng.uniform(3, 7) ** 2))
    return np.where(radius2 < (0.47 * min(shape)) ** 2, depth, np.nan).astype(np.float32)


def _stored(work: Path, template, count: int, shape: tuple[int, int] = (60, 60), *,
            impostor: tuple[int, int] | None = None) -> dict:
    """A study's work folder with ``count`` subjects' original and "defaced" descriptors
    (the original plus 0.3 mm of noise; with ``impostor = (k, m)``, subject k's defaced
    face is subject m's), and the metrics table that points at them."""
    rng = np.random.default_rng(0)
    gallery, probes, rows = [], [], []
    for k in range(count):
        subject = f"{k + 1:02d}"
        original = _face(k, shape)
        looks_like = _face(impostor[1], shape) if impostor and k == impostor[0] else original
        probe = (looks_like + rng.normal(0, 0.3, original.shape)).astype(np.float32)
        pair = work / f"sub-{subject}" / work_name(OPTIONS) / f"tpl-{template.name}"
        pair.mkdir(parents=True)
        np.save(pair / ORIGINAL_DESCRIPTOR, original)
        np.save(pair / DESCRIPTOR, probe)
        gallery.append(original)
        probes.append(probe)
        rows.append({"subject": subject, "template": template.name, "status": "ok",
                     "subject_to_template": np.eye(4).tolist()})
    return {"table": pd.DataFrame(rows), "gallery": gallery, "probes": probes}


@pytest.mark.parametrize("executor", [ExecutorOptions(threads=1),
                                      ExecutorOptions(nprocs=2, threads=1)],
                         ids=["this-process", "two-processes"])
def test_ranks_are_those_of_the_whole_matrix_on_any_executor(
        tmp_path: Path, default_template, executor: ExecutorOptions) -> None:
    """Subject 1's defaced face is subject 2's: its own original is not nearest, and the
    ranks of the transposed matrix differ, so a mix-up of rows and columns would show."""
    cohort = _stored(tmp_path, default_template, 3, impostor=(0, 1))
    expected = reid.identification(cohort["gallery"], cohort["probes"])
    assert expected["ranks"][0] > 1  # the cohort does what the test needs
    assert not np.array_equal(
        reid.identification_from_distances(expected["distances"].T)["ranks"], expected["ranks"])
    table = reidentify(cohort["table"], {}, [default_template], tmp_path, OPTIONS,
                       executor=executor)
    np.testing.assert_array_equal(table["reid_rank"], expected["ranks"])
    assert table["reid_rank1"].tolist() == [0.0, 1.0, 1.0]
    assert "subject_to_template" not in table


def test_a_record_without_the_stored_original_gets_it(tmp_path: Path, default_template) -> None:
    """The original's descriptor is computed from the image and the stored registration,
    and stored, as a current version's subject task would have stored it."""
    frame = reid.frame_for(default_template)
    cohort = _stored(tmp_path / "work", default_template, 2, frame.shape)
    phantom = make_phantom(voxel_size=3.0, fov_mm=rescan.PHANTOM_FOV_MM,
                           fov_center_mm=rescan.PHANTOM_FOV_CENTRE_MM)
    image = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(to_nifti(phantom, "RAS", dtype=np.float32), image)
    pair = tmp_path / "work" / "sub-01" / work_name(OPTIONS) / f"tpl-{default_template.name}"
    (pair / ORIGINAL_DESCRIPTOR).unlink()
    table = reidentify(cohort["table"], {"01": image}, [default_template], tmp_path / "work",
                       OPTIONS)
    expected = reid.face_descriptor(load_volume(image), np.eye(4), frame)
    np.testing.assert_array_equal(np.load(pair / ORIGINAL_DESCRIPTOR), expected)
    assert table["reid_rank"].notna().all()


class _CountingFits:
    """``distance_column`` in this process, counting the probes it fits."""

    def __init__(self) -> None:
        self.fits = 0

    def __call__(self, entry, probes, **kwargs):
        self.fits += len(probes)
        return reid.distance_column(entry, probes, **kwargs)


def _reidentify(cohort: dict, work: Path, template, monkeypatch, table=None) -> tuple:
    counter = _CountingFits()
    monkeypatch.setattr(reid_columns, "distance_column", counter)
    result = reidentify(cohort["table"] if table is None else table, {}, [template], work,
                        OPTIONS, executor=ExecutorOptions(threads=1))
    return result, counter.fits


def test_a_rerun_fits_nothing_again_and_gives_the_same_ranks(
        tmp_path: Path, default_template, monkeypatch) -> None:
    cohort = _stored(tmp_path, default_template, 3, impostor=(0, 1))
    first, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 9
    again, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 0
    pd.testing.assert_frame_equal(again, first)
    expected = reid.identification(cohort["gallery"], cohort["probes"])
    np.testing.assert_array_equal(again["reid_rank"], expected["ranks"])


def test_one_subject_more_fits_only_its_row_and_column(
        tmp_path: Path, default_template, monkeypatch) -> None:
    cohort = _stored(tmp_path, default_template, 3, impostor=(0, 1))
    _, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch,
                          table=cohort["table"].iloc[:2])
    assert fits == 4
    table, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 2 * 3 - 1
    expected = reid.identification(cohort["gallery"], cohort["probes"])
    np.testing.assert_array_equal(table["reid_rank"], expected["ranks"])


def _strict_json(text: str) -> dict:
    """``text`` read as RFC 8259 JSON: NaN and Infinity are refused."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_an_infinite_distance_is_cached_as_strict_json(
        tmp_path: Path, default_template, monkeypatch) -> None:
    """Subject 2's defaced face is empty (nothing left to compare: distance ``inf``). The
    cache stores ``null`` for it, a strict JSON reader takes every cache file, and the rerun
    fits nothing and gives the same ranks."""
    cohort = _stored(tmp_path, default_template, 3)
    empty = tmp_path / "sub-02" / work_name(OPTIONS) / f"tpl-{default_template.name}"
    np.save(empty / DESCRIPTOR, np.full_like(cohort["probes"][1], np.nan))
    first, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 9
    caches = sorted(tmp_path.glob(f"sub-*/*/*/{reid_columns.DISTANCE_CACHE}"))
    assert len(caches) == 3
    for cache in caches:
        distances = _strict_json(cache.read_text())["distances"]
        assert sum(value is None for value in distances.values()) == 1
    again, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 0
    pd.testing.assert_frame_equal(again, first)
    # the empty face is infinitely far from every original: a three-way tie, rank (1+2+3)/3
    assert first["reid_rank"].iloc[1] == 2.0


def test_a_changed_descriptor_changed_settings_or_a_broken_cache_are_fitted_again(
        tmp_path: Path, default_template, monkeypatch) -> None:
    cohort = _stored(tmp_path, default_template, 3, impostor=(0, 1))
    _reidentify(cohort, tmp_path, default_template, monkeypatch)
    folder = tmp_path / "sub-02" / work_name(OPTIONS) / f"tpl-{default_template.name}"
    # subject 2's defaced face now looks like subject 1: its row is fitted again
    changed = (cohort["gallery"][0] + 0.2).astype(np.float32)
    np.save(folder / DESCRIPTOR, changed)
    table, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 3
    probes = [cohort["probes"][0], changed, cohort["probes"][2]]
    expected = reid.identification(cohort["gallery"], probes)
    np.testing.assert_array_equal(table["reid_rank"], expected["ranks"])
    assert table["reid_rank"].iloc[1] > 1
    # subject 3's original face changes (its pair was computed again): its column is refitted
    original = tmp_path / "sub-03" / work_name(OPTIONS) / f"tpl-{default_template.name}"
    gallery = [*cohort["gallery"][:2], (cohort["gallery"][2] + 0.1).astype(np.float32)]
    np.save(original / ORIGINAL_DESCRIPTOR, gallery[2])
    table, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 3
    np.testing.assert_array_equal(table["reid_rank"],
                                  reid.identification(gallery, probes)["ranks"])
    (folder / reid_columns.DISTANCE_CACHE).write_text("{not json")
    _, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 3  # subject 2's column
    monkeypatch.setattr(reid_columns, "DISTANCE_SETTINGS",
                        {**reid_columns.DISTANCE_SETTINGS, "trim": 0.8})
    _, fits = _reidentify(cohort, tmp_path, default_template, monkeypatch)
    assert fits == 9


def test_a_pair_whose_descriptor_was_deleted_or_damaged_is_computed_again(
        tmp_path: Path, default_template) -> None:
    """A cached record is not current when re-identification needs its deleted or damaged
    descriptor; a run without re-identification still uses it."""
    pair = tmp_path / "sub-01" / work_name(OPTIONS) / f"tpl-{default_template.name}"
    pair.mkdir(parents=True)
    record = {"status": "ok", "metrics_version": METRICS_VERSION, "detectors": True,
              "reid": True}
    (pair / "metrics.json").write_text(json.dumps(record))
    np.save(pair / DESCRIPTOR, _face(0))
    job = SubjectJob("01", tmp_path / "sub-01_T1w.nii.gz", (default_template,), tmp_path,
                     OPTIONS)
    assert _current_record(pair / "metrics.json", job) == record
    (pair / ORIGINAL_DESCRIPTOR).write_bytes(b"not an array")
    assert _current_record(pair / "metrics.json", job) is None
    np.save(pair / ORIGINAL_DESCRIPTOR, _face(0))
    assert _current_record(pair / "metrics.json", job) == record
    (pair / DESCRIPTOR).write_bytes((pair / DESCRIPTOR).read_bytes()[:100])  # cut short
    assert _current_record(pair / "metrics.json", job) is None
    (pair / DESCRIPTOR).unlink()
    assert _current_record(pair / "metrics.json", job) is None
    assert _current_record(pair / "metrics.json", replace(job, reid=False)) == record


#: ``distance_column`` of a noisy face 0 against face 1 (``_face``), as the fit gives it now.
PINNED_DISTANCE_MM = 1.5878442155659438


def test_a_change_of_the_fit_comes_with_a_new_cache_version() -> None:
    """Cached distances stay valid while the fit gives the same numbers. A change of the fit
    that changes this distance must raise ``DISTANCE_SETTINGS["version"]`` (and this pin),
    or studies would mix old cached distances with new ones."""
    rng = np.random.default_rng(0)
    probe = (_face(0) + rng.normal(0, 0.3, (60, 60))).astype(np.float32)
    assert reid_columns.DISTANCE_SETTINGS["version"] == 1
    assert reid.distance_column(_face(1), [probe])[None][0] == pytest.approx(
        PINNED_DISTANCE_MM, rel=1e-9)


def test_under_dask_the_subjects_and_the_reidentification_share_one_cluster(
        tmp_path: Path, default_template, monkeypatch) -> None:
    """``collect_metrics`` under ``--executor dask`` without a scheduler: both of its
    ``run_tasks`` calls get the address of the one cluster it started (the calls run in
    this process here; the subject task returns the stored cohort's rows)."""
    from isyb.study import run

    cohort = _stored(tmp_path, default_template, 3, impostor=(0, 1))
    rows = cohort["table"].to_dict("records")
    seen: list[ExecutorOptions] = []

    def in_this_process(function, items, options, **kwargs):
        seen.append(options)
        return [function(item) for item in items]

    monkeypatch.setattr(run, "run_tasks", in_this_process)
    monkeypatch.setattr(run, "run_subject",
                        lambda job: [row for row in rows if row["subject"] == job.subject])
    images = {row["subject"]: tmp_path / f"sub-{row['subject']}_T1w.nii.gz" for row in rows}
    table = run.collect_metrics(images, [default_template], tmp_path, OPTIONS,
                                executor=ExecutorOptions("dask", nprocs=1), progress=False)
    assert len(seen) == 2 and seen[0] == seen[1]
    assert seen[0].dask_scheduler and seen[0].dask_cluster is None
    expected = reid.identification(cohort["gallery"], cohort["probes"])
    np.testing.assert_array_equal(table["reid_rank"], expected["ranks"])
