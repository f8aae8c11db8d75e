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
from isyb.study.run import METRICS_VERSION, work_name
from isyb.study.stats import anova_tables, check_subsets, marginal_means, posthoc_tables
from isyb.study.study import StudyOptions, run_study
from isyb.synthetic.demo import build_demo_dataset
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


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort") / "bids"
    build_demo_dataset(root, n_subjects=4)
    return root


@pytest.fixture(scope="module")
def study_run(cohort: Path, default_template, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("study") / "out"
    phantom_template = cohort / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    args = ["study", str(cohort), str(out), "--templates", f"default,{phantom_template}",
            "--split", "a:2,b:2", "--seed", "1", "--omp-nthreads", "1", "--quiet"]
    assert main(args) == 0
    return out, args


def test_study_writes_every_output(study_run) -> None:
    out, _ = study_run
    for name in ("metrics.tsv", "anova.tsv", "posthoc.tsv", "marginal_means.tsv", "table1.md",
                 "table1.html", "fig6_violin.png", "report.html"):
        assert (out / name).is_file(), name
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert len(metrics) == 8 and (metrics["status"] == "ok").all()
    assert metrics["brain_changed_voxels"].eq(0).all()
    assert metrics["nmi"].between(0, 1).all()
    # issue 15: re-identification per template (ranks among 4 originals) and face distances
    assert metrics["reid_rank"].between(1, 4).all() and metrics["reid_rank1"].between(0, 1).all()
    assert (metrics["face_distance_to_original_mm"] > 0).all()
    assert (metrics["face_distance_to_template_mm"] >= 0).all()
    assert "subject_to_template" not in metrics
    assert metrics["ensemble_views_with_face_defaced"].between(0, 12).all()
    report = (out / "report.html").read_text()
    assert "data:image/png;base64," in report and "anova.tsv" in report


def test_study_statistics_equal_pingouin_on_metrics_tsv(study_run) -> None:
    out, _ = study_run
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


def _half_done(study_run, tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the finished study without sub-03's and sub-04's work, and the arguments
    that finish it: those two subjects are computed again."""
    out, args = study_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for subject in ("03", "04"):
        shutil.rmtree(copy / "work" / f"sub-{subject}")
    return copy, [*args[:2], str(copy), *args[3:]]


def _differing(a: dict[str, str], b: dict[str, str]) -> list[str]:
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


@pytest.mark.slow
def test_a_dask_study_with_a_killed_worker_is_byte_identical_to_the_local_one(
        study_run, tmp_path: Path) -> None:
    """One Dask run covers both: the executor gives the local bytes, and so does a retry
    after a worker is killed mid-task."""
    copy, args = _half_done(study_run, tmp_path)
    run_isyb_killing_a_dask_worker(args)
    assert _differing(_digests(copy), _digests(study_run[0])) == []


@pytest.fixture
def failing_align(monkeypatch) -> list[str]:
    """Make every registration fail; the list records the templates it was asked for."""
    calls: list[str] = []

    def fail(volume, template, brain=None):
        calls.append(template.name)
        raise RegistrationError("registration failed: simulated")

    monkeypatch.setattr("isyb.study.run.align", fail)
    return calls


def test_rerun_uses_the_cache_and_a_failing_pair_is_dropped(study_run,
                                                           failing_align) -> None:
    out, args = study_run
    calls = failing_align
    assert main(args) == 0  # everything cached: align is never called
    assert calls == []
    metrics_file = next((out / "work" / "sub-03" / "blur").glob("tpl-*/metrics.json"))
    metrics_file.unlink()
    templates = [resolve(t) for t in args[4].split(",")]
    result = run_study(Path(args[1]), out, templates, StudyOptions(split="all:4", seed=1),
                       progress=False)
    assert len(calls) == 1
    record = json.loads(metrics_file.read_text())
    assert record["status"] == "failed" and "simulated" in record["error"]
    assert result["summary"]["failed subject × template pairs"] == 1
    assert result["summary"]["subjects dropped from the statistics"] == 1
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t", dtype={"subject": str})
    assert (metrics["status"] == "failed").sum() == 1
    assert "dropped from the statistics: 1" in (out / "report.html").read_text()


def test_other_face_region_settings_are_not_served_from_the_cache(study_run,
                                                                  failing_align) -> None:
    """The cache folder names the face-region mode and margin; stale metric versions rerun."""
    out, args = study_run
    calls = failing_align
    options = StudyOptions(method="blur", face_region="template", face_margin_mm=6.0,
                           split="all:4", seed=1)
    templates = [resolve(t) for t in args[4].split(",")]
    with pytest.raises(IsybError, match="nothing to compare"):  # every pair failed
        run_study(Path(args[1]), out, templates, options, progress=False)
    assert len(calls) == 8  # 4 subjects x 2 templates, none taken from the blur cache
    records = sorted((out / "work").glob("sub-*/blur_face-template_margin-6mm/tpl-*/metrics.json"))
    assert len(records) == 8
    record = json.loads(records[0].read_text())
    assert record["face_region"] == "template" and record["face_margin_mm"] == 6.0
    stale = next((out / "work" / "sub-01" / "blur").glob("tpl-*/metrics.json"))
    old = json.loads(stale.read_text())
    assert old["metrics_version"] == METRICS_VERSION
    old.pop("metrics_version")
    stale.write_text(json.dumps(old))
    calls.clear()
    run_study(Path(args[1]), out, templates, StudyOptions(split="all:4", seed=1),
              progress=False)
    assert calls == [stale.parent.name.removeprefix("tpl-")]  # only the stale record reran


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
