"""Outputs of the template-effect study: Table 1, the Fig. 6 violins, and report.html."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd

from isyb import __version__
from isyb.io import atomic_path, write_text
from isyb.study.stats import POOLED
from isyb.viz.html import img, page

DV_LABELS = {"nmi": "NMI (removed face vs original face)",
             "face_surface_changed_fraction": "fraction of face skin surface changed"}
#: What a higher score means, printed under the report's title.
DV_DIRECTION = {
    "nmi": "A higher NMI means more facial information removed: NMI is the normalised "
           "mutual information between the original face and the part the defacing removed "
           "(0: nothing removed), as in the ISYB data descriptor. The template with the "
           "higher NMI defaced more of the face.",
    "face_surface_changed_fraction": "A higher fraction means more of the face's skin "
           "surface was changed by the defacing.",
}
EFFECT_LABELS = {"np2": "partial η²", "ng2": "generalised η²"}
#: The style of table1.html and report.html.
STYLE = ("body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 8px}")


def _fmt(value: object, digits: int = 3) -> str:
    if isinstance(value, float | np.floating):
        if not np.isfinite(value):
            return "–"
        return f"{value:.2e}" if 0 < abs(value) < 10 ** -digits else f"{value:.{digits}f}"
    return str(value)


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join([header, rule, *rows])


def table1(means: pd.DataFrame, anova: pd.DataFrame, posthoc: pd.DataFrame,
           dv: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The three parts of Table 1: descriptives, ANOVA effects, post-hoc pairs."""
    descriptive = means.assign(**{
        f"{dv} mean ± SD": [f"{m:.4f} ± {s:.4f}" if np.isfinite(s) else f"{m:.4f}"
                            for m, s in zip(means["mean"], means["sd"], strict=True)],
        "95% CI": [f"[{lo:.4f}, {hi:.4f}]" for lo, hi in
                   zip(means["ci_low"], means["ci_high"], strict=True)],
    })[["subset", "template", "n", f"{dv} mean ± SD", "95% CI"]]
    effects = anova[anova["Source"] != "Error"].copy()
    effects["df"] = [_degrees(anova, row) for _, row in effects.iterrows()]
    # two templates: sphericity holds trivially and pingouin has no GG or Mauchly columns
    effects = effects.reindex(columns=["analysis", "Source", "df", "F", "p_unc", "p_GG_corr",
                                       "eps", "W_spher", "p_spher", "np2", "ng2"]).rename(
        columns={**EFFECT_LABELS, "W_spher": "Mauchly W", "p_spher": "Mauchly p"})
    parametric = bool(posthoc["Parametric"].all()) if "Parametric" in posthoc else True
    stat = "T" if parametric else "W_val"
    pairs = posthoc.reindex(columns=["subset", "A", "B", "mean_diff", "se", "ci_low", "ci_high",
                                     stat, "dof", "p_unc", "p_corr", "p_adjust", "hedges"])
    return descriptive, effects, pairs  # one pair: pingouin adds no correction


def table1_isyb(means: pd.DataFrame, anova: pd.DataFrame, pairs: pd.DataFrame,
                dv: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Table 1 of the isyb design (SPSS's tables): per template and subset the mean, SD and
    EMM with its 95% CI; the mixed ANOVA with GG-corrected df where applied, partial η²,
    Mauchly's W and p and ε; the EMM pairs with mean difference, SE, CI, t, df and p."""
    descriptive = pd.DataFrame({
        "template": means["template"],
        "subset": means["subset"].replace({"emm": "all (EMM)"}),
        "n": means["n"],
        f"{dv} mean ± SD": [f"{m:.4f} ± {s:.4f}" for m, s in
                            zip(means["mean"], means["sd"], strict=True)],
        "EMM [95% CI]": [f"{e:.4f} [{lo:.4f}, {hi:.4f}]" for e, lo, hi in
                         zip(means["emm"], means["ci_low"], means["ci_high"], strict=True)],
    })
    effects = anova[~anova["Source"].str.startswith("Error")]
    correction = ["Greenhouse–Geisser" if applied is True else
                  ("" if applied is not False else
                   "none (two templates: sphericity holds)" if not np.isfinite(mauchly_p) else
                   "none (sphericity not rejected)")
                  for applied, mauchly_p in zip(effects["gg_applied"],
                                                effects["mauchly_p"].astype(float), strict=True)]
    table = pd.DataFrame({
        "Source": effects["Source"], "F": effects["F"],
        "df": [f"{a:.4g}, {b:.4g}" for a, b in zip(effects["df1"], effects["df2"], strict=True)],
        "p": effects["p"], "partial η²": effects["np2"], "Mauchly W": effects["W"],
        "Mauchly p": effects["mauchly_p"], "ε (GG)": effects["eps"], "correction": correction})
    comparisons = pd.DataFrame({
        "subset": pairs["subset"], "A": pairs["A"], "B": pairs["B"],
        "mean difference (A − B)": pairs["mean_diff"], "SE": pairs["se"],
        "CI low": pairs["ci_low"], "CI high": pairs["ci_high"], "t": pairs["T"],
        "df": pairs["dof"], "p": pairs["p_unc"], f"p ({pairs['p_adjust'].iloc[0]})":
        pairs["p_corr"]})
    return descriptive, table, comparisons


def _degrees(anova: pd.DataFrame, row: pd.Series) -> str:
    """"df1, df2" of an effect: the mixed ANOVA has both; a one-way repeated-measures
    ANOVA has the effect's DF and its Error row's DF."""
    if "DF1" in row and pd.notna(row["DF1"]):
        return f"{row['DF1']:g}, {row['DF2']:g}"
    error = anova[(anova["analysis"] == row["analysis"]) & (anova["Source"] == "Error")]
    return f"{row['DF']:g}, {error['DF'].iloc[0]:g}"


def line_alpha(n: int) -> float:
    """Opacity of one subject's line in Fig. 6: 0.5 up to 10 subjects, then falling as
    5/n (so that n lines add up to about the same ink) to a floor of 0.02."""
    return float(min(0.5, max(0.02, 5.0 / max(n, 1))))


def violin_figure(metrics: pd.DataFrame, dv: str, path: Path, *, order: list[str] | None = None,
                  note: str = "") -> None:
    """Violins per template over one line per subject, one panel per subset plus pooled.

    ``order`` is the templates' order on the x axis (default: sorted names).
    The lines' opacity falls with n (:func:`line_alpha`) and the violins and
    their means are drawn above them, so that 215 lines do not hide them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    templates = order or sorted(metrics["template"].unique())
    panels = [*sorted(metrics["subset"].unique()), POOLED]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6),
                                sharey=True, squeeze=False)
    for axis, panel in zip(axes[0], panels, strict=True):
        data = metrics if panel == POOLED else metrics[metrics["subset"] == panel]
        wide = data.pivot(index="subject", columns="template", values=dv)[templates]
        positions = np.arange(len(templates))
        alpha = line_alpha(len(wide))
        for _, row in wide.iterrows():
            axis.plot(positions, row.to_numpy(), color="0.35", alpha=alpha, linewidth=0.8,
                      marker="o", markersize=2.5, zorder=1)
        parts = axis.violinplot([wide[t].dropna() for t in templates], positions,
                                showmeans=True, widths=0.8)
        for name, artist in parts.items():
            for item in artist if name == "bodies" else [artist]:
                item.set_zorder(3)
        for body in parts["bodies"]:
            body.set_alpha(0.55)
            body.set_edgecolor("black")
        axis.set_xticks(positions, templates, rotation=20)
        axis.set_title(f"{panel} (n = {len(wide)})")
        axis.set_xlabel("head template")
    axes[0, 0].set_ylabel(DV_LABELS.get(dv, dv))
    if note:
        figure.suptitle(note, fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)


def write_report(out_dir: Path, *, dv: str, summary: dict, parts: tuple[pd.DataFrame, ...],
                 note: str = "", titles: tuple[str, ...] | None = None) -> None:
    """``table1.md``, ``table1.html`` and ``report.html`` (figure embedded, files linked).

    ``summary["design"]`` and the direction of ``dv`` are printed first.
    """
    titles = titles or ("Descriptives (mean ± SD, 95% CI)",
                        "ANOVA (Greenhouse–Geisser corrected p)",
                        "Post-hoc paired tests between templates")
    direction = DV_DIRECTION.get(dv, "")
    design = f"Design: {summary['design']}." if "design" in summary else ""
    markdown = [f"# Table 1: effect of the head template on {dv}", "", design, "", direction, ""]
    if note:
        markdown += [f"*{note}*", ""]
    for title, table in zip(titles, parts, strict=True):
        markdown += [f"## {title}", "", _markdown(table), ""]
    write_text(out_dir / "table1.md", "\n".join(markdown))
    tables_html = "".join(f"<h2>{html.escape(t)}</h2>{table.to_html(index=False, na_rep='–')}"
                          for t, table in zip(titles, parts, strict=True))
    note_html = "".join(f"<p>{html.escape(text)}</p>" for text in (design, direction) if text)
    note_html += f"<p><em>{html.escape(note)}</em></p>" if note else ""
    write_text(out_dir / "table1.html", page("Table 1", note_html + tables_html, style=STYLE))
    facts = "".join(f"<li>{html.escape(k)}: {html.escape(str(v))}</li>"
                    for k, v in summary.items())
    links = "".join(f"<li><a href='{name}'>{name}</a></li>" for name in (
        "metrics.tsv", "anova.tsv", "posthoc.tsv", "marginal_means.tsv", "table1.md",
        "table1.html", "fig6_violin.png"))
    figure = img(out_dir / "fig6_violin.png", "Fig. 6 violins", extra="style='max-width:100%'")
    body = (f"<h1>Template-effect study</h1>{note_html}<ul>{facts}</ul>{figure}{tables_html}"
            f"<h2>Files</h2><ul>{links}</ul><p>isyb {__version__}</p>")
    write_text(out_dir / "report.html", page("isyb study", body, style=STYLE))
