"""``isyb derive BIDS_DIR OUT_DIR participant|group``: derived metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from isyb.cli.options import (
    DERIVE_METRICS,
    check_out_folder,
    executor_arguments,
    executor_options,
    failure,
    positive_float,
)
from isyb.errors import IsybError

EXAMPLES_DERIVE = """examples:
  isyb demo demo_out --modalities anat,func,dwi,perf
  isyb derive demo_out/bids derive_out participant --nprocs 2
  isyb derive demo_out/bids derive_out group
  isyb derive bids/ out/ participant --metrics fa,md,cbf --participant-label 01
  isyb derive demo_out/bids derive_iwls participant --metrics fa,md --dti-fit iwls
  isyb derive demo_out/bids derive_dparsf participant --convention dparsf --metrics alff,falff,reho
  isyb derive bids/ out/ participant --freesurfer-dir /data/freesurfer
  isyb derive bids/ out/ participant --executor dask --dask-cluster slurm --nprocs 20
"""

def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``commands``."""
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
    derive.add_argument("--normalization", choices=("SyN", "Affine"), default="SyN",
                        help="T1w -> template registration (default: %(default)s)")
    derive.add_argument("--template", metavar="PATH",
                        help="skull-stripped T1w template (brain > 0, RAS mm); it must be "
                        "left-right symmetric for VMHC (default: nilearn's ICBM 2009a "
                        "symmetric, 2 mm)")
    derive.add_argument("--space", default=None, metavar="LABEL",
                        help="space label of template-space outputs (default: "
                        "MNI152NLin2009aSym, or 'custom' with --template)")
    derive.add_argument("--convention", choices=("ccs", "dparsf", "isyb"), default="ccs",
                        help="whose conventions ALFF/fALFF, ReHo and VMHC follow: CCS (the "
                        "ISYB descriptor's pipeline), DPARSF/DPABI, or isyb's own; sets the "
                        "detrending order, the spectrum (padding, band edges) and whether "
                        "ReHo and VMHC use the 0.01-0.1 Hz band-passed series (ccs, dparsf) "
                        "(default: %(default)s)")
    derive.add_argument("--dti-fit", choices=("ols", "wls", "iwls"), default="ols",
                        help="tensor fit for FA and MD: ordinary least squares (as FSL's "
                        "dtifit and MRtrix's dwi2tensor -ols), dipy's one-step WLS, or "
                        "MRtrix3's default iteratively reweighted fit (dwi2tensor) "
                        "(default: %(default)s)")
    derive.add_argument("--reho-neighbours", type=int, choices=(7, 19, 27), default=27)
    derive.add_argument("--cbf-formula", choices=("whitepaper", "ge"), default="whitepaper",
                        help="CBF quantification: the consensus white-paper formula, or GE's "
                        "3D pCASL product formula (needs --ge-scaling)")
    derive.add_argument("--ge-scaling", nargs=2, type=positive_float, metavar=("SF", "NEX"),
                        help="GE 3D pCASL: the PW scaling factor and the number of "
                        "excitations (not in BIDS sidecars)")
    derive.add_argument("--freesurfer-dir", metavar="SUBJECTS_DIR",
                        help="FreeSurfer subjects_dir: summarise thickness, area, volume and "
                        "pial_lgi per aparc region for the subjects found there")
    derive.add_argument("--anatomy", action="store_true",
                        help="also measure cortical thickness (DiReCT) and grey-matter volume "
                        "from the T1w of subjects without FreeSurfer outputs (DiReCT on a 1 mm "
                        "cerebral cortex takes about 80 CPU s, 1 minute on 2 cores)")
    derive.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="cache of normalisations and tissue masks (default: "
                        "OUT_DIR/work/derive)")
    executor_arguments(derive, "subjects")
    derive.set_defaults(handler=cmd_derive)


def cmd_derive(args: argparse.Namespace) -> int:
    from isyb.derive.dataset import (
        DEFAULT_SPACE,
        DeriveOptions,
        derive_group,
        derive_participants,
        parse_metrics,
    )

    check_out_folder(args.out_dir, "OUT_DIR")
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
    executor = executor_options(args)
    template = str(Path(args.template).resolve()) if args.template else None
    freesurfer = str(Path(args.freesurfer_dir).resolve()) if args.freesurfer_dir else None
    options = DeriveOptions(metrics=metrics, normalization=args.normalization,
                            reho_neighbours=args.reho_neighbours, template=template,
                            space=space, freesurfer_dir=freesurfer,
                            cbf_formula=args.cbf_formula, convention=args.convention,
                            anatomy=args.anatomy, dti_fit=args.dti_fit.upper(),
                            ge_scaling=tuple(args.ge_scaling) if args.ge_scaling else None)
    records = derive_participants(args.bids_dir, args.out_dir, work_dir=args.work_dir,
                                  labels=args.participant_label, options=options,
                                  executor=executor, progress=not args.quiet)
    failed = [r for r in records if r["status"] != "ok"]
    for record in failed:
        named = record["error"].startswith(record["source"])
        failure(f"failed: {'' if named else record['source'] + ': '}{record['error']}")
    print(json.dumps({"runs": len(records), "failed": len(failed),
                      "out_dir": str(args.out_dir / "derivatives" / "isyb")}))
    return 1 if failed else 0
