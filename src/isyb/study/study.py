"""``isyb study``: the whole template-effect analysis on a BIDS dataset.

The dependent variables (NMI, changed fraction of the face's skin surface)
are computed over each subject's evaluation region, the same voxels for
every template (see :mod:`isyb.study.run`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from isyb.bids.participants import read_participants
from isyb.deface.engine import DefaceOptions
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions
from isyb.io import atomic_path
from isyb.study.cohort import assign_subsets, find_t1w
from isyb.study.report import table1, violin_figure, write_report
from isyb.study.run import collect_metrics
from isyb.study.stats import (
    anova_tables,
    check_subsets,
    complete_cases,
    marginal_means,
    posthoc_tables,
)
from isyb.templates.face import FACE_MARGIN_MM
from isyb.templates.registry import Template

#: Fewest subjects a subset of the study may have.
MIN_SUBSET = 2


@dataclass(frozen=True)
class StudyOptions:
    """Settings of ``isyb study`` (see its ``--help``)."""

    method: str = "blur"
    face_region: str = "rule"
    face_margin_mm: float = FACE_MARGIN_MM
    dv: str = "nmi"
    split: str | None = None
    split_column: str | None = None
    seed: int = 0
    padjust: str = "bonf"
    parametric: bool = True
    note: str = ""

    def __post_init__(self) -> None:
        self.deface_options()  # bad defacing settings fail before any work

    def deface_options(self) -> DefaceOptions:
        """The defacing settings of every subject × template pair."""
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
    if len({t.name for t in templates}) < 2:
        raise IsybError("--templates needs at least two different templates")
    images, subsets = plan_cohort(bids_dir, options)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = collect_metrics(images, templates, out_dir / "work", options.deface_options(),
                              executor=executor, progress=progress)
    metrics.insert(1, "subset", metrics["subject"].map(subsets))
    write_tsv(metrics, out_dir / "metrics.tsv")
    failed = metrics[metrics["status"] != "ok"]
    data, dropped = complete_cases(metrics[metrics["status"] == "ok"].assign(
        **{options.dv: lambda t: t[options.dv].astype(float)}), options.dv)
    if log:
        for row in failed.itertuples():
            log(f"failed: sub-{row.subject} × {row.template}: {row.error}")
        if dropped:
            log(f"{len(dropped)} subject(s) dropped from the statistics (a template failed): "
                f"{', '.join(dropped)}")
    check_subsets(data)
    anova = anova_tables(data, options.dv)
    posthoc = posthoc_tables(data, options.dv, padjust=options.padjust,
                             parametric=options.parametric)
    means = marginal_means(data, options.dv)
    write_tsv(anova, out_dir / "anova.tsv")
    write_tsv(posthoc, out_dir / "posthoc.tsv")
    write_tsv(means, out_dir / "marginal_means.tsv")
    violin_figure(data, options.dv, out_dir / "fig6_violin.png",
                  order=[t.name for t in templates], note=options.note)
    summary = {
        "subjects": len(images),
        "templates": ", ".join(t.name for t in templates),
        "method": options.method,
        "face region": (options.face_region if options.face_region == "rule" else
                        f"{options.face_region}, margin {options.face_margin_mm:g} mm"),
        "metrics over": "each subject's evaluation region (face rule on its own brain, "
                        "minus its brain guard)",
        "dependent variable": options.dv,
        "subsets": ", ".join(f"{k} ({v})" for k, v in
                             data.groupby("subset")["subject"].nunique().items()),
        "failed subject × template pairs": len(failed),
        "subjects dropped from the statistics": len(dropped),
        "post-hoc": f"{'paired t' if options.parametric else 'Wilcoxon'}, "
                    f"{options.padjust} correction",
        "seed": options.seed,
    }
    write_report(out_dir, dv=options.dv, summary=summary,
                 parts=table1(means, anova, posthoc, options.dv), note=options.note)
    return {"summary": summary, "anova": anova, "posthoc": posthoc, "metrics": metrics}
