"""`isyb study --stats-only METRICS.tsv OUT_DIR`, `--design`, and the report (issue 13 items
2, 3 and 5), on small tables: no defacing."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_one_line_error, run_cli
from isyb.study.report import line_alpha, violin_figure
from isyb.study.spss import mixed_anova_type3
from isyb.study.study import StudyOptions

ORDER = ["CN200", "MNI152", "Chinese2020"]


def _metrics(sizes: tuple[int, int] = (5, 7), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for subset, size in zip(("discovery", "validation"), sizes, strict=True):
        for index in range(size):
            base = rng.normal(0.5, 0.05)
            for template, effect in zip(ORDER, (0.03, 0.0, 0.015), strict=True):
                rows.append(dict(subject=f"{subset[0]}{index:02d}", subset=subset,
                                 template=template, status="ok",
                                 nmi=base + effect + rng.normal(0, 0.01)))
    return pd.DataFrame(rows)


def _write(table: pd.DataFrame, path: Path) -> Path:
    table.to_csv(path, sep="\t", index=False, na_rep="n/a")
    return path


def _run(*args: object):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return run_cli("study", *args, "--quiet")


def test_stats_only_isyb_design_in_templates_order(tmp_path: Path) -> None:
    table = _metrics()
    metrics = _write(table, tmp_path / "metrics.tsv")
    out = tmp_path / "out"
    result = _run("--stats-only", metrics, out, "--design", "isyb", "--templates",
                  ",".join(ORDER))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["design"] == "isyb" and summary["metrics from"] == str(metrics)
    assert "type III" in summary["statistics"]
    anova = pd.read_csv(out / "anova.tsv", sep="\t").set_index("Source")
    direct = mixed_anova_type3(table, "nmi", ORDER).set_index("Source")
    assert anova.loc["template", "F"] == pytest.approx(direct.loc["template", "F"], rel=1e-9)
    posthoc = pd.read_csv(out / "posthoc.tsv", sep="\t")
    assert list(posthoc["A"][:3]) == ["CN200", "CN200", "MNI152"]
    table1 = (out / "table1.md").read_text()
    assert "Design: isyb." in table1
    assert "A higher NMI means more facial information removed" in table1
    rows = [line.split("|")[1].strip() for line in table1.splitlines()
            if line.startswith("| ") and "discovery" in line.split("|")[2]]
    assert rows == ORDER  # descriptives follow --templates, not the alphabet
    for name in ("Mauchly W", "ε (GG)", "partial η²", "mean difference (A − B)", "SE"):
        assert name in table1, name
    report = (out / "report.html").read_text()
    assert "Design: isyb." in report and "facial information removed" in report


def test_stats_only_pingouin_design_equals_a_full_runs_statistics(tmp_path: Path) -> None:
    """The pingouin design of --stats-only is the analysis `isyb study --design pingouin` runs
    after defacing; the templates default to the table's, sorted."""
    table = _metrics(seed=2)
    out = tmp_path / "out"
    result = _run("--stats-only", _write(table, tmp_path / "m.tsv"), out, "--design", "pingouin")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["design"] == "pingouin"
    from isyb.study.stats import anova_tables

    anova = pd.read_csv(out / "anova.tsv", sep="\t")
    direct = anova_tables(table, "nmi")
    assert np.allclose(anova["F"], direct["F"], equal_nan=True, rtol=1e-9)
    means = pd.read_csv(out / "marginal_means.tsv", sep="\t")
    assert list(means["template"][:3]) == sorted(ORDER)
    assert "generalised η²" in (out / "table1.md").read_text()


def test_stats_only_isyb_design_reports_overrides() -> None:
    assert StudyOptions(design="isyb").method == "maskface"
    assert StudyOptions(design="isyb").face_region == "template"
    assert StudyOptions(design="isyb", method="blur").design_label == "isyb (method blur)"
    assert StudyOptions(design="pingouin").design_label == "pingouin"


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda t: t.drop(columns="subset"), ("missing column", "subset")),
    (lambda t: t.drop(columns="nmi"), ("missing column", "nmi")),
    (lambda t: t.drop(index=4), ("sub-d01", "no row for template", "MNI152")),
    (lambda t: t[~t["subject"].isin(["d00", "d01", "d02", "d03"])],
     ("fewer than 3 complete subjects", "discovery (1)")),
    (lambda t: t.assign(nmi=t["nmi"].astype(object).where(t.index != 3, "high")),
     ("not numbers",)),
    (lambda t: pd.concat([t, t.iloc[:1]]), ("sub-d00 has 2 rows for template CN200",)),
])
def test_bad_tables_are_one_line_errors_and_write_nothing(tmp_path: Path, change,
                                                          fragments) -> None:
    metrics = _write(change(_metrics()), tmp_path / "metrics.tsv")
    out = tmp_path / "out"
    result = _run("--stats-only", metrics, out, "--design", "isyb")
    assert_one_line_error(result.returncode, result.stderr, *fragments)
    assert not out.exists()


def test_stats_only_argument_errors(tmp_path: Path) -> None:
    metrics = _write(_metrics(), tmp_path / "metrics.tsv")
    result = _run("--stats-only", metrics, tmp_path / "bids", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stderr, "OUT_DIR only")
    result = _run("--stats-only", tmp_path / "absent.tsv", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stderr, "no such metrics table")
    result = _run("--stats-only", metrics, tmp_path / "out", "--templates", "CN200,CN2020")
    assert_one_line_error(result.returncode, result.stderr, "no rows for template(s) CN2020")
    result = _run("--stats-only", metrics, tmp_path / "out", "--design", "isyb", "--wilcoxon")
    assert_one_line_error(result.returncode, result.stderr, "--wilcoxon")
    result = _run(tmp_path / "bids", tmp_path / "out")
    assert_one_line_error(result.returncode, result.stderr, "--templates is required")


def test_failed_pairs_in_a_table_are_dropped_not_refused(tmp_path: Path) -> None:
    table = _metrics((6, 6))
    table.loc[0, "status"] = "failed"
    table.loc[0, "nmi"] = np.nan
    result = _run("--stats-only", _write(table, tmp_path / "m.tsv"), tmp_path / "out",
                  "--design", "isyb")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["subjects dropped from the statistics"] == 1


def test_line_opacity_falls_with_n_and_violins_are_on_top(tmp_path: Path) -> None:
    assert line_alpha(4) == 0.5 and line_alpha(215) == pytest.approx(5 / 215)
    assert line_alpha(100000) == 0.02
    import matplotlib.pyplot as plt

    captured = {}
    original = plt.Figure.savefig

    def keep(figure, *args, **kwargs):
        captured["figure"] = figure
        return original(figure, *args, **kwargs)

    table = _metrics((100, 115))
    plt.Figure.savefig = keep
    try:
        violin_figure(table, "nmi", tmp_path / "fig.png", order=ORDER)
    finally:
        plt.Figure.savefig = original
    axis = captured["figure"].axes[-1]
    lines = [line for line in axis.lines]
    assert len(lines) == 215 and lines[0].get_alpha() == pytest.approx(5 / 215)
    bodies = axis.collections
    assert min(body.get_zorder() for body in bodies) > max(line.get_zorder() for line in lines)
    assert [t.get_text() for t in axis.get_xticklabels()] == ORDER
