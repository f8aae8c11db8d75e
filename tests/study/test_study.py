"""`isyb study`: cohort splits, statistics equal to pingouin, the end-to-end run and its cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pingouin as pg
import pytest

from conftest import run_isyb_killing_a_dask_worker
from isyb.bids.participants import parse_split, split_counts
from isyb.cli import main
from isyb.deface.engine import DefaceOptions
from isyb.errors import IsybError, RegistrationError
from isyb.evaluate.anonymization import evaluation_region
from isyb.head.morphology import brain_guard
from isyb.study.cohort import assign_subsets
from isyb.study.run import DETECTOR_COLUMNS, METRICS_VERSION, REID_COLUMNS, work_name
from isyb.study.simulate import SIMULATION_MARGIN_MM, SIMULATION_NOTE
from isyb.study.stats import anova_tables, check_subsets, marginal_means, posthoc_tables
from isyb.study.study import StudyOptions, run_study
from isyb.synthetic.phantom import FACE_LABELS, Label, make_phantom
from isyb.templates.registry import resolve


def _tidy(n: int = 12, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        base = rng.normal(0.5, 0.05)
        for template, effect in (("CN200", 0.04), ("MNI152", 0.0), ("Chinese2020", 0.02)):
            rows.append(dict(subject=f"{index:02d}", subset="a" if index < n // 2 else "b",
                             template=template, nmi=base + effect + rng.normal(0, 0.02)))
    return pd.DataFrame(rows)


def test_split_by_counts_and_fractions() -> None:
    assert split_counts(parse_split("discovery:89,validation:126"), 215) == [
        ("discovery", 89), ("validation", 126)]
    assert split_counts(parse_split("a:0.5,b:0.5"), 7) == [("a", 4), ("b", 3)]
    with pytest.raises(IsybError, match="sum to 10"):
        split_counts(parse_split("a:4,b:6"), 9)
    with pytest.raises(IsybError, match="NAME:SIZE"):
        parse_split("discovery=89")


def test_random_split_is_seeded() -> None:
    subjects = [f"{i:03d}" for i in range(20)]
    first = assign_subsets(subjects, split="d:8,v:12", seed=3)
    assert first == assign_subsets(subjects, split="d:8,v:12", seed=3)
    assert first != assign_subsets(subjects, split="d:8,v:12", seed=4)
    assert sum(v == "d" for v in first.values()) == 8


def test_split_from_a_participants_column() -> None:
    table = pd.DataFrame({"participant_id": ["sub-01", "sub-02"], "site": ["x", "y"]})
    table.index = ["01", "02"]
    assert assign_subsets(["01", "02"], column="site", participants=table) == {
        "01": "x", "02": "y"}
    with pytest.raises(IsybError, match="no such column"):
        assign_subsets(["01"], column="age", participants=table)


def test_anova_and_posthoc_equal_pingouin_called_directly() -> None:
    data = _tidy()
    anova = anova_tables(data, "nmi")
    mixed = pg.mixed_anova(data=data, dv="nmi", within="template", between="subset",
                           subject="subject", correction=True)
    ours = anova[anova["analysis"] == "mixed"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[mixed.columns], mixed, check_dtype=False)
    pooled = pg.rm_anova(data=data, dv="nmi", within="template", subject="subject",
                         detailed=True, correction=True)
    ours = anova[anova["analysis"] == "rm:pooled"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[pooled.columns], pooled, check_dtype=False)
    posthoc = posthoc_tables(data, "nmi", padjust="holm")
    direct = pg.pairwise_tests(data=data[data["subset"] == "a"], dv="nmi", within="template",
                               subject="subject", padjust="holm")
    ours = posthoc[posthoc["subset"] == "a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ours[direct.columns], direct, check_dtype=False)
    wilcoxon = posthoc_tables(data, "nmi", parametric=False)
    assert "W_val" in wilcoxon


def test_marginal_means_have_t_intervals() -> None:
    data = _tidy()
    means = marginal_means(data, "nmi")
    cell = means[(means["subset"] == "a") & (means["template"] == "CN200")].iloc[0]
    values = data[(data["subset"] == "a") & (data["template"] == "CN200")]["nmi"]
    assert cell["mean"] == pytest.approx(values.mean())
    half = 2.5705818366147395 * values.std(ddof=1) / np.sqrt(6)  # t(0.975, 5)
    assert cell["ci_high"] - cell["mean"] == pytest.approx(half)
    assert set(means["subset"]) == {"a", "b", "pooled", "emm"}


def test_small_subsets_are_a_clear_error() -> None:
    data = _tidy(n=4)
    with pytest.raises(IsybError, match="fewer than 3 complete subjects"):
        check_subsets(data)


def _cli_args(sim: dict, out: Path) -> list[str]:
    """The command line of the shared simulated study (``study_simulation``'s ``study``)."""
    templates = sim["templates"]
    return ["study", str(sim["bids"]), str(out), "--templates",
            f"{templates['ref']},{templates['cn200']}", "--design", "pingouin",
            "--method", "remove", "--face-region", "template", "--face-margin",
            f"{SIMULATION_MARGIN_MM:g}", "--split-column", "population", "--note",
            SIMULATION_NOTE, "--no-detectors", "--no-reid", "--omp-nthreads", "1", "--quiet"]


def _options(**changes) -> StudyOptions:
    """The shared study's options (API), all four subjects in one subset, with ``changes``."""
    settings = dict(design="pingouin", method="remove", face_region="template",
                    face_margin_mm=SIMULATION_MARGIN_MM, split="all:4", seed=1,
                    detectors=False, reid=False)
    return StudyOptions(**{**settings, **changes})


def _templates(sim: dict) -> list:
    return [resolve(str(sim["templates"][name])) for name in ("ref", "cn200")]


@pytest.fixture
def study_copy(study_simulation: dict, tmp_path: Path) -> Path:
    """A writable copy of the shared simulated study (its work cache included)."""
    copy = tmp_path / "study"
    shutil.copytree(study_simulation["study"], copy)
    return copy


def test_study_writes_every_output(study_simulation: dict) -> None:
    out = study_simulation["study"]
    for name in ("metrics.tsv", "anova.tsv", "posthoc.tsv", "marginal_means.tsv", "table1.md",
                 "table1.html", "fig6_violin.png", "report.html"):
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert len(metrics) == 8 and (metrics["status"] == "ok").all()
    assert metrics["brain_changed_voxels"].eq(0).all()
    assert metrics["nmi"].between(0, 1).all()
    assert "subject_to_template" not in metrics
    # --no-detectors --no-reid: the face checks' columns are there and empty
    # (tests/study/test_study_face_checks.py fills them)
    for column in (*DETECTOR_COLUMNS[:3], *REID_COLUMNS):
        assert metrics[column].isna().all(), column
    assert not metrics["detectors"].any() and not metrics["reid"].any()
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "anova.tsv" in report
    assert "none (--no-detectors --no-reid)" in report
    for subject in ("01", "02", "03", "04"):  # one registration per subject x template
        assert len(list((out / "work" / f"sub-{subject}" / "registration").glob("*.json"))) == 3


def test_study_statistics_equal_pingouin_on_metrics_tsv(study_simulation: dict) -> None:
    out = study_simulation["study"]
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t", dtype={"subject": str})
    anova = pd.read_csv(out / "anova.tsv", sep="\t")
    direct = pg.rm_anova(data=metrics, dv="nmi", within="template", subject="subject",
                         detailed=True, correction=True)
    ours = anova[anova["analysis"] == "rm:pooled"].reset_index(drop=True)
    assert np.allclose(ours["F"].to_numpy(float)[:1], direct["F"].to_numpy(float)[:1])
    assert np.allclose(ours["p_unc"].to_numpy(float)[:1], direct["p_unc"].to_numpy(float)[:1])


def _digests(out: Path) -> dict[str, str]:
    """SHA-256 of every file of a study folder (tables, figure, report, work cache)."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file()}


def _differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


def _same_as_shared(copy: Path, shared: Path) -> list[str]:
    """Files of ``copy`` that differ from ``shared``'s. The shared work cache also holds the
    control's and the isyb design's work, which a rerun of the main study does not redo."""
    ours = _digests(copy)
    theirs = _digests(shared)
    assert {"metrics.tsv", "anova.tsv", "report.html", "fig6_violin.png"} <= ours.keys()
    return _differing(ours, {name: theirs.get(name, "absent") for name in ours})


@pytest.fixture
def failing(monkeypatch) -> dict[str, list[str]]:
    """Make every registration and every defacing fail; the lists record the templates
    each was asked for."""
    calls: dict[str, list[str]] = {"align": [], "deface": []}

    def fail_align(volume, template, brain=None, subject_grid=None):
        calls["align"].append(template.name)
        raise RegistrationError("registration failed: simulated")

    def fail_deface(volume, template, options, alignment=None, subject=None):
        calls["deface"].append(template.name)
        raise IsybError("defacing failed: simulated")

    monkeypatch.setattr("isyb.study.run.align", fail_align)
    monkeypatch.setattr("isyb.study.run.deface_volume", fail_deface)
    return calls


def test_the_cli_reruns_the_shared_study_from_its_cache(study_simulation: dict, study_copy: Path,
                                                        failing) -> None:
    """The command line gives the API's study (same bytes), computing nothing again."""
    assert main(_cli_args(study_simulation, study_copy)) == 0
    assert failing == {"align": [], "deface": []}
    assert _same_as_shared(study_copy, study_simulation["study"]) == []


def test_a_cached_registration_gives_the_bytes_of_a_new_one(study_simulation: dict,
                                                           study_copy: Path, monkeypatch) -> None:
    """sub-01's metrics are recomputed from its cached registrations, not registered again."""
    for record in (study_copy / "work" / "sub-01").glob("remove_*/tpl-*/metrics.json"):
        record.unlink()
    monkeypatch.setattr("isyb.study.run.align", None)  # any registration would fail loudly
    assert main(_cli_args(study_simulation, study_copy)) == 0
    assert _same_as_shared(study_copy, study_simulation["study"]) == []


@pytest.mark.slow
def test_a_dask_study_with_a_killed_worker_is_byte_identical_to_the_local_one(
        study_simulation: dict, study_copy: Path) -> None:
    """One Dask run covers both: the executor gives the local bytes, and so does a retry
    after a worker is killed mid-task. sub-04 is half done: its brain mask and evaluation
    region are kept, its registrations and defacings are computed again."""
    folder = study_copy / "work" / "sub-04"
    for done in (folder / "registration", *folder.glob("remove_*")):
        shutil.rmtree(done)
    run_isyb_killing_a_dask_worker(_cli_args(study_simulation, study_copy))
    assert len(list(folder.glob("remove_*/tpl-*/metrics.json"))) == 2
    assert _same_as_shared(study_copy, study_simulation["study"]) == []


def test_a_failing_pair_is_dropped(study_simulation: dict, study_copy: Path, failing) -> None:
    metrics_file = next((study_copy / "work" / "sub-03").glob("remove_*/tpl-*/metrics.json"))
    metrics_file.unlink()
    result = run_study(study_simulation["bids"], study_copy, _templates(study_simulation),
                       _options(), progress=False)
    assert failing["deface"] == [metrics_file.parent.name.removeprefix("tpl-")]
    assert failing["align"] == []  # the registration came from the cache
    record = json.loads(metrics_file.read_text())
    assert record["status"] == "failed" and "simulated" in record["error"]
    assert result["summary"]["failed subject × template pairs"] == 1
    assert result["summary"]["subjects dropped from the statistics"] == 1
    metrics = pd.read_csv(study_copy / "metrics.tsv", sep="\t", dtype={"subject": str})
    assert (metrics["status"] == "failed").sum() == 1
    assert "dropped from the statistics: 1" in (study_copy / "report.html").read_text()


def test_other_face_region_settings_are_not_served_from_the_cache(
        study_simulation: dict, study_copy: Path, failing) -> None:
    """The cache folder names the face-region mode and margin; stale metric versions and
    registrations of changed template files rerun."""
    templates = _templates(study_simulation)
    with pytest.raises(IsybError, match="nothing to compare"):  # every pair failed
        run_study(study_simulation["bids"], study_copy, templates,
                  _options(face_margin_mm=6.0), progress=False)
    assert len(failing["deface"]) == 8  # 4 subjects x 2 templates, none from the 3 mm cache
    assert failing["align"] == []  # the registrations do not depend on the setting
    records = sorted((study_copy / "work").glob(
        "sub-*/remove_face-template_margin-6mm/tpl-*/metrics.json"))
    assert len(records) == 8
    record = json.loads(records[0].read_text())
    assert record["face_region"] == "template" and record["face_margin_mm"] == 6.0
    stale = next((study_copy / "work" / "sub-01").glob("remove_*3mm/tpl-*/metrics.json"))
    old = json.loads(stale.read_text())
    assert old["metrics_version"] == METRICS_VERSION
    old.pop("metrics_version")
    stale.write_text(json.dumps(old))
    template = stale.parent.name.removeprefix("tpl-")
    registration = study_copy / "work" / "sub-01" / "registration" / f"tpl-{template}.json"
    cached = json.loads(registration.read_text())
    cached["key"]["head_sha256"] = "0" * 64  # as if the template's head had changed
    registration.write_text(json.dumps(cached))
    failing["deface"].clear()
    run_study(study_simulation["bids"], study_copy, templates, _options(), progress=False)
    assert failing["align"] == [template]  # only the stale pair reran, registration too
    assert failing["deface"] == []


def test_work_names_keep_the_default_folder() -> None:
    assert work_name(DefaceOptions(method="blur")) == "blur"
    assert work_name(DefaceOptions(method="remove", face_region="template")) == (
        "remove_face-template_margin-8mm")
    assert work_name(DefaceOptions(method="remove", face_region="template",
                                   face_margin_mm=4.0)) == "remove_face-template_margin-4mm"


def test_evaluation_region_holds_the_face_and_spares_the_guard() -> None:
    """The rule on the subject's own brain: the phantom's face inside, its brain guard out."""
    phantom = make_phantom(voxel_size=3.0, seed=1)
    region = evaluation_region(phantom.brain_mask, phantom.affine)
    face = np.isin(phantom.labels, FACE_LABELS)
    guard = brain_guard(phantom.brain_mask, phantom.voxel_size, 10.0)
    assert region[face & ~guard].mean() > 0.99
    assert not (region & guard).any()
    assert not region[phantom.labels == Label.EARS].any()
    moved = phantom.affine.copy()
    moved[:3, 3] += [30.0, -20.0, 11.0]  # a header origin never matters
    assert np.array_equal(evaluation_region(phantom.brain_mask, moved), region)


def test_identical_scores_give_an_undefined_f_not_infinity() -> None:
    """Two identical templates: every difference is 0, F is 0/0. pingouin says F = inf,
    p = 0 (a 'significant' effect); the tables say NaN."""
    subjects = [f"s{i}" for i in range(6)]
    scores = list(np.linspace(0.5, 0.6, 6))
    data = pd.DataFrame({"subject": subjects * 2, "template": ["a"] * 6 + ["b"] * 6,
                         "subset": ["x"] * 12, "nmi": scores * 2})
    table = anova_tables(data, "nmi")
    effect = table[table["Source"] == "template"]
    assert effect["F"].isna().all()
    p_column = "p_unc" if "p_unc" in table else "p-unc"
    assert effect[p_column].isna().all()


def test_identical_scores_leave_every_within_row_undefined_despite_rounding() -> None:
    """Two subsets of 7: pingouin turns 0/0 into rounding noise (F = 7e-14, -1e-13, inf)."""
    rng = np.random.default_rng(1)
    scores = list(rng.uniform(0.5, 0.8, 14))
    subjects = [f"s{i:02d}" for i in range(14)]
    data = pd.DataFrame({"subject": subjects * 2, "template": ["a"] * 14 + ["b"] * 14,
                         "subset": (["x"] * 7 + ["y"] * 7) * 2, "nmi": scores * 2})
    table = anova_tables(data, "nmi")
    within = table[table["Source"].isin(["template", "Interaction"])]
    assert len(within) == 5  # mixed: template, interaction; rm: x, y, pooled
    assert within["F"].isna().all() and within["p_unc"].isna().all()
    between = table.query("analysis == 'mixed' and Source == 'subset'")
    assert float(between["F"].iloc[0]) > 0  # the between-subject effect is still there
