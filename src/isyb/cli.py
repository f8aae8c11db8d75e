"""The ``isyb`` command line.

Every user error is one line on stderr, ``isyb: error: ...``, with exit
code 2; nothing is written in that case.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from isyb import __version__
from isyb.errors import IsybError

EXAMPLES_DEFACE = """examples:
  isyb deface sub-01_T1w.nii.gz sub-01_defaced.nii.gz
  isyb deface sub-01_T1w.nii.gz out.nii.gz --template MNI152NLin6Asym --method remove
  isyb deface sub-01_T1w.nii.gz out.nii.gz --template /data/my_head.nii.gz --ears \\
      --save-mask out_mask.nii.gz
  isyb deface bids/ bids_defaced/ --participant-label 01 02 --nprocs 2
"""


EXAMPLES_QC = """examples:
  isyb qc anat sub-01_T1w.nii.gz --json
  isyb qc bold sub-01_task-rest_bold.nii.gz --tsv frames.tsv
  isyb qc bids/ qc_out/ participant --nprocs 2
  isyb qc bids/ qc_out/ group --sd-threshold 3 --fd-threshold 0.2
"""

EXAMPLES_IMPORT = """examples:
  isyb demo demo_out --flat            # writes demo_out/dcm2niix/ and demo_out/map.tsv
  isyb import demo_out/dcm2niix demo_out/bids --map demo_out/map.tsv
"""

EXAMPLES_APP = """examples:
  isyb bids/ release/ participant --nprocs 2
  isyb bids/ release/ group
  isyb bids/ release/ participant --executor dask --nprocs 4
  isyb bids/ release/ participant --executor dask --dask-cluster slurm --nprocs 50
"""

#: Name of the sub-command that ``isyb BIDS_DIR OUTPUT_DIR LEVEL`` maps to.
APP = "app"
COMMANDS = ("deface", "templates", "evaluate", "study", "qc", "derive", "split", "import",
            "demo", APP)
#: Metrics of ``isyb derive`` (as isyb.derive.dataset.METRICS, without importing it here).
DERIVE_METRICS = ("alff", "falff", "reho", "vmhc", "fa", "md", "cbf")

#: Name of the hidden ``qc`` sub-command that ``isyb qc BIDS_DIR OUT_DIR LEVEL`` maps to.
QC_DATASET = "dataset"


def _route_argv(argv: list[str]) -> list[str]:
    """Route ``isyb BIDS_DIR ...`` to the BIDS-App command and ``qc BIDS_DIR ...`` (a path,
    not anat/bold/an option) to the dataset form of ``qc``."""
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        return [APP, *argv]
    if len(argv) >= 2 and argv[0] == "qc" and not argv[1].startswith("-") \
            and argv[1] not in ("anat", "bold", QC_DATASET):
        return ["qc", QC_DATASET, *argv[1:]]
    return argv


EXAMPLES_SPLIT = """examples:
  isyb split bids/ --sizes discovery:89,validation:126 --seed 1 --stratify sex --in-place
  isyb split bids/ --sizes a:0.4,b:0.6 --stratify sex,age --output participants_split.tsv
"""


def _bids_app_arguments(parser: argparse.ArgumentParser, out_name: str, out_metavar: str,
                        units: str) -> None:
    """BIDS-App positional arguments and the participant-level options they share."""
    parser.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    parser.add_argument(out_name, metavar=out_metavar, type=Path)
    parser.add_argument("level", choices=("participant", "group"))
    parser.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participant level: only these subjects (with or without sub-)")
    parser.add_argument("--nprocs", type=_positive_int, default=1,
                        help=f"participant level: {units} processed in parallel (default: 1)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be ≥ 1")
    return value


EXAMPLES_DERIVE = """examples:
  isyb demo demo_out --modalities anat,func,dwi,perf
  isyb derive demo_out/bids derive_out participant --nprocs 2
  isyb derive demo_out/bids derive_out group
  isyb derive bids/ out/ participant --metrics fa,md,cbf --participant-label 01
  isyb derive bids/ out/ participant --freesurfer-dir /data/freesurfer
"""


def _add_derive_parser(commands) -> None:
    derive = commands.add_parser(
        "derive", help="derived metrics (ALFF, fALFF, ReHo, VMHC, FA, MD, CBF) and group maps",
        description="Participant level: preprocess every resting BOLD run (drop 5 volumes, "
        "despike, slice timing, motion, scale to 10000, 24 motion + WM + CSF regression, "
        "linear and quadratic detrending), fit DTI (dipy) and compute CBF (BIDS-ASL "
        "white-paper formula); normalise the subject's T1w to the template (ANTs SyN) and "
        "write every map in native and template space, z-scored too. Group level: mean and "
        "SD maps per metric and their figures on fsaverage5. Outputs go to "
        "OUT_DIR/derivatives/isyb. ICA-AROMA is not part of isyb.",
        epilog=EXAMPLES_DERIVE, formatter_class=argparse.RawDescriptionHelpFormatter)
    derive.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    derive.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    derive.add_argument("level", choices=("participant", "group"))
    derive.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="participant level: only these subjects (with or without sub-)")
    derive.add_argument("--metrics", default=",".join(DERIVE_METRICS),
                        help="comma-separated subset of %(default)s")
    derive.add_argument("--nprocs", type=_positive_int, default=1,
                        help="subjects processed in parallel (default: %(default)s)")
    derive.add_argument("--normalization", choices=("SyN", "Affine"), default="SyN",
                        help="T1w -> template registration (default: %(default)s)")
    derive.add_argument("--template", metavar="PATH",
                        help="skull-stripped T1w template (brain > 0, RAS mm); it must be "
                        "left-right symmetric for VMHC (default: nilearn's ICBM 2009a "
                        "symmetric, 2 mm)")
    derive.add_argument("--space", default=None, metavar="LABEL",
                        help="space label of template-space outputs (default: "
                        "MNI152NLin2009aSym, or 'custom' with --template)")
    derive.add_argument("--reho-neighbours", type=int, choices=(7, 19, 27), default=27)
    derive.add_argument("--cbf-formula", choices=("whitepaper", "ge"), default="whitepaper",
                        help="CBF quantification: the consensus white-paper formula, or GE's "
                        "3D pCASL product formula (needs --ge-scaling)")
    derive.add_argument("--ge-scaling", nargs=2, type=float, metavar=("SF", "NEX"),
                        help="GE 3D pCASL: the PW scaling factor and the number of "
                        "excitations (not in BIDS sidecars)")
    derive.add_argument("--freesurfer-dir", metavar="SUBJECTS_DIR",
                        help="FreeSurfer subjects_dir: summarise thickness, area, volume and "
                        "pial_lgi per aparc region for the subjects found there")
    derive.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="cache of normalisations and tissue masks (default: "
                        "OUT_DIR/work/derive)")
    derive.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isyb", description="Get MRI datasets ready for public sharing: template-aware "
        "face masking with a brain guard, checked and documented.")
    parser.add_argument("--version", action="version", version=f"isyb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    deface = commands.add_parser(
        "deface", help="obscure the face of one image, or of every anatomical image of a "
        "BIDS dataset", epilog=EXAMPLES_DEFACE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deface IN into OUT. IN and OUT are NIfTI/MGZ files, or BIDS dataset "
        "folders (dataset mode: a complete copy of IN with every anat/ image defaced, and "
        "masks, provenance and an HTML summary in OUT/derivatives/isyb).")
    deface.add_argument("input", metavar="IN", type=Path)
    deface.add_argument("output", metavar="OUT", type=Path)
    deface.add_argument("--template", default="default",
                        help="built-in name (see `isyb templates list`) or a head image path "
                        "(default: %(default)s)")
    deface.add_argument("--method", choices=("blur", "remove", "noise"), default="blur",
                        help="how the face is obscured (default: %(default)s)")
    deface.add_argument("--ears", action="store_true", help="also obscure the ears")
    deface.add_argument("--neck", action="store_true",
                        help="also obscure the front of the neck below the chin")
    deface.add_argument("--face-region", choices=("rule", "template"), default="rule",
                        help="rule: the template's face half-spaces, generous enough for any "
                        "face (default); template: the registered template's own face plus "
                        "--face-margin, within those half-spaces, like mask_face and pydeface "
                        "(a face larger than the template's is partly left)")
    deface.add_argument("--face-margin", type=float, default=8.0, metavar="MM",
                        help="--face-region template: margin around the template's face, "
                        "template mm (default: %(default)s)")
    deface.add_argument("--guard-mm", type=float, default=10.0,
                        help="brain guard: brain mask dilated by this margin is never "
                        "changed (default: %(default)s mm)")
    deface.add_argument("--save-mask", type=Path, metavar="MASK.nii.gz",
                        help="write the mask of voxels the method was allowed to change "
                        "(single-file mode)")
    deface.add_argument("--force", action="store_true",
                        help="overwrite OUT if it exists, even when OUT is IN")
    deface.add_argument("--no-png", action="store_true", help="skip the QC picture")
    deface.add_argument("--participant-label", nargs="+", metavar="LABEL",
                        help="dataset mode: only these subjects (with or without sub-)")
    deface.add_argument("--nprocs", type=_positive_int, default=1,
                        help="dataset mode: subjects processed in parallel (default: 1)")
    deface.add_argument("--quiet", action="store_true", help="no progress bar")

    templates = commands.add_parser("templates", help="list, show and prepare head templates")
    tsub = templates.add_subparsers(dest="action", required=True, metavar="ACTION")
    tsub.add_parser("list", help="built-in templates and whether they are prepared")
    show = tsub.add_parser("show", help="the prepared template's files and face rule")
    show.add_argument("name", metavar="NAME|PATH")
    prepare = tsub.add_parser("prepare", help="derive brain mask and face rule, and cache")
    prepare.add_argument("name", metavar="NAME|PATH")

    evaluate = commands.add_parser(
        "evaluate", help="measure one defacing: NMI of the removed face, brain changes, "
        "face detection",
        description="Compare ORIG with DEFACED (same grid) inside FACE_MASK (the mask from "
        "`isyb deface --save-mask`). Prints one JSON object and writes a PNG of the *defaced* "
        "head rendered at yaw -15, 0 and +15 degrees.")
    evaluate.add_argument("original", metavar="ORIG", type=Path)
    evaluate.add_argument("defaced", metavar="DEFACED", type=Path)
    evaluate.add_argument("--mask", required=True, type=Path, metavar="FACE_MASK",
                          help="voxels the defacing was allowed to change")
    evaluate.add_argument("--brain-mask", type=Path, metavar="BRAIN",
                          help="reference brain mask (default: deepbet on ORIG)")
    evaluate.add_argument("--nmi", choices=("arithmetic", "studholme"), default="arithmetic",
                          help="NMI normalisation (default: %(default)s, 0..1; studholme is "
                          "(H(A)+H(R))/H(A,R), 1..2)")
    evaluate.add_argument("--renders", type=Path, metavar="PNG",
                          help="where to write the renders (default: DEFACED stem + "
                          "_renders.png)")
    evaluate.add_argument("--json", action="store_true",
                          help="print the JSON object indented (it is always JSON)")

    study = commands.add_parser(
        "study", help="template-effect study: deface a cohort with several templates, "
        "NMI, ANOVA, post-hoc tests, Table 1 and Fig. 6",
        description="For every subject (first T1w) × template: deface, keep the face mask, "
        "compute NMI and the other metrics over the subject's own evaluation region (the "
        "face rule placed on the subject's brain, minus its brain guard; the same voxels "
        "for every template), cached in OUT_DIR/work. Then a mixed ANOVA "
        "(template within × subset between), repeated-measures ANOVAs per subset and pooled "
        "(Mauchly, Greenhouse-Geisser), post-hoc paired tests, marginal means, Table 1, "
        "violins and report.html.",
        epilog="example:\n  isyb study bids/ study_out/ --templates default,"
        "MNI152NLin6Asym,MNI152NLin2009cAsym --split discovery:89,validation:126 --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    study.add_argument("bids_dir", metavar="BIDS_DIR", type=Path)
    study.add_argument("out_dir", metavar="OUT_DIR", type=Path)
    study.add_argument("--templates", required=True,
                       help="comma-separated template names or paths (at least two)")
    study.add_argument("--method", choices=("blur", "remove", "noise"), default="blur")
    study.add_argument("--face-region", choices=("rule", "template"), default="rule",
                       help="face region of the defacing, as for `isyb deface` (default: "
                       "%(default)s)")
    study.add_argument("--face-margin", type=float, default=8.0, metavar="MM",
                       help="--face-region template: margin around the template's face, "
                       "template mm (default: %(default)s)")
    split = study.add_mutually_exclusive_group()
    split.add_argument("--split", help="subset sizes, counts or fractions, e.g. "
                       "discovery:89,validation:126 (default: two halves)")
    split.add_argument("--split-column", help="participants.tsv column giving the subset")
    study.add_argument("--seed", type=int, default=0, help="seed of the random split")
    study.add_argument("--padjust", choices=("bonf", "holm"), default="bonf",
                       help="multiple-comparison correction of the post-hoc tests")
    study.add_argument("--wilcoxon", action="store_true",
                       help="Wilcoxon signed-rank post-hoc tests instead of paired t-tests")
    study.add_argument("--dv", choices=("nmi", "face_surface_changed_fraction"),
                       default="nmi", help="dependent variable (default: %(default)s)")
    study.add_argument("--study-iterations", type=_positive_int, default=3,
                       help="template `study`: ANTs template-construction iterations "
                       "(default: %(default)s)")
    study.add_argument("--study-subjects", type=_positive_int,
                       help="template `study`: build it from this many subjects, drawn with "
                       "--seed (default: all)")
    study.add_argument("--nprocs", type=_positive_int, default=1)
    study.add_argument("--note", default="", help="a caption printed on the figure and tables")
    study.add_argument("--quiet", action="store_true", help="no progress bar")

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
    qc_bold.add_argument("--tr", type=float, help="repetition time in s (default: the JSON "
                         "sidecar's RepetitionTime, else the NIfTI header)")
    qc_bold.add_argument("--fd-threshold", type=float, default=0.2,
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
    _bids_app_arguments(qc_set, "out_dir", "OUT_DIR", "runs")
    qc_set.add_argument("--sd-threshold", type=float, default=3.0,
                        help="SD rule: exclude beyond ± this many SDs (default: %(default)s)")
    qc_set.add_argument("--no-sd-rule", action="store_true", help="turn the SD rule off")
    qc_set.add_argument("--sd-metrics", metavar="LIST",
                        help="comma-separated metrics the SD rule checks (default: the "
                        "descriptor's: snr,fber,cnr,efc,fwhm_avg for T1w/T2w and "
                        "snr,fber,efc,fwhm_avg,fd_mean,dvars_std,gcor for BOLD)")
    qc_set.add_argument("--fd-threshold", type=float, default=0.2,
                        help="FD rule: exclude BOLD runs with mean FD above this (mm; also "
                        "the fd_num/fd_perc threshold; default: %(default)s)")
    qc_set.add_argument("--no-fd-rule", action="store_true", help="turn the FD rule off")
    qc_set.add_argument("--quiet", action="store_true", help="no progress bar")

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
    split.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    split.add_argument("--stratify", metavar="COLUMNS",
                       help="comma-separated participants.tsv columns to stratify by, e.g. "
                       "sex,age (numeric columns are cut into --age-bins quantile bins)")
    split.add_argument("--age-bins", type=_positive_int, default=4,
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

    app = commands.add_parser(
        APP, usage="isyb BIDS_DIR OUTPUT_DIR {participant,group} [options]",
        help="BIDS-App pipeline: isyb BIDS_DIR OUTPUT_DIR participant|group",
        description="Make OUTPUT_DIR a release of BIDS_DIR: participant level defaces, "
        "scrubs and QCs each subject and derives its metrics (ALFF, fALFF, ReHo, VMHC, FA, "
        "MD, CBF; as isyb derive) from the released files; group level writes the dataset "
        "files, group QC, exclusions, group maps, scrub report, leak scan and release "
        "summary. Resumable: finished "
        "subject x steps are recorded in the work folder's manifest.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXAMPLES_APP)
    _bids_app_arguments(app, "output_dir", "OUTPUT_DIR", "subjects")
    app.add_argument("--template", default="default", help="head template name or path")
    app.add_argument("--deface-method", choices=("blur", "remove", "noise"), default="blur")
    app.add_argument("--skip", nargs="+", choices=("deface", "qc", "derive"), default=[],
                     help="steps to leave out (metadata scrubbing is never skipped)")
    app.add_argument("--executor", choices=("local", "dask"), default="local")
    app.add_argument("--dask-scheduler", metavar="ADDRESS",
                     help="a running dask scheduler, e.g. tcp://10.0.0.5:8786")
    app.add_argument("--dask-cluster", choices=("slurm",),
                     help="start workers as SLURM jobs (dask-jobqueue; settings from dask's "
                     "jobqueue.slurm configuration)")
    app.add_argument("--work-dir", type=Path, help="manifest, scrub key and scrub reports "
                     "(default: OUTPUT_DIR_work beside OUTPUT_DIR; never inside it)")
    app.add_argument("--policy", type=Path, help="scrubbing policy JSON (default: isyb's)")
    app.add_argument("--fd-threshold", type=float, default=0.2,
                     help="FD threshold in mm for fd_num/fd_perc and the FD exclusion rule")
    app.add_argument("--quiet", action="store_true", help="no progress bar")

    _add_derive_parser(commands)

    demo = commands.add_parser(
        "demo", help="build a phantom BIDS dataset and deface it (no download, no data)",
        description="Write OUT_DIR/bids (synthetic phantom heads of varied shape, "
        "orientation and voxel size) and OUT_DIR/bids_defaced with an HTML summary. "
        "With --flat: only write OUT_DIR/dcm2niix (a flat folder of scanner-style phantom "
        "exports, T1w and BOLD, with fake identifying DICOM fields) and OUT_DIR/map.tsv, "
        "the start of the release walk-through (isyb import, then the BIDS-App levels).")
    demo.add_argument("output", metavar="OUT_DIR", type=Path)
    demo.add_argument("--flat", action="store_true",
                      help="write the flat dcm2niix-style folder and map.tsv instead")
    demo.add_argument("--modalities", default="anat", metavar="LIST",
                      help="comma-separated: anat (always), func (resting BOLD), dwi, perf "
                      "(pCASL); phantom runs with known truth for isyb derive "
                      "(default: %(default)s)")
    demo.add_argument("--subjects", type=_positive_int, default=3,
                      help="number of phantom subjects (default: %(default)s)")
    demo.add_argument("--nprocs", type=_positive_int, default=1)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _note(message: str) -> None:
    print(f"isyb: {message}", file=sys.stderr)


def cmd_deface(args: argparse.Namespace) -> int:
    from isyb.deface.dataset import deface_dataset
    from isyb.deface.engine import DefaceOptions
    from isyb.deface.run import deface_file
    from isyb.templates.registry import resolve

    options = DefaceOptions(method=args.method, ears=args.ears, neck=args.neck,
                            guard_mm=args.guard_mm, face_region=args.face_region,
                            face_margin_mm=args.face_margin)
    if args.input.is_dir():
        if args.save_mask:
            raise IsybError("--save-mask is for single files; dataset mode writes every mask "
                            "to OUT/derivatives/isyb")
        template = resolve(args.template, progress=_note)
        records = deface_dataset(args.input, args.output, template, options,
                                 labels=args.participant_label, nprocs=args.nprocs,
                                 progress=not args.quiet)
        failed = [i for r in records for i in r["images"] if i["status"] != "ok"]
        _note(f"defaced {sum(len(r['images']) for r in records) - len(failed)} image(s) of "
              f"{len(records)} subject(s); summary: "
              f"{args.output / 'derivatives' / 'isyb' / 'index.html'}")
        for image in failed:
            _note(f"failed: {image['file']}: {image['error']}")
        return 1 if failed else 0
    if args.participant_label:
        raise IsybError("--participant-label needs a BIDS dataset folder as IN")
    from isyb.deface.run import check_paths
    from isyb.io import load_image

    check_paths(args.input, args.output, force=args.force, save_mask=args.save_mask)
    load_image(args.input)  # a bad input fails now, not after a first template preparation
    template = resolve(args.template, progress=_note)
    record = deface_file(args.input, args.output, template, options, save_mask=args.save_mask,
                         force=args.force, qc_png=not args.no_png)
    summary = {key: record[key] for key in ("output", "method", "changed_voxels",
                                            "face_surface_changed_fraction",
                                            "little_or_no_face")}
    summary["registration_score"] = record["registration"]["score_brain_dice"]
    summary["brain_guard_passed"] = record["brain_guard"]["passed"]
    print(json.dumps(summary))
    if record.get("note"):
        _note(record["note"])
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from isyb.templates.registry import BUILTINS, cached, resolve

    if args.action == "list":
        print(f"{'name':<22}{'kind':<14}{'prepared':<10}description")
        for entry in BUILTINS.values():
            prepared = "yes" if cached(entry.name) else "no"
            print(f"{entry.name:<22}{entry.kind:<14}{prepared:<10}{entry.description}")
        return 0
    template = resolve(args.name, progress=_note)
    if args.action == "prepare":
        print(f"{template.name}: prepared in {template.head.parent}")
        return 0
    info = dict(template.info)
    info.update(head=str(template.head), brain_mask_file=str(template.brain_mask),
                face_mask_file=str(template.face_mask))
    print(json.dumps(info, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from isyb.evaluate.anonymization import check_same_grid, evaluate_defacing, save_renders
    from isyb.io import load_volume, strip_image_suffix

    original, defaced = load_volume(args.original), load_volume(args.defaced)
    check_same_grid(original, defaced, ("ORIG", "DEFACED"))
    mask_volume = load_volume(args.mask)
    check_same_grid(original, mask_volume, ("ORIG", "FACE_MASK"))
    brain = None
    if args.brain_mask:
        brain_volume = load_volume(args.brain_mask)
        check_same_grid(original, brain_volume, ("ORIG", "BRAIN"))
        brain = brain_volume.data > 0
    record = evaluate_defacing(original, defaced, mask_volume.data > 0, brain=brain,
                               nmi_method=args.nmi)
    renders = args.renders or Path(f"{strip_image_suffix(args.defaced)}_renders.png")
    save_renders(defaced, renders)
    record["renders_png"] = str(renders)
    print(json.dumps(record, indent=2 if args.json else None))
    return 0


def _study_template(args: argparse.Namespace):
    """Build (once; cached in OUT_DIR) and prepare a head template from the cohort itself."""
    from isyb.study.cohort import find_t1w
    from isyb.study.template import build_study_template
    from isyb.templates.fetch import sha256_file
    from isyb.templates.registry import prepare

    path = args.out_dir / "work" / (f"study_template_it{args.study_iterations}_n"
                                    f"{args.study_subjects or 'all'}_seed{args.seed}.nii.gz")
    if not path.is_file():
        _note(f"building the study template from the cohort ({path})")
        build_study_template(sorted(find_t1w(args.bids_dir).values()), path,
                             n_subjects=args.study_subjects,
                             iterations=args.study_iterations, seed=args.seed, progress=_note)
    return prepare(f"study{sha256_file(path)[:12]}", path, None,
                   source=f"study template built from {args.bids_dir}", progress=_note)


def cmd_study(args: argparse.Namespace) -> int:
    from isyb.study.study import StudyOptions, run_study
    from isyb.templates.registry import resolve

    options = StudyOptions(method=args.method, face_region=args.face_region,
                           face_margin_mm=args.face_margin, dv=args.dv, split=args.split,
                           split_column=args.split_column, seed=args.seed,
                           padjust=args.padjust, parametric=not args.wilcoxon,
                           nprocs=args.nprocs, note=args.note)
    names = [name.strip() for name in args.templates.split(",") if name.strip()]
    templates = [_study_template(args) if name == "study" else resolve(name, progress=_note)
                 for name in names]
    result = run_study(args.bids_dir, args.out_dir, templates, options,
                       progress=not args.quiet, log=_note)
    print(json.dumps(result["summary"]))
    _note(f"report: {args.out_dir / 'report.html'}")
    return 0


def cmd_qc_dataset(args: argparse.Namespace) -> int:
    from isyb.qc.dataset import qc_group, qc_participants
    from isyb.qc.rules import ExclusionRules

    if args.level == "participant":
        records = qc_participants(args.bids_dir, args.out_dir, labels=args.participant_label,
                                  fd_threshold=args.fd_threshold, nprocs=args.nprocs,
                                  progress=not args.quiet)
        failed = [r for r in records if r["status"] != "ok"]
        for record in failed:
            _note(f"failed: {record['source']}: {record['error']}")
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
    _note(f"report: {summary['report']}")
    return 0


def cmd_qc(args: argparse.Namespace) -> int:
    from isyb.io import load_image, load_volume, strip_image_suffix

    if args.kind == QC_DATASET:
        return cmd_qc_dataset(args)
    if args.kind == "anat":
        from isyb.qc.anat import anat_masks, anat_metrics

        volume = load_volume(args.image)
        masks = anat_masks(volume.data, volume.zooms, contrast=args.contrast)
        record = anat_metrics(volume.data, volume.zooms, contrast=args.contrast, masks=masks)
        record["noise_source"] = masks.noise_source
        if masks.note:
            record["note"] = masks.note
        print(json.dumps(record, indent=2 if args.json else None))
        return 0
    import numpy as np
    import pandas as pd

    from isyb.io import atomic_path
    from isyb.qc.bold import bold_metrics, repetition_time

    image = load_image(args.image, allow_4d=True)
    if len(image.shape) != 4 or image.shape[3] < 2:
        raise IsybError(f"{args.image}: expected a 4-D BOLD series, got shape {image.shape}")
    sidecar = Path(f"{strip_image_suffix(args.image)}.json")
    metadata = json.loads(sidecar.read_text()) if sidecar.is_file() else None
    tr = args.tr if args.tr is not None else repetition_time(image.header, metadata)
    series = np.asarray(image.dataobj, dtype=np.float32)
    metrics, table = bold_metrics(series, image.header.get_zooms()[:3], tr,
                                  fd_threshold=args.fd_threshold)
    tsv = args.tsv or Path(f"{Path(strip_image_suffix(args.image)).name}_qc-frames.tsv")
    with atomic_path(tsv) as tmp:
        pd.DataFrame(table).to_csv(tmp, sep="\t", index=False, na_rep="n/a")
    record = {key: (float(value) if isinstance(value, float | np.floating) else value)
              for key, value in metrics.items()}
    record["tr_s"] = tr
    record["frames_tsv"] = str(tsv)
    print(json.dumps(record, indent=2 if args.json else None, default=int))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    import pandas as pd

    from isyb.bids.participants import (
        assign_split,
        strata_labels,
        subjects_on_disk,
        validate_participants,
    )
    from isyb.io import write_text

    subjects = subjects_on_disk(args.bids_dir)
    if not subjects:
        raise IsybError(f"{args.bids_dir}: no sub-* folders")
    table = validate_participants(args.bids_dir)
    if table is None:
        table = pd.DataFrame({"participant_id": [f"sub-{s}" for s in subjects]},
                             index=subjects)
    if args.column in table and not (args.in_place or args.output):
        _note(f"column {args.column!r} exists and will be replaced in the output")
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
    _note("subsets: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from isyb.deface.engine import DefaceOptions
    from isyb.release import (
        ReleaseOptions,
        default_work_dir,
        participant_tasks,
        release_group,
        release_subject,
    )
    from isyb.run import ExecutorOptions, run_tasks
    from isyb.templates.registry import resolve

    options = ReleaseOptions(deface=DefaceOptions(method=args.deface_method),
                             skip=frozenset(args.skip),
                             policy=str(args.policy) if args.policy else None,
                             fd_threshold=args.fd_threshold)
    executor = ExecutorOptions(args.executor, args.nprocs, args.dask_scheduler,
                               args.dask_cluster)
    work_dir = args.work_dir or default_work_dir(args.output_dir)
    if args.level == "group":
        if args.participant_label:
            raise IsybError("--participant-label is for the participant level")
        summary = release_group(args.bids_dir, args.output_dir, work_dir,
                                resolve(args.template, progress=_note), options)
        printed = {k: summary[k] for k in ("subjects", "participant_level_done",
                                           "scrub_changes", "deface_failures", "leak_scan")}
        derive = summary.get("derive")
        if isinstance(derive, dict):
            printed["derive"] = {"runs": derive["runs"], "failed": derive["failed"],
                                 "group_maps": sorted(k for k, v in derive["metrics"].items()
                                                      if isinstance(v, dict))}
        print(json.dumps(printed))
        _note(f"release summary: {args.output_dir / 'derivatives/isyb/release_summary.json'}")
        return 0
    template = resolve(args.template, progress=_note)
    tasks = participant_tasks(args.bids_dir, args.output_dir, work_dir, template, options,
                              args.participant_label)
    failed = []
    derive_failed = []
    for record in run_tasks(release_subject, tasks, executor, progress=not args.quiet):
        for failure in record["deface"].get("failed", []):
            failed.append(failure)
            _note(f"sub-{record['subject']}: failed: {failure['file']}: {failure['error']}")
        for failure in record.get("derive", {}).get("failed", []):
            derive_failed.append(failure)
            _note(f"sub-{record['subject']}: derive failed: {failure['file']}: "
                  f"{failure['error']}")
    print(json.dumps({"subjects": len(tasks), "failed_images": len(failed),
                      "failed_derive_runs": len(derive_failed),
                      "output_dir": str(args.output_dir), "work_dir": str(work_dir)}))
    return 1 if failed or derive_failed else 0


def cmd_import(args: argparse.Namespace) -> int:
    from isyb.bids.importer import import_flat

    summary = import_flat(args.source, args.bids_dir, args.map,
                          subject_pattern=args.subject_pattern,
                          session_pattern=args.session_pattern, name=args.name)
    for item in summary["left_out"]:
        _note(f"left out: {item}")
    print(json.dumps({k: summary[k] for k in ("subjects", "images", "left_out")}))
    return 0


def cmd_derive(args: argparse.Namespace) -> int:
    from isyb.derive.dataset import (
        DEFAULT_SPACE,
        DeriveOptions,
        derive_group,
        derive_participants,
        parse_metrics,
    )

    metrics = parse_metrics(args.metrics)
    if args.cbf_formula == "ge" and not args.ge_scaling:
        raise IsybError("--cbf-formula ge needs --ge-scaling SF NEX (GE's PW scaling factor "
                        "and number of excitations, which BIDS does not store)")
    space = args.space or (DEFAULT_SPACE if args.template is None else "custom")
    if args.level == "group":
        if args.participant_label:
            raise IsybError("--participant-label is for the participant level")
        summary = derive_group(args.out_dir, space=space, metrics=metrics)
        print(json.dumps(summary))
        return 0
    template = str(Path(args.template).resolve()) if args.template else None
    freesurfer = str(Path(args.freesurfer_dir).resolve()) if args.freesurfer_dir else None
    options = DeriveOptions(metrics=metrics, normalization=args.normalization,
                            reho_neighbours=args.reho_neighbours, template=template,
                            space=space, freesurfer_dir=freesurfer,
                            cbf_formula=args.cbf_formula,
                            ge_scaling=tuple(args.ge_scaling) if args.ge_scaling else None)
    records = derive_participants(args.bids_dir, args.out_dir, work_dir=args.work_dir,
                                  labels=args.participant_label, options=options,
                                  nprocs=args.nprocs, progress=not args.quiet)
    failed = [r for r in records if r["status"] != "ok"]
    for record in failed:
        named = record["error"].startswith(record["source"])
        _note(f"failed: {record['error'] if named else record['source'] + ': ' + record['error']}")
    print(json.dumps({"runs": len(records), "failed": len(failed),
                      "out_dir": str(args.out_dir / "derivatives" / "isyb")}))
    return 2 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from isyb.deface.dataset import deface_dataset
    from isyb.deface.engine import DefaceOptions
    from isyb.demo import MODALITIES, build_demo_dataset
    from isyb.templates.registry import resolve

    if args.flat:
        from isyb.demo import build_demo_flat

        folder, mapping = build_demo_flat(args.output, n_subjects=args.subjects)
        print(json.dumps({"flat_folder": str(folder), "map": str(mapping)}))
        return 0
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise IsybError(f"unknown --modalities {', '.join(unknown)}; choose from "
                        f"{', '.join(MODALITIES)}")
    bids = build_demo_dataset(args.output / "bids", n_subjects=args.subjects,
                              modalities=("anat", *modalities))
    _note(f"phantom BIDS dataset written to {bids}")
    template = resolve("default", progress=_note)
    out = args.output / "bids_defaced"
    records = deface_dataset(bids, out, template, DefaceOptions(), nprocs=args.nprocs,
                             progress=not args.quiet)
    images = [i for r in records for i in r["images"]]
    failed = [i for i in images if i["status"] != "ok"]
    for image in images:
        if image["status"] == "ok":
            p = image["provenance"]
            _note(f"{image['file']}: registration Dice {p['registration']['score_brain_dice']}, "
                  f"{p['changed_voxels']} voxels changed, "
                  f"{p['brain_guard']['changed_voxels_in_guard']} in the brain guard")
        else:
            _note(f"{image['file']}: failed: {image['error']}")
    print(out / "derivatives" / "isyb" / "index.html")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_route_argv(sys.argv[1:] if argv is None else list(argv)))
    if not os.environ.get("ISYB_DEBUG"):
        warnings.filterwarnings("ignore")
    handlers = {"deface": cmd_deface, "templates": cmd_templates, "evaluate": cmd_evaluate,
                "study": cmd_study, "qc": cmd_qc, "derive": cmd_derive, "split": cmd_split,
                "import": cmd_import, "demo": cmd_demo, APP: cmd_app}
    try:
        return handlers[args.command](args)
    except IsybError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the library said
        print(f"isyb: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("isyb: interrupted; finished files are complete, rerun to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
