"""The release workflow: ``isyb import``, ``isyb split`` and the BIDS-App levels
(``isyb BIDS_DIR OUTPUT_DIR participant|group``)."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from isyb.cli.options import (
    APP,
    bids_app_arguments,
    check_not_input,
    check_out_folder,
    check_output_file,
    check_writable,
    executor_arguments,
    executor_options,
    failure,
    nonnegative_int,
    note,
    positive_float,
    positive_int,
)
from isyb.errors import IsybError

EXAMPLES_SPLIT = """examples:
  isyb split bids/ --sizes discovery:89,validation:126 --seed 1 --stratify sex --in-place
  isyb split bids/ --sizes a:0.4,b:0.6 --stratify sex,age --output participants_split.tsv
"""


EXAMPLES_IMPORT = """examples:
  isyb demo demo_out --flat            # writes demo_out/dcm2niix/ and demo_out/map.tsv
  isyb import demo_out/dcm2niix demo_out/bids --map demo_out/map.tsv
"""

log = logging.getLogger(__name__)

EXAMPLES_APP = """examples:
  isyb bids/ release/ participant --nprocs 2
  isyb bids/ release/ group
  isyb bids/ release/ participant --executor dask --nprocs 4
  isyb bids/ release/ participant --executor dask --dask-cluster slurm --nprocs 50
"""



def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``commands``."""
    split = commands.add_parser(
        "split", help="add a seeded discovery/validation column to participants.tsv",
        description="Assign every subject of BIDS_DIR to a subset (seeded, optionally "
        "stratified) and write participants.tsv with the new column. participants.tsv is "
        "checked against the subjects on disk first; without one, a table of the subjects "
        "is made. The input is not changed unless --in-place is given.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_SPLIT)
    split.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    split.add_argument("--sizes", default="discovery:0.5,validation:0.5",
                       help="NAME:SIZE,... as counts (discovery:89,validation:126) or "
                       "fractions (default: %(default)s)")
    split.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (default: 0)")
    split.add_argument("--stratify", metavar="COLUMNS",
                       help="comma-separated participants.tsv columns to stratify by, e.g. "
                       "sex,age (numeric columns are cut into --age-bins quantile bins)")
    split.add_argument("--age-bins", type=positive_int, default=4,
                       help="quantile bins of a numeric stratification column (default: 4)")
    split.add_argument("--column", default="subset", help="name of the new column "
                       "(default: %(default)s)")
    target = split.add_mutually_exclusive_group()
    target.add_argument("--output", type=Path, help="write the table here (default: stdout)")
    target.add_argument("--in-place", action="store_true",
                        help="rewrite BIDS_DIR/participants.tsv (atomically) and describe the "
                        "column in participants.json")

    imp = commands.add_parser(
        "import", help="organize a flat folder of dcm2niix outputs into BIDS",
        description="Copy the NIfTI/JSON (and bval/bvec, <stem>_*.tsv) pairs of SRC_DIR into "
        "the BIDS dataset BIDS_DIR, named by a mapping table from SeriesDescription "
        "patterns to BIDS datatypes, suffixes and entities (see isyb.bids.importer). Series "
        "no rule matches are listed and left out.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_IMPORT)
    imp.add_argument("source", metavar="SRC_DIR", type=Path)
    imp.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    imp.add_argument("--map", type=Path, required=True, metavar="MAP_TSV",
                     help="columns: series (wildcard on SeriesDescription), datatype, suffix, "
                     "entities (optional, e.g. task-rest)")
    imp.add_argument("--subject-pattern", default=r"^(?P<subject>[^_]+)_",
                     help="regex with a (?P<subject>...) group on file names (default: the "
                     "text before the first _)")
    imp.add_argument("--session-pattern", help="regex with a (?P<session>...) group")
    imp.add_argument("--name", help="dataset Name for a new dataset_description.json")
    imp.add_argument("--merge", action="store_true",
                     help="add to an existing, non-empty BIDS_DIR that isyb import did not "
                     "make (refused otherwise)")

    app = commands.add_parser(
        APP, usage="isyb BIDS_DIR OUTPUT_DIR {participant,group} [options]",
        help="BIDS-App pipeline: isyb BIDS_DIR OUTPUT_DIR participant|group",
        description="Make OUTPUT_DIR a release of BIDS_DIR: participant level defaces, "
        "scrubs and QCs each subject and derives its metrics (ALFF, fALFF, ReHo, VMHC, FA, "
        "MD, CBF; as isyb derive) from the released files; group level writes the dataset "
        "files (README, CHANGES and dataset_description.json written by isyb with the "
        "source's Name, License and Authors), group QC, exclusions, group maps, scrub "
        "report, leak scan and release summary. Scrubbing keeps only what the policy "
        "allows; the leak scan searches the release for every identifying value of the "
        "input, and a hit makes the group level exit 1. Resumable: finished "
        "subject x steps are recorded in the work folder's manifest. Each subject is "
        "assembled in the work folder and moved into OUTPUT_DIR only when scrubbed; the "
        "group level exits 1 (release marked incomplete) while a subject is unfinished. "
        "Last, the release gate checks every image by digest, every anatomical image past "
        "the brain guard and every picture for faces (exit 1 when it fails).",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_APP)
    bids_app_arguments(app, "output_dir", "OUTPUT_DIR")
    app.add_argument("--template", default="default", help="head template name or path")
    app.add_argument("--deface-method", choices=("blur", "remove", "noise", "maskface"),
                        default="blur")
    app.add_argument("--skip", nargs="+", choices=("deface", "qc", "derive"), default=[],
                     help="steps to leave out (metadata scrubbing is never skipped)")
    app.add_argument("--work-dir", type=Path, help="manifest, scrub key, scrub reports and "
                     "the subjects being assembled (default: OUTPUT_DIR_work beside "
                     "OUTPUT_DIR; never inside it)")
    app.add_argument("--policy", type=Path, help="scrubbing policy JSON: the sidecar keys "
                     "and table columns to keep (default: isyb's allow-list)")
    app.add_argument("--release-policy", type=Path, metavar="POLICY.json",
                     help="what the release may contain (datatypes, suffixes, top-level "
                     "files, extra allowed paths); anything else is withheld and listed in "
                     "WORK_DIR/withheld.tsv (default: isyb's release_policy.json)")
    app.add_argument("--fd-threshold", type=positive_float, default=0.2,
                     help="FD threshold in mm (> 0) for fd_num/fd_perc and the FD exclusion "
                     "rule")
    app.add_argument("--strict", action="store_true",
                     help="group level: a face that isyb's detector finds on a render of a "
                     "released anatomical image fails the release gate (default: listed "
                     "for review)")
    executor_arguments(app, "participant level: subjects")

    split.set_defaults(handler=cmd_split)
    imp.set_defaults(handler=cmd_import)
    app.set_defaults(handler=cmd_app)


def cmd_split(args: argparse.Namespace) -> int:
    import pandas as pd

    from isyb.bids.layout import collect_participants
    from isyb.bids.participants import assign_split, strata_labels, validate_participants
    from isyb.io import write_text

    if args.column == "participant_id" or not re.fullmatch(r"[A-Za-z0-9_]+", args.column):
        raise IsybError(f"--column {args.column!r}: expected a new column name (letters, "
                        "digits, _), not participant_id")
    if args.output:
        check_not_input(args.output, [args.bids_dir], "--output")
        check_output_file(args.output, "--output")
    subjects = collect_participants(args.bids_dir)
    if not subjects:
        raise IsybError(f"{args.bids_dir}: no sub-* folders")
    table = validate_participants(args.bids_dir)
    if table is None:
        table = pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects]},
                             index=subjects)
    if args.column in table and not (args.in_place or args.output):
        note(f"column {args.column!r} exists and will be replaced in the output")
    strata = None
    if args.stratify:
        columns = [c.strip() for c in args.stratify.split(",") if c.strip()]
        strata = strata_labels(table, subjects, columns, age_bins=args.age_bins)
    subsets = assign_split(subjects, args.sizes, seed=args.seed, strata=strata)
    out = table.copy()
    out[args.column] = [subsets[s] for s in out.index]
    text = out.to_csv(sep="\t", index=False)
    if args.in_place:
        write_text(args.bids_dir / "participants.tsv", text)
        sidecar = args.bids_dir / "participants.json"
        columns = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
        columns[args.column] = {
            "Description": f"subset of a seeded split (isyb split, sizes {args.sizes}, seed "
                           f"{args.seed}" + (f", stratified by {args.stratify}"
                                              if args.stratify else "") + ")",
            "Levels": {name: f"subset {name}" for name in sorted(set(subsets.values()))}}
        write_text(sidecar, json.dumps(columns, indent=2) + "\n")
    elif args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    counts = out[args.column].value_counts().sort_index()
    note("subsets: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from isyb.bids.importer import import_flat

    check_writable(args.bids_dir)
    summary = import_flat(args.source, args.bids_dir, args.map,
                          subject_pattern=args.subject_pattern,
                          session_pattern=args.session_pattern, name=args.name,
                          merge=args.merge)
    for item in summary["left_out"]:
        note(f"left out: {item}")
    print(json.dumps({k: summary[k] for k in ("subjects", "images", "left_out")}))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from isyb.app.checks import check_executor, check_inputs
    from isyb.app.release import (
        ReleaseOptions,
        default_work_dir,
        release_group,
        release_participants,
    )
    from isyb.bids.classify import load_release_policy
    from isyb.deface.engine import DefaceOptions
    from isyb.templates.registry import resolve

    load_release_policy(args.release_policy)  # a bad policy fails before any work
    options = ReleaseOptions(deface=DefaceOptions(method=args.deface_method),
                             skip=frozenset(args.skip),
                             policy=str(args.policy) if args.policy else None,
                             release_policy=str(args.release_policy)
                             if args.release_policy else None,
                             fd_threshold=args.fd_threshold)
    executor = executor_options(args)
    check_out_folder(args.output_dir, "OUTPUT_DIR")
    work_dir = args.work_dir or default_work_dir(args.output_dir)
    check_writable(work_dir)
    if args.level == "participant":
        check_executor(executor)
    check_inputs(args.bids_dir, args.output_dir, work_dir, policy=options.policy,
                 release_policy=options.release_policy,
                 labels=args.participant_label if args.level == "participant" else None)
    if args.level == "group":
        if args.participant_label:
            raise IsybError("--participant-label is for the participant level")
        summary = release_group(args.bids_dir, args.output_dir, work_dir,
                                resolve(args.template, progress=note), options,
                                strict=args.strict)
        if "participant_level_missing" in summary:
            failure(f"release incomplete: the participant level of "
                    f"{', '.join(summary['participant_level_missing'])} is missing or was "
                    "interrupted; run it, then the group level again")
            return 1
        printed = {k: summary[k] for k in ("subjects", "participant_level_done",
                                           "scrub_changes", "deface_failures", "leak_scan",
                                           "withheld", "complete")}
        derive = summary.get("derive")
        if isinstance(derive, dict):
            printed["derive"] = {"runs": derive["runs"], "failed": derive["failed"],
                                 "group_maps": sorted(k for k, v in derive["metrics"].items()
                                                      if isinstance(v, dict))}
        print(json.dumps(printed))
        for item in summary["gate"]["review"]:
            log.warning("for review: %s: %s", item["file"], item["reason"])
        for item in summary["gate"]["violations"]:
            failure(f"release gate: {item['file']}: {item['reason']}")
        note(f"release summary: {args.output_dir / 'derivatives/isyb/release_summary.json'}")
        if summary["leak_scan"]["findings"]:
            failure(f"release incomplete: the leak scan found {summary['leak_scan']['findings']}"
                    " identifying value(s) in the release (listed, without the values, in "
                    "release_summary.json)")
            return 1
        return 0 if summary["complete"] else 1
    template = resolve(args.template, progress=note)
    records = release_participants(args.bids_dir, args.output_dir, work_dir, template, options,
                                   labels=args.participant_label, executor=executor,
                                   progress=not args.quiet)
    failed = [(r["subject"], f) for r in records for f in r["deface"].get("failed", [])]
    derive_failed = [(r["subject"], f) for r in records
                     for f in r.get("derive", {}).get("failed", [])]
    for subject, item in failed:
        failure(f"sub-{subject}: failed: {item['file']}: {item['error']}")
    for subject, item in derive_failed:
        failure(f"sub-{subject}: derive failed: {item['file']}: {item['error']}")
    print(json.dumps({"subjects": len(records), "failed_images": len(failed),
                      "failed_derive_runs": len(derive_failed),
                      "output_dir": str(args.output_dir), "work_dir": str(work_dir)}))
    return 1 if failed or derive_failed else 0
