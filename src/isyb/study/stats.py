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


def posthoc_tables(data: pd.DataFrame, dv: str, *, padjust: str = "bonf",
                   parametric: bool = True) -> pd.DataFrame:
    """Paired tests between templates per subset and pooled (t-tests, or Wilcoxon).

    ``padjust`` is pingouin's correction name (``bonf`` or ``holm``).
    """
    import pingouin as pg

    frames = []
    groups = [(name, group) for name, group in data.groupby("subset", sort=True)]
    groups.append((POOLED, data))
    for name, group in groups:
        table = pg.pairwise_tests(data=group, dv=dv, within="template", subject="subject",
                                  padjust=padjust, parametric=parametric)
        frames.append(table.assign(subset=name))
    out = pd.concat(frames, ignore_index=True)
    return out[["subset"] + [c for c in out.columns if c != "subset"]]


def marginal_means(data: pd.DataFrame, dv: str, *, confidence: float = 0.95) -> pd.DataFrame:
    """Mean, SD, n and a t-based confidence interval per template, per subset and pooled.

    Rows with ``subset == "emm"`` are the estimated marginal means of each
    template over subsets: the unweighted mean of the subset means, with
    SE = sqrt(sum of the subset SEs squared) / k and a normal-approximation CI,
    so unequal subset sizes do not weight the estimate.
    """
    rows = []
    groups = [(name, group) for name, group in data.groupby("subset", sort=True)]
    groups.append((POOLED, data))
    level = 1.0 - (1.0 - confidence) / 2.0
    for name, group in groups:
        for template, values in group.groupby("template", sort=True)[dv]:
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
        for template, cells in per_subset.groupby("template", sort=True):
            k = len(cells)
            mean = float(cells["mean"].mean())
            se = float(np.sqrt((cells["se"] ** 2).sum()) / k)
            rows.append(dict(subset="emm", template=template, n=int(cells["n"].sum()),
                             mean=mean, sd=np.nan, se=se, ci_low=mean - z * se,
                             ci_high=mean + z * se))
    return pd.DataFrame(rows)
