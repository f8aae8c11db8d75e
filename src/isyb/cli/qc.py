"""``isyb qc anat|bold IMAGE`` and ``isyb qc BIDS_DIR OUT_DIR participant|group``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from isyb.cli.options import (
    QC_DATASET,
    check_not_input,
    check_out_folder,
    check_output_file,
    executor_arguments,
    executor_options,
    failure,
    note,
    positive_float,
)
from isyb.errors import IsybError

EXAMPLES_QC = """examples:
  isyb qc anat sub-01_T1w.nii.gz --json
  isyb qc bold sub-01_task-rest_bold.nii.gz --tsv frames.tsv
  isyb qc bids/ qc_out/ participant --nprocs 2
  isyb qc bids/ qc_out/ group --sd-threshold 3 --fd-threshold 0.2
"""


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``commands``."""
    qc = commands.add_parser(
        "qc", help="image quality metrics of one image, or of a whole BIDS dataset",
        description="isyb qc anat IMAGE | isyb qc bold IMAGE | "
        "isyb qc BIDS_DIR OUT_DIR participant|group (dataset mode)",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_QC)
    qsub = qc.add_subparsers(dest="kind", required=True, metavar="KIND")
    qc_anat = qsub.add_parser(
        "anat", help="SNR, SNRd, CNR, FBER, EFC, FWHM, CJV, WM2max of a T1w/T2w image",
        description="MRIQC-style anatomical metrics (definitions and every difference to "
        "MRIQC in isyb.qc.anat). Prints one JSON object.")
    qc_anat.add_argument("image", metavar="IMAGE", type=Path)
    qc_anat.add_argument("--contrast", choices=("T1w", "T2w"), default="T1w")
    qc_anat.add_argument("--json", action="store_true", help="indent the JSON output")
    qc_bold = qsub.add_parser(
        "bold", help="motion (FD), DVARS, GCOR, tSNR, SNR, FBER, EFC, FWHM of a BOLD run",
        description="Rigid motion per volume, then MRIQC-style functional metrics. Prints "
        "one JSON object and writes the motion parameters, FD and DVARS per frame to a TSV.")
    qc_bold.add_argument("image", metavar="IMAGE", type=Path)
    qc_bold.add_argument("--tr", type=positive_float,
                         help="repetition time in s (default: the JSON sidecar's "
                         "RepetitionTime, else the NIfTI header)")
    qc_bold.add_argument("--fd-threshold", type=positive_float, default=0.2,
                         help="FD threshold for fd_num and fd_perc (default: %(default)s mm)")
    qc_bold.add_argument("--tsv", type=Path, help="per-frame table (default: "
                         "<image stem>_qc-frames.tsv in the current folder)")
    qc_bold.add_argument("--json", action="store_true", help="indent the JSON output")
    qc_set = qsub.add_parser(
        QC_DATASET, usage="isyb qc BIDS_DIR OUT_DIR {participant,group} [options]",
        help="dataset mode: isyb qc BIDS_DIR OUT_DIR participant|group",
        description="Dataset mode. participant: metrics JSON, per-frame TSV (BOLD) and an "
        "HTML page for every T1w, T2w and BOLD run, under OUT_DIR/derivatives/isyb (resumes "
        "finished runs). group: group_T1w.tsv, group_bold.tsv, exclusions.tsv and "
        "group_qc.html. Exclusion rules: a metric beyond ±SD-THRESHOLD sample SDs of the "
        "group mean (computed once, over all runs of the modality, not iteratively), and a "
        "BOLD mean FD above FD-THRESHOLD mm.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_QC)
    qc_set.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    qc_set.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    qc_set.add_argument("level", choices=("participant", "group"))
    qc_set.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participant level: only these subjects (with or without sub-)")
    qc_set.add_argument("--sd-threshold", type=positive_float, default=3.0,
                        help="SD rule: exclude beyond ± this many SDs (default: %(default)s)")
    qc_set.add_argument("--no-sd-rule", action="store_true", help="turn the SD rule off")
    qc_set.add_argument("--sd-metrics", metavar="LIST",
                        help="comma-separated metrics the SD rule checks (default: the "
                        "descriptor's: isyb_snr,isyb_fber,isyb_cnr,efc,fwhm_avg for T1w/T2w and "
                        "snr,fber,efc,fwhm_avg,fd_mean,dvars_std,gcor for BOLD)")
    qc_set.add_argument("--fd-threshold", type=positive_float, default=0.2,
                        help="FD rule: exclude BOLD runs with mean FD above this (mm; also "
                        "the fd_num/fd_perc threshold; default: %(default)s)")
    qc_set.add_argument("--no-fd-rule", action="store_true", help="turn the FD rule off")
    executor_arguments(qc_set, "participant level: runs")

    qc.set_defaults(handler=cmd_qc)


def cmd_qc(args: argparse.Namespace) -> int:
    if args.kind == QC_DATASET:
        return cmd_qc_dataset(args)
    if args.kind == "anat":
        from isyb.qc.anat import qc_anat

        record = qc_anat(args.image, contrast=args.contrast).to_json()
        print(json.dumps(record, indent=2 if args.json else None))
        return 0
    from isyb.io import strip_image_suffix
    from isyb.qc.bold import qc_bold

    stem = strip_image_suffix(args.image)
    tsv = args.tsv or Path(f"{Path(stem).name}_qc-frames.tsv")
    check_not_input(tsv, [args.image, Path(f"{stem}.json")], "--tsv")
    check_output_file(tsv, "--tsv")
    qc = qc_bold(args.image, tr=args.tr, fd_threshold=args.fd_threshold)
    qc.save_frames(tsv)
    record = {**qc.to_json(), "frames_tsv": str(tsv)}
    print(json.dumps(record, indent=2 if args.json else None))
    return 0


def cmd_qc_dataset(args: argparse.Namespace) -> int:
    from isyb.qc.dataset import qc_group, qc_participants
    from isyb.qc.rules import ExclusionRules

    check_out_folder(args.out_dir, "OUT_DIR")
    if args.level == "participant":
        records = qc_participants(args.bids_dir, args.out_dir, labels=args.participant_label,
                                  fd_threshold=args.fd_threshold,
                                  executor=executor_options(args), progress=not args.quiet)
        failed = [r for r in records if r["status"] != "ok"]
        for record in failed:
            failure(f"failed: {record['source']}: {record['error']}")
        print(json.dumps({"runs": len(records), "failed": len(failed),
                          "out_dir": str(args.out_dir / "derivatives" / "isyb")}))
        return 1 if failed else 0
    if args.participant_label:
        raise IsybError("--participant-label is for the participant level")
    metrics = None
    if args.sd_metrics is not None:
        metrics = tuple(m.strip() for m in args.sd_metrics.split(",") if m.strip())
    rules = ExclusionRules(sd_threshold=None if args.no_sd_rule else args.sd_threshold,
                           fd_threshold=None if args.no_fd_rule else args.fd_threshold,
                           sd_metrics=metrics)
    summary = qc_group(args.out_dir, rules)
    print(json.dumps(summary))
    note(f"report: {summary['report']}")
    return 0
