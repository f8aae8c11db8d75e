"""Statistics of the template-effect study (the data descriptor's Table 1), with pingouin.

All functions take the tidy metrics table (one row per subject × template,
columns ``subject``, ``subset``, ``template`` and the dependent variable) and
return tidy tables. Subjects missing any template are dropped first
(complete cases: repeated-measures ANOVA needs every level for every subject);
how many were dropped is reported with every result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from isyb.errors import IsybError

POOLED = "pooled"


def drop_reasons(metrics: pd.DataFrame, dv: str) -> dict[str, str]:
    """Why each incomplete subject leaves the statistics: ``a template failed`` (a pair
    whose status is not ok) or ``undefined <dv>`` (a pair that ran but scored NaN)."""
    status = metrics["status"] if "status" in metrics else pd.Series("ok", metrics.index)
    templates = metrics["template"].nunique()
    reasons: dict[str, str] = {}
    for subject, rows in metrics.groupby("subject", sort=True):
        ok = status[rows.index] == "ok"
        if (~ok).any():
            reasons[str(subject)] = "a template failed"
        elif (~np.isfinite(rows[dv].astype(float))).any():
            reasons[str(subject)] = f"undefined {dv}"
        elif rows["template"].nunique() < templates:
            reasons[str(subject)] = "a template missing"
    return reasons


def complete_cases(metrics: pd.DataFrame, dv: str) -> tuple[pd.DataFrame, list[str]]:
    """Rows of subjects with a finite ``dv`` for every template; and the dropped subjects."""
    ok = metrics[np.isfinite(metrics[dv].astype(float))]
    templates = metrics["template"].nunique()
    counts = ok.groupby("subject")["template"].nunique()
    keep = counts[counts == templates].index
    dropped = sorted(set(metrics["subject"]) - set(keep))
    return ok[ok["subject"].isin(keep)].copy(), dropped


def check_subsets(data: pd.DataFrame) -> None:
    """Raise a one-line error if a subset is too small for the ANOVAs.

    A subset needs at least 2 complete subjects, and at least as many as there
    are templates: Mauchly's sphericity test (and pingouin with it) needs
    n - 1 >= k - 1 degrees of freedom.
    """
    if data.empty:
        raise IsybError("no subject has a result for every template: nothing to compare")
    minimum = max(2, data["template"].nunique())
    sizes = data.groupby("subset")["subject"].nunique()
    small = sizes[sizes < minimum]
    if len(small):
        detail = ", ".join(f"{name} ({count})" for name, count in small.items())
        raise IsybError(f"subset(s) with fewer than {minimum} complete subjects (the minimum "
                        f"for {data['template'].nunique()} templates): {detail}")


def anova_tables(data: pd.DataFrame, dv: str) -> pd.DataFrame:
    """Mixed ANOVA (template within × subset between) and a repeated-measures ANOVA
    per subset and pooled, with Mauchly's test and the Greenhouse-Geisser correction.

    Effect sizes: partial eta squared (``np2``) for the mixed ANOVA, generalized
    eta squared (``ng2``) for the one-way repeated-measures ANOVAs (pingouin's
    defaults). ``analysis`` names the model: ``mixed``, ``rm:<subset>``, ``rm:pooled``.
    """
    import pingouin as pg

    frames = []
    if data["subset"].nunique() > 1:
        mixed = pg.mixed_anova(correction=True, data=data, dv=dv, within="template",
                                 between="subset", subject="subject")
        mixed = _within_undefined_when_constant(mixed, data, dv, ("template", "Interaction"))
        frames.append(mixed.assign(analysis="mixed"))
    groups = [(name, group) for name, group in data.groupby("subset", sort=True)]
    groups.append((POOLED, data))
    for name, group in groups:
        table = pg.rm_anova(correction=True, data=group, dv=dv, within="template",
                                 subject="subject", detailed=True)
        table = _within_undefined_when_constant(table, group, dv, ("template",))
        frames.append(table.assign(analysis=f"rm:{name}"))
    out = pd.concat(frames, ignore_index=True)
    first = ["analysis", "Source"]
    return out[first + [c for c in out.columns if c not in first]]


def _within_undefined_when_constant(table: pd.DataFrame, data: pd.DataFrame, dv: str,
                                    sources: tuple[str, ...]) -> pd.DataFrame:
    """F and p of the within-subject rows ``sources`` as NaN when no subject's score
    changes with the template.

    That happens with two identical templates: every within-subject sum of
    squares is 0, and F is 0/0. pingouin reports it as F = inf, p = 0 (which
    would read as a highly significant effect) or, when rounding leaves sums
    of squares of 1e-17, as F = 0, -0 or even -4. Between-subject rows keep
    their values.
    """
    if data.groupby("subject")[dv].agg(lambda v: v.max() - v.min()).ne(0).any():
        return table
    out = table.copy()
    rows = out["Source"].isin(sources)
    for column in ("F", "p-unc", "p_unc", "p-GG-corr", "p_GG_corr", "np2", "ng2", "eps"):
        if column in out:
            out.loc[rows, column] = np.nan
    return out


def adjust_p(p_values: np.ndarray, method: str) -> np.ndarray:
    """Bonferroni or Holm (1979) adjusted p-values of one family of tests.

    Unlike pingouin's ``multicomp``, an undefined test (NaN p: two templates
    with identical scores) still counts in the family size m: it was one of
    the comparisons made. Bonferroni: min(1, m p). Holm: the step-down
    max_{j<=i} min(1, (m - j + 1) p_(j)) over the sorted defined p-values.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    out = np.full(m, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if method == "bonf":
        out[finite] = np.minimum(1.0, m * p[finite])
    elif method == "holm":
        order = finite[np.argsort(p[finite], kind="stable")]
        steps = np.minimum(1.0, (m - np.arange(order.size)) * p[order])
        out[order] = np.maximum.accumulate(steps)
    else:
        raise IsybError(f"unknown p-value correction {method!r} (bonf, holm)")
    return out


def posthoc_tables(data: pd.DataFrame, dv: str, *, padjust: str = "bonf",
                   parametric: bool = True, order: list[str] | None = None,
                   confidence: float = 0.95) -> pd.DataFrame:
    """Paired tests between templates per subset and pooled (t-tests, or Wilcoxon).

    ``padjust`` is the correction (``bonf`` or ``holm``, :func:`adjust_p`);
    ``p_corr`` is recomputed so that undefined pairs count in the family.
    The statistic's column (``T`` or ``W_val``) is there even when every pair
    is undefined (pingouin then leaves it out). Pairs follow ``order`` (A
    before B; default: sorted names), and each has the mean paired difference
    A − B, its SE (SD/√n) and t(n − 1) confidence interval.
    """
    import pingouin as pg

    frames = []
    groups = [(name, group) for name, group in data.groupby("subset", sort=True)]
    groups.append((POOLED, data))
    stat = "T" if parametric else "W_val"
    for name, group in groups:
        table = pg.pairwise_tests(data=group, dv=dv, within="template", subject="subject",
                                  padjust=padjust, parametric=parametric)
        for column in (stat, "p_unc"):
            if column not in table:
                table[column] = np.nan
        if len(table) > 1:
            table["p_corr"] = adjust_p(table["p_unc"].to_numpy(float), padjust)
        table = _in_order(table, order or sorted(group["template"].unique()))
        wide = group.pivot(index="subject", columns="template", values=dv)
        diffs = [wide[a] - wide[b] for a, b in zip(table["A"], table["B"], strict=True)]
        n = np.array([d.size for d in diffs], dtype=float)
        table["mean_diff"] = [float(d.mean()) for d in diffs]
        table["se"] = [float(d.std(ddof=1)) for d in diffs] / np.sqrt(n)
        half = stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * table["se"]
        table["ci_low"], table["ci_high"] = table["mean_diff"] - half, table["mean_diff"] + half
        frames.append(table.assign(subset=name))
    out = pd.concat(frames, ignore_index=True)
    return out[["subset"] + [c for c in out.columns if c != "subset"]]


def _in_order(table: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """pingouin's pairs with A before B in ``order`` (T and Hedges' g change sign when a
    pair is turned round), rows sorted by ``order``."""
    out = table.copy()
    rank = {name: index for index, name in enumerate(order)}
    turn = np.array([rank[a] > rank[b] for a, b in zip(out["A"], out["B"], strict=True)],
                    dtype=bool)
    out.loc[turn, ["A", "B"]] = out.loc[turn, ["B", "A"]].to_numpy()
    for column in ("T", "hedges"):
        if column in out:
            out.loc[turn, column] = -out.loc[turn, column]
    keys = [(rank[a], rank[b]) for a, b in zip(out["A"], out["B"], strict=True)]
    return out.iloc[sorted(range(len(out)), key=keys.__getitem__)].reset_index(drop=True)


def marginal_means(data: pd.DataFrame, dv: str, *, confidence: float = 0.95,
                   order: list[str] | None = None) -> pd.DataFrame:
    """Mean, SD, n and a t-based confidence interval per template, per subset and pooled.

    Rows with ``subset == "emm"`` are the estimated marginal means of each
    template over subsets: the unweighted mean of the subset means, with
    SE = sqrt(sum of the subset SEs squared) / k and a normal-approximation CI,
    so unequal subset sizes do not weight the estimate. Templates follow
    ``order`` (default: sorted names).
    """
    order = order or sorted(data["template"].unique())
    rows = []
    groups = [(name, group) for name, group in data.groupby("subset", sort=True)]
    groups.append((POOLED, data))
    level = 1.0 - (1.0 - confidence) / 2.0
    for name, group in groups:
        for template in order:
            values = group.loc[group["template"] == template, dv]
            n = int(values.size)
            mean, sd = float(values.mean()), float(values.std(ddof=1)) if n > 1 else np.nan
            se = sd / np.sqrt(n) if n > 1 else np.nan
            half = float(stats.t.ppf(level, n - 1) * se) if n > 1 else np.nan
            rows.append(dict(subset=name, template=template, n=n, mean=mean, sd=sd, se=se,
                             ci_low=mean - half, ci_high=mean + half))
    table = pd.DataFrame(rows)
    per_subset = table[table["subset"] != POOLED]
    if per_subset["subset"].nunique() > 1:
        z = float(stats.norm.ppf(level))
        for template in order:
            cells = per_subset[per_subset["template"] == template]
            k = len(cells)
            mean = float(cells["mean"].mean())
            se = float(np.sqrt((cells["se"] ** 2).sum()) / k)
            rows.append(dict(subset="emm", template=template, n=int(cells["n"].sum()),
                             mean=mean, sd=np.nan, se=se, ci_low=mean - z * se,
                             ci_high=mean + z * se))
    return pd.DataFrame(rows)
