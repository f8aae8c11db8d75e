"""Bugs of issue 13 item 4, each pinned by a test on small tables (no defacing)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from isyb.study.report import table1
from isyb.study.stats import adjust_p, marginal_means, posthoc_tables
from isyb.study.study import StudyOptions, analyse


def _two_identical(n: int = 8, seed: int = 0) -> pd.DataFrame:
    """Templates A, B, C; B and C give every subject the same score (their pair is 0/0)."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        base = rng.normal(0.5, 0.05)
        shifted = base + 0.04 + rng.normal(0, 0.02)
        for template, value in (("A", shifted), ("B", base), ("C", base)):
            rows.append(dict(subject=f"{index:02d}", subset="a" if index < n // 2 else "b",
                             template=template, nmi=value, status="ok"))
    return pd.DataFrame(rows)


def _posthoc(data: pd.DataFrame, **kwargs) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pingouin: "x and y are equals"
        return posthoc_tables(data, "nmi", **kwargs)


def test_bonferroni_counts_the_undefined_pair() -> None:
    """Three pairs were compared; one is 0/0. pingouin multiplies by 2, the family is 3."""
    posthoc = _posthoc(_two_identical())
    pooled = posthoc[posthoc["subset"] == "pooled"].set_index(["A", "B"])
    assert np.isnan(pooled.loc[("B", "C"), "p_unc"])
    for pair in (("A", "B"), ("A", "C")):
        assert pooled.loc[pair, "p_corr"] == pytest.approx(
            min(1.0, 3 * pooled.loc[pair, "p_unc"]), rel=1e-12)


def test_holm_counts_the_undefined_pair() -> None:
    p = np.array([0.01, np.nan, 0.02])
    # sorted defined: 0.01 x 3 = 0.03; 0.02 x 2 = 0.04 (step-down, m = 3)
    assert np.allclose(adjust_p(p, "holm"), [0.03, np.nan, 0.04], equal_nan=True)
    assert np.allclose(adjust_p(p, "bonf"), [0.03, np.nan, 0.06], equal_nan=True)
    assert np.allclose(adjust_p(np.array([0.5, 0.4]), "holm"), [0.8, 0.8])


def test_table1_labels_t_when_every_t_is_undefined() -> None:
    """Every template identical: pingouin drops the T column; Table 1 still says T."""
    data = _two_identical()
    data.loc[data["template"] == "A", "nmi"] = data.loc[data["template"] == "B", "nmi"].to_numpy()
    posthoc = _posthoc(data)
    assert "T" in posthoc and posthoc["T"].isna().all()
    means = marginal_means(data, "nmi")
    anova = pd.DataFrame({"analysis": ["rm:pooled", "rm:pooled"], "Source": ["template", "Error"],
                          "DF": [2, 14], "F": [np.nan, np.nan]})
    pairs = table1(means, anova, posthoc, "nmi")[2]
    assert "T" in pairs and "W_val" not in pairs
    wilcoxon = table1(means, anova, _posthoc(data, parametric=False), "nmi")[2]
    assert "W_val" in wilcoxon and "T" not in wilcoxon


def test_log_says_undefined_nmi_not_failed_template(tmp_path) -> None:
    """A pair that ran but scored NaN is not a failed template."""
    metrics = _two_identical(n=10, seed=3)
    metrics.loc[(metrics["subject"] == "01") & (metrics["template"] == "A"), "nmi"] = np.nan
    metrics.loc[(metrics["subject"] == "07") & (metrics["template"] == "B"), "status"] = "failed"
    metrics["error"] = np.where(metrics["status"] == "failed", "registration failed", "")
    lines: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analyse(metrics, tmp_path, StudyOptions(), ["A", "B", "C"], log=lines.append)
    dropped = [line for line in lines if "dropped" in line]
    assert dropped == ["1 subject(s) dropped from the statistics (a template failed): 07",
                       "1 subject(s) dropped from the statistics (undefined nmi): 01"]
