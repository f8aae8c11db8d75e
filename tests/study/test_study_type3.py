"""``--design isyb`` statistics (isyb.study.spss) against independent computations.

* type III sums of squares: statsmodels OLS with sum-to-zero contrasts on the
  subject-centred scores (within) and on the subject means (between),
  ``anova_lm(typ=3)``;
* Mauchly's W and the Greenhouse–Geisser ε: pingouin on the scores with the
  subset × template cell means removed (W and ε do not change with the scale
  of the covariance, so pingouin's N − 1 divisor does not matter);
* EMMs, their CIs and the EMM pairs: statsmodels OLS of each template's
  score (or of a difference of two) on the subsets, with a contrast ``t_test``
  (residual df N − G).

On an ISYB-shaped unbalanced table (89/126) and a balanced one, to 1e-8.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pingouin as pg
import pytest
import statsmodels.formula.api as smf
from scipy import stats
from statsmodels.stats.anova import anova_lm

from isyb.study.spss import emm_pairs, estimated_marginal_means, mixed_anova_type3

ORDER = ["CN200", "MNI152", "Chinese2020"]
TOL = dict(rel=1e-8, abs=1e-12)


def _table(sizes: tuple[int, int], seed: int) -> pd.DataFrame:
    """Subsets of ``sizes`` subjects; a template effect that differs by subset, non-spherical
    errors (one template much noisier)."""
    rng = np.random.default_rng(seed)
    rows = []
    for subset, size, shift in (("discovery", sizes[0], 0.0), ("validation", sizes[1], 0.01)):
        for index in range(size):
            base = rng.normal(0.5 + shift, 0.05)
            for template, effect, noise in zip(ORDER, (0.02 + shift, 0.0, 0.012),
                                               (0.01, 0.03, 0.012), strict=True):
                rows.append(dict(subject=f"{subset[0]}{index:03d}", subset=subset,
                                 template=template, nmi=base + effect + rng.normal(0, noise)))
    return pd.DataFrame(rows)


def _statsmodels_sums(data: pd.DataFrame) -> dict[str, float]:
    centred = data.assign(nmi=data["nmi"] - data.groupby("subject")["nmi"].transform("mean"))
    within = anova_lm(smf.ols("nmi ~ C(subset, Sum) * C(template, Sum)", centred).fit(), typ=3)
    means = data.groupby(["subject", "subset"], as_index=False)["nmi"].mean()
    between = anova_lm(smf.ols("nmi ~ C(subset, Sum)", means).fit(), typ=3)
    k = data["template"].nunique()
    return {"template": within.loc["C(template, Sum)", "sum_sq"],
            "template × subset": within.loc["C(subset, Sum):C(template, Sum)", "sum_sq"],
            "Error (within)": within.loc["Residual", "sum_sq"],
            "subset": k * between.loc["C(subset, Sum)", "sum_sq"],
            "Error (between)": k * between.loc["Residual", "sum_sq"]}


@pytest.fixture(params=[(89, 126), (20, 20)], ids=["unbalanced-89-126", "balanced-20-20"])
def table(request) -> pd.DataFrame:
    return _table(request.param, seed=sum(request.param))


def test_type3_sums_f_p_equal_statsmodels(table: pd.DataFrame) -> None:
    ours = mixed_anova_type3(table, "nmi", ORDER).set_index("Source")
    sums = _statsmodels_sums(table)
    for source, ss in sums.items():
        assert ours.loc[source, "SS"] == pytest.approx(ss, **TOL), source
    n, g, k = table["subject"].nunique(), 2, 3
    error = sums["Error (within)"] / ((k - 1) * (n - g))
    for source, df in (("template", k - 1), ("template × subset", (k - 1) * (g - 1))):
        f = sums[source] / df / error
        assert ours.loc[source, "F"] == pytest.approx(f, **TOL)
        assert ours.loc[source, "p_unc"] == pytest.approx(
            stats.f.sf(f, df, (k - 1) * (n - g)), **TOL)
        assert ours.loc[source, "np2"] == pytest.approx(
            sums[source] / (sums[source] + sums["Error (within)"]), **TOL)
    f = sums["subset"] / (sums["Error (between)"] / (n - g))
    assert ours.loc["subset", "F"] == pytest.approx(f, **TOL)


def test_mauchly_and_greenhouse_geisser_equal_pingouin(table: pd.DataFrame) -> None:
    ours = mixed_anova_type3(table, "nmi", ORDER).set_index("Source")
    centred = table.assign(nmi=table["nmi"] - table.groupby(["subset", "template"])["nmi"]
                           .transform("mean"))
    spher = pg.sphericity(centred, dv="nmi", within="template", subject="subject")
    eps = pg.epsilon(centred, dv="nmi", within="template", subject="subject", correction="gg")
    row = ours.loc["template"]
    assert row["W"] == pytest.approx(spher.W, **TOL)
    assert row["eps"] == pytest.approx(eps, **TOL)
    n_error, p = table["subject"].nunique() - 2, 2
    chi2 = -(1 - (2 * p ** 2 + p + 2) / (6 * p * n_error)) * n_error * np.log(spher.W)
    assert row["mauchly_p"] == pytest.approx(stats.chi2.sf(chi2, 2), **TOL)
    assert row["p_GG_corr"] == pytest.approx(
        stats.f.sf(row["F"], 2 * eps, 2 * n_error * eps), **TOL)
    assert row["gg_applied"] == (row["mauchly_p"] < 0.05)
    assert row["p"] == (row["p_GG_corr"] if row["gg_applied"] else row["p_unc"])


def test_unbalanced_type3_differs_from_pingouins_type2() -> None:
    """The reason for the design: on 89/126, type III's template F is not pingouin's."""
    table = _table((89, 126), seed=215)
    ours = mixed_anova_type3(table, "nmi", ORDER).set_index("Source")
    type2 = pg.mixed_anova(table, dv="nmi", within="template", between="subset",
                           subject="subject").set_index("Source")
    assert ours.loc["template", "F"] != pytest.approx(type2.loc["template", "F"], rel=1e-3)
    assert ours.loc["template × subset", "F"] == pytest.approx(
        type2.loc["Interaction", "F"], **TOL)
    assert ours.loc["subset", "F"] == pytest.approx(type2.loc["subset", "F"], **TOL)
    balanced = _table((20, 20), seed=40)
    ours = mixed_anova_type3(balanced, "nmi", ORDER).set_index("Source")
    type2 = pg.mixed_anova(balanced, dv="nmi", within="template", between="subset",
                           subject="subject").set_index("Source")
    assert ours.loc["template", "F"] == pytest.approx(type2.loc["template", "F"], **TOL)


def _contrast(data: pd.DataFrame, column: str, weights: list[float]):
    fit = smf.ols(f"{column} ~ C(subset) - 1", data).fit()
    return fit.t_test(np.array([weights]))


def test_emm_cis_equal_statsmodels(table: pd.DataFrame) -> None:
    wide = table.pivot(index="subject", columns="template", values="nmi")
    wide["subset"] = table.groupby("subject")["subset"].first()
    emm = estimated_marginal_means(table, "nmi", ORDER)
    for template in ORDER:
        test = _contrast(wide, template, [0.5, 0.5])
        row = emm[(emm["subset"] == "emm") & (emm["template"] == template)].iloc[0]
        assert row["emm"] == pytest.approx(float(test.effect[0]), **TOL)
        assert row["se"] == pytest.approx(float(test.sd[0, 0]), **TOL)
        low, high = test.conf_int(alpha=0.05)[0]
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low, **TOL),
                                                   pytest.approx(high, **TOL))
        cell = _contrast(wide, template, [0.0, 1.0])
        row = emm[(emm["subset"] == "validation") & (emm["template"] == template)].iloc[0]
        assert row["ci_low"] == pytest.approx(cell.conf_int(alpha=0.05)[0][0], **TOL)
        assert row["df"] == table["subject"].nunique() - 2


def test_emm_pairs_equal_statsmodels(table: pd.DataFrame) -> None:
    wide = table.pivot(index="subject", columns="template", values="nmi")
    wide["subset"] = table.groupby("subject")["subset"].first()
    pairs = emm_pairs(table, "nmi", ORDER)
    marginal = pairs[pairs["subset"] == "marginal"]
    assert list(zip(marginal["A"], marginal["B"], strict=True)) == [
        ("CN200", "MNI152"), ("CN200", "Chinese2020"), ("MNI152", "Chinese2020")]
    for row in marginal.itertuples():
        wide["diff"] = wide[row.A] - wide[row.B]
        test = _contrast(wide, "diff", [0.5, 0.5])
        assert row.mean_diff == pytest.approx(float(test.effect[0]), **TOL)
        assert row.se == pytest.approx(float(test.sd[0, 0]), **TOL)
        t_value = row.T
        assert t_value == pytest.approx(float(test.tvalue[0, 0]), **TOL)
        assert row.p_unc == pytest.approx(float(test.pvalue), **TOL)
        assert row.p_corr == pytest.approx(min(1.0, 3 * float(test.pvalue)), **TOL)
        low, high = test.conf_int(alpha=0.05 / 3)[0]  # SPSS: Bonferroni-adjusted interval
        assert row.ci_low == pytest.approx(low, **TOL) and row.ci_high == pytest.approx(high, **TOL)


def test_identical_templates_give_zero_sums_and_undefined_f() -> None:
    table = _table((7, 9), seed=1)
    table = table[table["template"] != "Chinese2020"]
    copy = table[table["template"] == "CN200"].assign(template="copy")
    control = pd.concat([table[table["template"] == "CN200"], copy])
    ours = mixed_anova_type3(control, "nmi", ["CN200", "copy"]).set_index("Source")
    within = ours.loc[["template", "template × subset"]]
    assert (within["SS"] == 0).all()
    assert within[["F", "p_unc", "p", "p_GG_corr", "np2"]].isna().all().all()
    assert (within["eps"] == 1).all()  # two templates: sphericity holds trivially
    assert ours.loc["subset", "F"] > 0
    pairs = emm_pairs(control, "nmi", ["CN200", "copy"])
    assert (pairs["mean_diff"] == 0).all() and pairs["T"].isna().all()
