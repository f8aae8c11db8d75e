"""``isyb study``: the template-effect study."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from isyb.cli.options import (
    check_out_folder,
    check_writable,
    executor_arguments,
    executor_options,
    nonnegative_float,
    nonnegative_int,
    note,
    positive_int,
)
from isyb.errors import IsybError


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``commands``."""
    study = commands.add_parser(
        "study", help="template-effect study: deface a cohort with several templates, "
        "NMI, ANOVA, post-hoc tests, Table 1 and Fig. 6",
        description="For every subject (first T1w) × template: deface, keep the face mask, "
        "compute NMI and the other metrics over the subject's own evaluation region (the "
        "face rule placed on the subject's brain, minus its brain guard; the same voxels "
        "for every template), cached in OUT_DIR/work (registrations are kept per "
        "subject × template, so another method or design on the same cohort does not "
        "register again). Then the design's statistics (template within × subset between), "
        "Table 1, violins and report.html. --design names the analysis: isyb (default) is the ISYB "
        "data descriptor's (maskface with the template's face region; SPSS-style mixed "
        "ANOVA with type III sums, Greenhouse-Geisser when Mauchly rejects sphericity, "
        "Bonferroni pairs of the estimated marginal means); pingouin is isyb's earlier "
        "default analysis (blur with the face rule; type II sums, per-subset and pooled "
        "tests), which does not reproduce the descriptor. The design that ran is printed "
        "and written in the report. --method and --face-region override the "
        "design's defacing, and the report says so. --stats-only METRICS.tsv OUT_DIR "
        "recomputes the statistics, tables and figure from an existing metrics table "
        "without defacing.",
        epilog="examples:\n  isyb study bids/ study_out/ --templates default,"
        "MNI152NLin6Asym,MNI152NLin2009cAsym --split discovery:89,validation:126 --seed 1\n"
        "  isyb study --stats-only study_out/metrics.tsv restats/ --design isyb "
        "--templates default,MNI152NLin6Asym,MNI152NLin2009cAsym\n"
        "  isyb study bids/ study_out/ --templates default,MNI152NLin6Asym --executor dask "
        "--dask-cluster slurm --nprocs 20",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_argument("bids_dir", metavar="BIDS_DIR", type=Path, nargs="?",
                       help="the BIDS dataset (not with --stats-only)")
    study.add_argument("out_dir", metavar="OUT_DIR", type=Path, nargs="?")
    study.add_argument("--stats-only", metavar="METRICS_TSV", type=Path,
                       help="no defacing: the statistics, tables, figure and report of this "
                       "metrics.tsv (columns subject, subset, template and --dv; optional "
                       "status), written to OUT_DIR")
    study.add_argument("--design", choices=("isyb", "pingouin"), default="isyb",
                       help="the analysis (see above; default: %(default)s, the descriptor's)")
    study.add_argument("--templates",
                       help="comma-separated template names or paths (at least two), in the "
                       "order of the tables and figure; with --stats-only, the templates of "
                       "the table to compare (default: all, sorted)")
    study.add_argument("--method", choices=("blur", "remove", "noise", "maskface"),
                       help="how the face is obscured (default: the design's: maskface for "
                       "isyb, blur for pingouin)")
    study.add_argument("--face-region", choices=("rule", "template"),
                       help="face region of the defacing, as for `isyb deface` (default: the "
                       "design's: template for isyb, rule for pingouin)")
    study.add_argument("--face-margin", type=nonnegative_float, metavar="MM",
                       help="--face-region template: margin around the template's face, "
                       "template mm (default: the design's: 6 for isyb, mask_face's ROI "
                       "enlargement of round(6·pixdim) voxels on 1 mm heads; 8 for pingouin, "
                       "the deface default)")
    split = study.add_mutually_exclusive_group()
    split.add_argument("--split", help="subset sizes, counts or fractions, e.g. "
                       "discovery:89,validation:126 (default: two halves)")
    split.add_argument("--split-column", help="participants.tsv column giving the subset")
    study.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the random split")
    study.add_argument("--padjust", choices=("bonf", "holm"), default="bonf",
                       help="multiple-comparison correction of the post-hoc tests")
    study.add_argument("--wilcoxon", action="store_true",
                       help="--design pingouin: Wilcoxon signed-rank post-hoc tests instead of "
                       "paired t-tests")
    study.add_argument("--dv", choices=("nmi", "face_surface_changed_fraction"),
                       default="nmi", help="dependent variable (default: %(default)s)")
    study.add_argument("--study-iterations", type=positive_int, default=3,
                       help="template `study`: ANTs template-construction iterations "
                       "(default: %(default)s)")
    study.add_argument("--study-subjects", type=positive_int,
                       help="template `study`: build it from this many subjects, drawn with "
                       "--seed (default: all)")
    study.add_argument("--no-detectors", dest="detectors", action="store_false",
                       help="skip the face detectors (stock detector on the original and "
                       "defaced heads, 12-view ensemble on the defaced one; the slowest "
                       "checks): their metrics.tsv columns stay empty")
    study.add_argument("--no-reid", dest="reid", action="store_false",
                       help="skip the geometric face checks (face distances, "
                       "re-identification): their metrics.tsv columns stay empty. "
                       "Re-identification is N x N surface fits per template, about 4.9-6.4 "
                       "CPU hours for 215 subjects x 3 templates on the first run (each "
                       "distance is cached)")
    study.add_argument("--note", default="", help="a caption printed on the figure and tables")
    executor_arguments(study, "subjects")
    study.set_defaults(handler=cmd_study)


def _study_template(args: argparse.Namespace):
    """Build (once; cached in OUT_DIR) and prepare a head template from the cohort itself."""
    from isyb.study.cohort import find_t1w
    from isyb.templates.build import build_study_template
    from isyb.templates.fetch import sha256_file
    from isyb.templates.registry import prepare

    path = args.out_dir / "work" / (f"study_template_it{args.study_iterations}_n"
                                    f"{args.study_subjects or 'all'}_seed{args.seed}.nii.gz")
    if not path.is_file():
        note(f"building the study template from the cohort ({path})")
        build_study_template(sorted(find_t1w(args.bids_dir).values()), path,
                             n_subjects=args.study_subjects,
                             iterations=args.study_iterations, seed=args.seed, progress=note)
    return prepare(f"study{sha256_file(path)[:12]}", path, None,
                   source=f"study template built from {args.bids_dir}", progress=note)


def _stats_only(args: argparse.Namespace, options) -> int:
    from isyb.io import check_output_folder
    from isyb.study.study import stats_only

    if args.out_dir is not None:
        raise IsybError("--stats-only METRICS_TSV takes OUT_DIR only, no BIDS_DIR")
    out_dir = args.bids_dir
    if out_dir is None:
        raise IsybError("--stats-only METRICS_TSV needs OUT_DIR")
    check_output_folder(out_dir, ours=True)
    check_writable(out_dir)
    order = [n.strip() for n in args.templates.split(",") if n.strip()] if args.templates else None
    note(f"design: {options.design_label}")
    result = stats_only(args.stats_only, out_dir, options, order=order, log=note)
    print(json.dumps(result["summary"]))
    note(f"report: {out_dir / 'report.html'}")
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from isyb.bids.layout import check_separate, collect_participants
    from isyb.io import check_output_folder
    from isyb.study.study import StudyOptions, plan_cohort, run_study
    from isyb.templates.registry import resolve

    options = StudyOptions(design=args.design, method=args.method, face_region=args.face_region,
                           face_margin_mm=args.face_margin, dv=args.dv, split=args.split,
                           split_column=args.split_column, seed=args.seed,
                           padjust=args.padjust, parametric=not args.wilcoxon, note=args.note,
                           detectors=args.detectors, reid=args.reid)
    if args.stats_only is not None:
        return _stats_only(args, options)
    if args.bids_dir is None or args.out_dir is None:
        raise IsybError("give BIDS_DIR and OUT_DIR (or --stats-only METRICS_TSV OUT_DIR)")
    if not args.templates:
        raise IsybError("--templates is required (comma-separated names, at least two)")
    options.deface_options()  # bad defacing settings fail before any work
    executor = executor_options(args)
    names = [name.strip() for name in args.templates.split(",") if name.strip()]
    if len(set(names)) < 2:
        raise IsybError("--templates needs at least two different templates")
    check_separate(args.bids_dir, args.out_dir)  # OUT_DIR/work must not land in the dataset
    check_out_folder(args.out_dir, "OUT_DIR")
    check_output_folder(args.out_dir, ours=True)  # not under a file either
    collect_participants(args.bids_dir)  # a bad description or participants.tsv fails now
    plan_cohort(args.bids_dir, options)  # the split and cohort, before templates are prepared
    templates = [_study_template(args) if name == "study" else resolve(name, progress=note)
                 for name in names]
    note(f"design: {options.design_label}; defacing: {options.defacing_label}")
    result = run_study(args.bids_dir, args.out_dir, templates, options,
                       executor=executor, progress=not args.quiet, log=note)
    print(json.dumps(result["summary"]))
    note(f"report: {args.out_dir / 'report.html'}")
    return 0
