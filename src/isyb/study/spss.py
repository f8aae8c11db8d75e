"""The descriptor's statistics (``--design isyb``): SPSS's GLM repeated measures.

The ISYB data descriptor analysed NMI with SPSS: a mixed ANOVA (template
within × subset between) with type III sums of squares, Mauchly's test and
the Greenhouse–Geisser correction when sphericity is rejected, estimated
marginal means (EMMs) with 95% CIs, and Bonferroni-corrected pairwise
comparisons of the EMMs. This module computes them from the
multivariate form of the model that SPSS GLM uses (IBM SPSS Statistics
Algorithms, "GLM Repeated Measures"; Maxwell & Delaney, *Designing
Experiments and Analyzing Data*, 2nd ed., ch. 12 and 14):

* the k template scores Y (N × k) of each subject are turned into k − 1
  orthonormal contrasts Z = Y C, C'1 = 0, C'C = I (the within-subject
  effects) and their sum over templates (the between-subject effect);
* each is fitted by the one-way between-subject model (cell means of the
  G subsets); the error SSCP is E = Σ (Z_i − Z̄_g)'(Z_i − Z̄_g), df N − G;
* type III weights every subset equally: the template hypothesis is that
  the unweighted mean of the subset means of Z is 0, with sum of squares
  |m_u|² / (Σ_g 1/n_g / G²). pingouin's ``mixed_anova`` weights the subsets
  by their size (type II); the two agree only on balanced subsets;
* Mauchly's W and ε (Greenhouse & Geisser 1959) come from S = E / (N − G);
  the χ² approximation is Mauchly (1940) as in SPSS and pingouin;
* the EMM of a template is the unweighted mean of its subset means, its SE
  sqrt(MSE · Σ_g 1/n_g) / G with MSE the pooled within-subset variance of
  that template's scores, and its CI uses t(N − G); a pairwise comparison
  is the EMM of the difference of two templates' scores, with the same
  form of SE and df.

Pingouin has no type III mixed ANOVA, no pooled-error EMMs and no EMM
comparisons, hence this hand-written module; tests/study/test_study_type3.py
checks it against statsmodels' regression with sum-to-zero contrasts.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from isyb.study.stats import adjust_p

#: Mauchly's test rejects sphericity below this p; the within effects then use GG.
SPHERICITY_ALPHA = 0.05
EMM = "emm"
MARGINAL = "marginal"


def wide_scores(data: pd.DataFrame, dv: str, order: list[str]) -> tuple[np.ndarray, np.ndarray,
                                                                         list[str]]:
    """Scores (subjects × templates in ``order``), each subject's subset index, the subsets."""
    wide = data.pivot(index="subject", columns="template", values=dv)[order]
    subset = data.groupby("subject")["subset"].first().loc[wide.index]
    names = sorted(subset.unique())
    return wide.to_numpy(float), subset.map(names.index).to_numpy(), names


def orthonormal_contrasts(k: int) -> np.ndarray:
    """k × (k − 1) orthonormal contrasts orthogonal to the constant (normalised Helmert).

    The ANOVA, W and ε do not depend on which orthonormal set is used.
    """
    basis = np.linalg.qr(np.column_stack([np.ones(k), np.eye(k)[:, :k - 1]]))[0]
    return basis[:, 1:]


def _cell_means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    return np.stack([values[groups == g].mean(axis=0) for g in range(n_groups)])


def _f_row(source: str, ss: float, df: float, ss_error: float, df_error: float) -> dict:
    ms_error = ss_error / df_error
    f = (ss / df) / ms_error if ms_error > 0 else np.nan
    return dict(Source=source, SS=ss, DF1=df, DF2=df_error, MS=ss / df, F=f,
                p_unc=float(stats.f.sf(f, df, df_error)) if np.isfinite(f) else np.nan,
                np2=ss / (ss + ss_error) if ss + ss_error > 0 else np.nan)


def sphericity(error_sscp: np.ndarray, df_error: int) -> dict:
    """Mauchly's W, χ², df and p, and the Greenhouse–Geisser ε, of an error SSCP matrix
    of p orthonormal contrasts with ``df_error`` degrees of freedom."""
    p = error_sscp.shape[0]
    if p < 2:
        return dict(W=1.0, chi2=np.nan, mauchly_df=0, mauchly_p=np.nan, eps=1.0)
    s = error_sscp / df_error
    trace = float(np.trace(s))
    if trace <= 0:
        return dict(W=np.nan, chi2=np.nan, mauchly_df=p * (p + 1) // 2 - 1, mauchly_p=np.nan,
                    eps=np.nan)
    w = float(np.linalg.det(s) / (trace / p) ** p)
    f = (2 * p ** 2 + p + 2) / (6 * p * df_error)
    chi2 = -(1 - f) * df_error * np.log(w) if w > 0 else np.inf
    dof = p * (p + 1) // 2 - 1
    return dict(W=w, chi2=chi2, mauchly_df=dof, mauchly_p=float(stats.chi2.sf(chi2, dof)),
                eps=trace ** 2 / (p * float(np.trace(s @ s))))


def mixed_anova_type3(data: pd.DataFrame, dv: str, order: list[str]) -> pd.DataFrame:
    """Mixed ANOVA with type III sums of squares, Mauchly and Greenhouse–Geisser (SPSS).

    Rows ``subset`` (between; only with two or more subsets), ``template``,
    ``template × subset`` (likewise) and their errors. Columns: SS, DF1, DF2,
    MS, F, p_unc, partial η² (``np2``); on the within rows Mauchly's W, its
    p, ε, ``gg_applied`` (Mauchly's p < 0.05), and ``df1``, ``df2``, ``p``:
    the degrees of freedom and p actually reported, GG-corrected where applied.
    F, p and ε are NaN when no subject's score changes with the template (0/0).
    """
    scores, groups, names = wide_scores(data, dv, order)
    n, k = scores.shape
    n_groups = len(names)
    sizes = np.bincount(groups, minlength=n_groups).astype(float)
    df_error = n - n_groups
    rows = []
    totals = scores.sum(axis=1) / np.sqrt(k)
    total_means = _cell_means(totals, groups, n_groups)
    ss_between_error = float(((totals - total_means[groups]) ** 2).sum())
    if n_groups > 1:
        ss_subset = float((sizes * (total_means - totals.mean()) ** 2).sum())
        rows.append(_f_row("subset", ss_subset, n_groups - 1, ss_between_error, df_error))
    rows.append(dict(Source="Error (between)", SS=ss_between_error, DF1=df_error,
                     MS=ss_between_error / df_error))
    constant = not np.ptp(scores, axis=1).any()
    # no subject's score changes: every within sum of squares is exactly 0, not rounding
    z = np.zeros((n, k - 1)) if constant else scores @ orthonormal_contrasts(k)
    means = _cell_means(z, groups, n_groups)
    residual = z - means[groups]
    error = residual.T @ residual
    ss_error = float(np.trace(error))
    p = k - 1
    unweighted = means.mean(axis=0)
    ss_template = float(unweighted @ unweighted) * n_groups ** 2 / float((1 / sizes).sum())
    within = [_f_row("template", ss_template, p, ss_error, p * df_error)]
    if n_groups > 1:
        weighted = (sizes[:, None] * means).sum(axis=0) / n
        ss_interaction = float((sizes * ((means - weighted) ** 2).sum(axis=1)).sum())
        within.append(_f_row("template × subset", ss_interaction, p * (n_groups - 1), ss_error,
                             p * df_error))
    spher = sphericity(error, df_error)
    gg = bool(np.isfinite(spher["mauchly_p"]) and spher["mauchly_p"] < SPHERICITY_ALPHA)
    for row in within:
        eps = spher["eps"]
        p_gg = (float(stats.f.sf(row["F"], row["DF1"] * eps, row["DF2"] * eps))
                if np.isfinite(row["F"]) and np.isfinite(eps) else np.nan)
        row.update(W=spher["W"], mauchly_p=spher["mauchly_p"], eps=eps, p_GG_corr=p_gg,
                   gg_applied=gg)
    rows.extend(within)
    rows.append(dict(Source="Error (within)", SS=ss_error, DF1=p * df_error,
                     MS=ss_error / (p * df_error)))
    table = pd.DataFrame(rows)
    applied = table["gg_applied"].fillna(False).astype(bool)
    factor = np.where(applied, table["eps"], 1.0)
    table["df1"] = table["DF1"] * factor
    table["df2"] = table["DF2"] * factor
    table["p"] = np.where(applied, table["p_GG_corr"], table["p_unc"])
    return table.assign(analysis="mixed-type3")[["analysis", *table.columns]]


def _emm(values: np.ndarray, groups: np.ndarray, sizes: np.ndarray) -> tuple[float, float,
                                                                             np.ndarray, float]:
    """Unweighted mean of the subset means of ``values``, its SE, the subset means, and the
    pooled within-subset variance (MSE, df N − G)."""
    means = _cell_means(values, groups, sizes.size)
    mse = float(((values - means[groups]) ** 2).sum() / (values.size - sizes.size))
    return float(means.mean()), float(np.sqrt(mse * (1 / sizes).sum()) / sizes.size), means, mse


def estimated_marginal_means(data: pd.DataFrame, dv: str, order: list[str], *,
                             confidence: float = 0.95) -> pd.DataFrame:
    """Per template and subset: n, mean, SD, and the EMM with SE and CI from the pooled
    error term and t(N − G); rows with ``subset == "emm"`` are the templates' EMMs over
    the subsets (unweighted), as SPSS's EMMEANS tables."""
    scores, groups, names = wide_scores(data, dv, order)
    sizes = np.bincount(groups, minlength=len(names)).astype(float)
    df = scores.shape[0] - len(names)
    quantile = float(stats.t.ppf(1 - (1 - confidence) / 2, df))
    rows = []
    for column, template in enumerate(order):
        values = scores[:, column]
        emm, se, means, mse = _emm(values, groups, sizes)
        for g, subset in enumerate(names):
            cell = values[groups == g]
            cell_se = float(np.sqrt(mse / sizes[g]))
            rows.append(dict(subset=subset, template=template, n=int(sizes[g]),
                             mean=float(means[g]), sd=float(cell.std(ddof=1)), emm=float(means[g]),
                             se=cell_se, df=df, ci_low=means[g] - quantile * cell_se,
                             ci_high=means[g] + quantile * cell_se))
        rows.append(dict(subset=EMM, template=template, n=int(sizes.sum()),
                         mean=float(values.mean()), sd=float(values.std(ddof=1)), emm=emm, se=se,
                         df=df, ci_low=emm - quantile * se, ci_high=emm + quantile * se))
    return pd.DataFrame(rows)


def emm_pairs(data: pd.DataFrame, dv: str, order: list[str], *, padjust: str = "bonf",
              confidence: float = 0.95) -> pd.DataFrame:
    """Pairwise comparisons of the templates' EMMs, over the subsets (``marginal``) and
    within each subset, as SPSS's "Pairwise Comparisons" tables.

    Each pair A − B is the EMM of the score difference, with its SE from the
    pooled within-subset variance of that difference and t(N − G). ``p_corr``
    is Bonferroni (or Holm) over the pairs of one row group; with ``bonf``
    the CI is Bonferroni-adjusted (confidence 1 − α/m), as SPSS prints it.
    """
    scores, groups, names = wide_scores(data, dv, order)
    sizes = np.bincount(groups, minlength=len(names)).astype(float)
    df = scores.shape[0] - len(names)
    pairs = list(combinations(range(len(order)), 2))
    alpha = 1 - confidence
    level = alpha / len(pairs) if padjust == "bonf" else alpha
    quantile = float(stats.t.ppf(1 - level / 2, df))
    frames = []
    for scope in [MARGINAL, *names]:
        rows = []
        for a, b in pairs:
            diff = scores[:, a] - scores[:, b]
            emm, se, means, mse = _emm(diff, groups, sizes)
            if scope != MARGINAL:
                g = names.index(scope)
                emm, se = float(means[g]), float(np.sqrt(mse / sizes[g]))
            t = emm / se if se > 0 else np.nan
            rows.append(dict(subset=scope, A=order[a], B=order[b], mean_diff=emm, se=se,
                             ci_low=emm - quantile * se, ci_high=emm + quantile * se, T=t,
                             dof=df, p_unc=(2 * float(stats.t.sf(abs(t), df))
                                            if np.isfinite(t) else np.nan)))
        table = pd.DataFrame(rows)
        table["p_corr"] = adjust_p(table["p_unc"].to_numpy(float), padjust)
        frames.append(table.assign(p_adjust=padjust))
    return pd.concat(frames, ignore_index=True)
