"""``isyb study``: the whole template-effect analysis on a BIDS dataset.

The dependent variables (NMI, changed fraction of the face's skin surface)
are computed over each subject's evaluation region, the same voxels for
every template (see :mod:`isyb.study.run`).

The face margin of ``--design isyb`` (issue 13): 6 mm, mask_face's own ROI
enlargement, not the deface default of 8 mm. Where mask_face knows the
template's CAPIIO matrix, its face ROI is the box of the landmark lines,
extended to the image edge on the face side and enlarged by ``round(6 *
pixdim)`` voxels per axis (``mask_surf_auto.m``, ``init_params``); on the
descriptor's 1 mm heads that is 6 voxels, 6 mm
(:func:`isyb.deface.maskface_roi.roi_margin_mm`). Inside the ROI, mask_face
obscures a layer of ±8 mm around the *subject's own* skin, which isyb's
``maskface`` builds itself (:mod:`isyb.deface.maskface`) whatever the
region. The deface default of 8 mm (:data:`isyb.templates.face.FACE_MARGIN_MM`)
was taken from that layer's half-thickness, a different quantity: with
``maskface``, which applies the layer itself, the same 8 mm reappeared as the
region's margin, where mask_face has its ROI enlargement. So for a template
without a CAPIIO matrix, whose region is isyb's template face region, the
design grows that region by mask_face's ROI enlargement, 6 mm.
The margin is fixed in template mm, not ``round(6 p) * p`` of each
subject's voxel size ``p``: the descriptor's heads are 1 mm, and the
simulation's coarser voxels (3 mm, for speed) stand in for them; at 3 mm the
tool's formula would give 54 mm, a property of voxels the descriptor never
used. (The landmark box of CN200, Chinese2020 and MNI152 keeps the tool's
formula at every voxel size, as ``isyb deface --method maskface`` does.)

What the margin cannot make the same: mask_face's ROI is a *box*, open to
the image edge in front of the face, so a face that protrudes further than
the template's is never cut off along the face normal, and the template
moves only the box's edges (forehead, sides, chin, back). isyb's template
face region is a *shell* that follows the registered template's face, and a
subject's skin more than the margin beyond it stays untouched. The shell is
the nearer analogue of the template's face *shape* for a template without
landmarks; it is stricter than mask_face along the face normal, and a
template effect it shows in the simulation comes in part from that
difference (see ``benchmarks/README.md``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from isyb.bids.participants import read_participants
from isyb.deface.engine import DefaceOptions
from isyb.deface.maskface_roi import DESCRIPTOR_VOXEL_MM, roi_margin_mm
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions
from isyb.io import atomic_path
from isyb.study.cohort import assign_subsets, find_t1w
from isyb.study.report import table1, table1_isyb, violin_figure, write_report
from isyb.study.run import collect_metrics
from isyb.study.spss import emm_pairs, estimated_marginal_means, mixed_anova_type3
from isyb.study.stats import (
    anova_tables,
    check_subsets,
    complete_cases,
    drop_reasons,
    marginal_means,
    posthoc_tables,
)
from isyb.templates.face import FACE_MARGIN_MM
from isyb.templates.registry import Template

#: Fewest subjects a subset of the study may have.
MIN_SUBSET = 2


@dataclass(frozen=True)
class Design:
    """A named study design: the defacing it implies and how the statistics are done."""

    name: str
    method: str
    face_region: str
    statistics: str
    face_margin_mm: float = FACE_MARGIN_MM


#: The template face region's margin of ``--design isyb``: mask_face's ROI enlargement on
#: the descriptor's 1 mm heads, round(6 * 1) voxels = 6 mm (see the module docstring).
ISYB_FACE_MARGIN_MM = roi_margin_mm(DESCRIPTOR_VOXEL_MM)

DESIGNS = {
    "isyb": Design("isyb", "maskface", "template",
                   "the data descriptor's (SPSS): mixed ANOVA with type III sums, "
                   "Greenhouse–Geisser when Mauchly rejects sphericity (p < 0.05), "
                   "Bonferroni pairs of the estimated marginal means, EMM 95% CIs from the "
                   "pooled error term and t(N − G)", face_margin_mm=ISYB_FACE_MARGIN_MM),
    "pingouin": Design("pingouin", "blur", "rule",
                       "pingouin's mixed ANOVA (type II sums) and repeated-measures ANOVAs "
                       "per subset and pooled (Greenhouse–Geisser p beside the uncorrected "
                       "one), paired tests per subset and pooled, t CIs per cell; not the "
                       "descriptor's analysis (see --design isyb)"),
}
#: The design of ``isyb study`` without ``--design``: the descriptor's (issue 13 item 2).
DEFAULT_DESIGN = "isyb"


@dataclass(frozen=True)
class StudyOptions:
    """Settings of ``isyb study`` (see its ``--help``).

    ``design`` names the statistics and supplies ``method``, ``face_region``
    and ``face_margin_mm`` when they are not given (isyb: maskface, template,
    :data:`ISYB_FACE_MARGIN_MM`; pingouin: blur, rule, the deface default);
    given ones override it, and :attr:`design_label` says so.
    """

    design: str = DEFAULT_DESIGN
    method: str | None = None
    face_region: str | None = None
    face_margin_mm: float | None = None
    dv: str = "nmi"
    split: str | None = None
    split_column: str | None = None
    seed: int = 0
    padjust: str = "bonf"
    parametric: bool = True
    note: str = ""
    detectors: bool = True
    reid: bool = True

    def __post_init__(self) -> None:
        if self.design not in DESIGNS:
            raise IsybError(f"unknown design {self.design!r}: use one of {', '.join(DESIGNS)}")
        design = DESIGNS[self.design]
        if self.method is None:
            object.__setattr__(self, "method", design.method)
        if self.face_region is None:
            object.__setattr__(self, "face_region", design.face_region)
        if self.face_margin_mm is None:
            object.__setattr__(self, "face_margin_mm", design.face_margin_mm)
        if self.design == "isyb" and not self.parametric:
            raise IsybError("--wilcoxon: the isyb design compares estimated marginal means "
                            "with t tests; use --design pingouin for Wilcoxon tests")

    @property
    def design_label(self) -> str:
        """The design's name, with what the options changed: ``isyb (method blur)``,
        ``isyb (face margin 3 mm)``."""
        design = DESIGNS[self.design]
        changed = [f"{name.replace('_', ' ')} {value}" for name, value, default in (
            ("method", self.method, design.method),
            ("face_region", self.face_region, design.face_region)) if value != default]
        if self.face_region == "template" and self.face_margin_mm != design.face_margin_mm:
            changed.append(f"face margin {self.face_margin_mm:g} mm")
        return f"{self.design} ({', '.join(changed)})" if changed else self.design

    @property
    def defacing_label(self) -> str:
        """The defacing every pair gets: ``maskface, face region template, margin 6 mm``."""
        region = f"face region {self.face_region}"
        if self.face_region == "template":
            region += f", margin {self.face_margin_mm:g} mm"
        return f"{self.method}, {region}"

    def deface_options(self) -> DefaceOptions:
        """The defacing settings of every subject × template pair (a one-line error for
        bad ones)."""
        return DefaceOptions(method=self.method, face_region=self.face_region,
                             face_margin_mm=self.face_margin_mm)


def write_tsv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, na_rep="n/a")


def plan_cohort(bids_dir: Path, options: StudyOptions) -> tuple[dict[str, Path], dict[str, str]]:
    """The cohort (each subject's first T1w) and each subject's subset, checked.

    Cheap (file names and ``participants.tsv`` only), so the command line runs it
    before it prepares any template: a split that does not fit the cohort, or a
    subset with fewer than ``MIN_SUBSET`` subjects (no variance, no statistics),
    is refused within a second instead of after minutes of preparation.
    """
    images = find_t1w(bids_dir)
    subsets = assign_subsets(sorted(images), split=options.split, column=options.split_column,
                             participants=read_participants(bids_dir), seed=options.seed)
    counts = Counter(subsets.values())
    small = sorted(name for name, n in counts.items() if n < MIN_SUBSET)
    if small:
        raise IsybError(f"subset(s) {', '.join(small)} of the {len(images)}-subject cohort "
                        f"would have fewer than {MIN_SUBSET} subjects; the statistics need "
                        f"at least {MIN_SUBSET} per subset")
    return images, subsets


def run_study(bids_dir: Path, out_dir: Path, templates: list[Template], options: StudyOptions,
              *, executor: ExecutorOptions | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> dict:
    """Deface every subject with every template, then the statistics and the report.

    ``executor`` says where the subjects run (default: one local process; see
    :mod:`isyb.executor`); the outputs are the same whichever runs them.
    """
    options.deface_options()  # bad defacing settings fail before any work
    if len({t.name for t in templates}) < 2:
        raise IsybError("--templates needs at least two different templates")
    images, subsets = plan_cohort(bids_dir, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = collect_metrics(images, templates, out_dir / "work", options.deface_options(),
                              executor=executor, progress=progress,
                              detectors=options.detectors, reid=options.reid)
    metrics.insert(1, "subset", metrics["subject"].map(subsets))
    write_tsv(metrics, out_dir / "metrics.tsv")
    return analyse(metrics, out_dir, options, [t.name for t in templates], log=log)


ISYB_TITLES = ("Descriptives: mean ± SD, and estimated marginal means with 95% CI "
               "(pooled error, t(N − G))",
               "Mixed ANOVA, type III sums (Greenhouse–Geisser df and p where Mauchly rejects "
               "sphericity)",
               "Pairwise comparisons of the estimated marginal means (95% CI "
               "Bonferroni-adjusted)")


def _statistics(data: pd.DataFrame, options: StudyOptions, order: list[str]) -> tuple:
    """ANOVA, post-hoc and means tables of the design, and the three parts of Table 1."""
    dv = options.dv
    if options.design == "isyb":
        anova = mixed_anova_type3(data, dv, order)
        posthoc = emm_pairs(data, dv, order, padjust=options.padjust)
        means = estimated_marginal_means(data, dv, order)
        return anova, posthoc, means, table1_isyb(means, anova, posthoc, dv)
    anova = anova_tables(data, dv)
    posthoc = posthoc_tables(data, dv, padjust=options.padjust, parametric=options.parametric,
                             order=order)
    means = marginal_means(data, dv, order=order)
    return anova, posthoc, means, table1(means, anova, posthoc, dv)


def _face_checks(options: StudyOptions) -> str:
    """The face checks a run made, in words, for the summary."""
    done = [name for name, on in (("face detectors", options.detectors),
                                  ("re-identification", options.reid)) if on]
    return ", ".join(done) or "none (--no-detectors --no-reid)"


def analyse(metrics: pd.DataFrame, out_dir: Path, options: StudyOptions, order: list[str],
            *, log: Callable[[str], None] | None = None, source: str | None = None) -> dict:
    """Statistics, tables, Fig. 6 and report.html of a metrics table (``metrics.tsv``).

    ``order`` is the templates' order (``--templates``) in the figure and tables;
    ``source`` the table's file when it was read (``--stats-only``).
    """
    status = metrics["status"] if "status" in metrics else pd.Series("ok", metrics.index)
    failed = metrics[status != "ok"]
    reasons = drop_reasons(metrics, options.dv)
    data, dropped = complete_cases(metrics[status == "ok"].assign(
        **{options.dv: lambda t: t[options.dv].astype(float)}), options.dv)
    if log:
        for row in failed.itertuples():
            log(f"failed: sub-{row.subject} × {row.template}: {getattr(row, 'error', '')}")
        for reason in sorted(set(reasons.values())):
            subjects = [s for s in dropped if reasons.get(s) == reason]
            if subjects:
                log(f"{len(subjects)} subject(s) dropped from the statistics ({reason}): "
                    f"{', '.join(subjects)}")
    check_subsets(data)
    anova, posthoc, means, parts = _statistics(data, options, order)
    write_tsv(anova, out_dir / "anova.tsv")
    write_tsv(posthoc, out_dir / "posthoc.tsv")
    write_tsv(means, out_dir / "marginal_means.tsv")
    violin_figure(data, options.dv, out_dir / "fig6_violin.png", order=order, note=options.note)
    summary = {
        "subjects": int(metrics["subject"].nunique()),
        "templates": ", ".join(order),
        "method": options.method,
        "face region": (options.face_region if options.face_region == "rule" else
                        f"{options.face_region}, margin {options.face_margin_mm:g} mm"
                        + (" (mask_face's ROI enlargement, round(6·pixdim) voxels at 1 mm)"
                           if options.design == "isyb"
                           and options.face_margin_mm == ISYB_FACE_MARGIN_MM else "")),
        "metrics over": "each subject's evaluation region (face rule on its own brain, "
                        "minus its brain guard)",
        "dependent variable": options.dv,
        "subsets": ", ".join(f"{k} ({v})" for k, v in
                             data.groupby("subset")["subject"].nunique().items()),
        "failed subject × template pairs": len(failed),
        "subjects dropped from the statistics": len(dropped),
        "post-hoc": (f"pairs of estimated marginal means, t(N − G), {options.padjust} "
                     "correction" if options.design == "isyb" else
                     f"{'paired t' if options.parametric else 'Wilcoxon'}, "
                     f"{options.padjust} correction"),
        "seed": options.seed,
        **({"metrics from": source} if source else {"face checks": _face_checks(options)}),
    }
    summary = {"design": options.design_label,
               "statistics": DESIGNS[options.design].statistics, **summary}
    write_report(out_dir, dv=options.dv, summary=summary, parts=parts, note=options.note,
                 titles=ISYB_TITLES if options.design == "isyb" else None)
    return {"summary": summary, "anova": anova, "posthoc": posthoc, "metrics": metrics}


REQUIRED_COLUMNS = ("subject", "subset", "template")


def read_metrics(path: Path, dv: str, order: list[str] | None = None) -> pd.DataFrame:
    """A ``metrics.tsv`` (of ``isyb study`` or from elsewhere) checked for the statistics.

    Needs the columns ``subject``, ``subset``, ``template`` and ``dv``; a
    ``status`` column is optional (rows not ``ok`` are failed pairs). Every
    subject needs one row per template, and one subset. ``order`` (the
    ``--templates`` names) selects and orders the templates; every name must
    be in the table. Raises a one-line :class:`IsybError` otherwise.
    """
    if not path.is_file():
        raise IsybError(f"{path}: no such metrics table")
    try:
        table = pd.read_csv(path, sep="\t", dtype={"subject": str, "subset": str,
                                                   "template": str}, na_values=["n/a"],
                            keep_default_na=True)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise IsybError(f"{path}: not a tab-separated table ({exc})") from None
    missing = [c for c in (*REQUIRED_COLUMNS, dv) if c not in table]
    if missing:
        raise IsybError(f"{path}: missing column(s) {', '.join(missing)} (needs subject, "
                        f"subset, template and {dv})")
    if table[list(REQUIRED_COLUMNS)].isna().any().any():
        raise IsybError(f"{path}: empty subject, subset or template cells")
    values = pd.to_numeric(table[dv], errors="coerce")
    if (values.isna() & table[dv].notna()).any():
        raise IsybError(f"{path}: column {dv} holds values that are not numbers")
    table[dv] = values
    if order:
        unknown = [t for t in order if t not in set(table["template"])]
        if unknown:
            raise IsybError(f"{path}: no rows for template(s) {', '.join(unknown)}")
        table = table[table["template"].isin(order)]
    pairs = table.groupby(["subject", "template"]).size()
    if (pairs > 1).any():
        subject, template = pairs[pairs > 1].index[0]
        raise IsybError(f"{path}: sub-{subject} has {pairs.max()} rows for template {template}")
    templates = sorted(table["template"].unique())
    if len(templates) < 2:
        raise IsybError(f"{path}: needs at least two templates, found {', '.join(templates)}")
    counts = table.groupby("subject")["template"].nunique()
    if (counts < len(templates)).any():
        subject = counts[counts < len(templates)].index[0]
        absent = sorted(set(templates) - set(table.loc[table["subject"] == subject, "template"]))
        raise IsybError(f"{path}: sub-{subject} has no row for template(s) {', '.join(absent)}")
    if (table.groupby("subject")["subset"].nunique() > 1).any():
        raise IsybError(f"{path}: a subject is in more than one subset")
    return table.reset_index(drop=True)


def stats_only(metrics_path: Path, out_dir: Path, options: StudyOptions, *,
               order: list[str] | None = None,
               log: Callable[[str], None] | None = None) -> dict:
    """``isyb study --stats-only``: statistics, tables, Fig. 6 and report of an existing
    metrics table, without defacing. Nothing is written when the table is refused."""
    metrics = read_metrics(metrics_path, options.dv, order)
    order = order or sorted(metrics["template"].unique())
    status = metrics["status"] if "status" in metrics else pd.Series("ok", metrics.index)
    check_subsets(complete_cases(metrics[status == "ok"], options.dv)[0])
    out_dir.mkdir(parents=True, exist_ok=True)
    if metrics_path.resolve() != (out_dir / "metrics.tsv").resolve():
        write_tsv(metrics, out_dir / "metrics.tsv")
    return analyse(metrics, out_dir, options, order, log=log, source=str(metrics_path))
