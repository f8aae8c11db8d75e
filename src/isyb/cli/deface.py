"""``isyb deface``, ``isyb templates``, ``isyb evaluate`` and ``isyb demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from isyb.cli.options import (
    check_in_out,
    check_not_input,
    check_output_file,
    check_writable,
    executor_arguments,
    executor_options,
    failure,
    nonnegative_float,
    note,
    positive_int,
)
from isyb.errors import IsybError

EXAMPLES_DEFACE = """examples:
  isyb deface sub-01_T1w.nii.gz sub-01_defaced.nii.gz
  isyb deface sub-01_T1w.nii.gz out.nii.gz --template MNI152NLin6Asym --method remove
  isyb deface sub-01_T1w.nii.gz out.nii.gz --template CN200 --method maskface
  isyb deface sub-01_T1w.nii.gz out.nii.gz --template /data/my_head.nii.gz --ears \\
      --save-mask out_mask.nii.gz
  isyb deface bids/ bids_defaced/ --participant-label 01 02 --nprocs 2
  isyb deface bids/ bids_defaced/ --executor dask --dask-cluster slurm --nprocs 20
"""



def add_parsers(commands: argparse._SubParsersAction) -> None:
    """Add this module's sub-commands to ``commands``."""
    deface = commands.add_parser(
        "deface", help="obscure the face of one image, or of every anatomical image of a "
        "BIDS dataset", epilog=EXAMPLES_DEFACE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Deface IN into OUT. IN and OUT are NIfTI/MGZ files, or BIDS dataset "
        "folders (dataset mode: a copy of what the release policy recognises in IN, every "
        "anat/ head image defaced, everything else withheld; masks, provenance, "
        "withheld.tsv and an HTML summary in OUT/derivatives/isyb).")
    deface.add_argument("input", metavar="IN", type=Path)
    deface.add_argument("output", metavar="OUT", type=Path)
    deface.add_argument("--template", default="default",
                        help="built-in name (see `isyb templates list`) or a head image path "
                        "(default: %(default)s)")
    deface.add_argument("--method", choices=("blur", "remove", "noise", "maskface"),
                        default="blur",
                        help="how the face is obscured (default: %(default)s); maskface is "
                        "NRG mask_face's normalized anterior filtering of the subject's own skin "
                        "layer, its face box placed by mask_face's landmarks for MNI152, CN200 "
                        "and Chinese2020, else by --face-region; it keeps the face's coarse "
                        "shape and protects much less than blur (benchmarks/README.md)")
    deface.add_argument("--ears", action="store_true", help="also obscure the ears")
    deface.add_argument("--neck", action="store_true",
                        help="also obscure the front of the neck below the chin")
    deface.add_argument("--keep-chin", action="store_true",
                        help="stop the face region at the mouth: the lower lip and the chin "
                        "keep their shape (by default they are obscured down to the lower "
                        "edge of the mandible)")
    deface.add_argument("--face-region", choices=("rule", "template"), default="rule",
                        help="rule: the template's face half-spaces, generous enough for any "
                        "face (default); template: the registered template's own face plus "
                        "--face-margin, within those half-spaces, like mask_face and pydeface "
                        "(a face larger than the template's is partly left)")
    deface.add_argument("--face-margin", type=nonnegative_float, default=8.0, metavar="MM",
                        help="--face-region template: margin around the template's face, "
                        "template mm (default: %(default)s)")
    deface.add_argument("--guard-mm", type=nonnegative_float, default=10.0,
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
    deface.add_argument("--release-policy", type=Path, metavar="POLICY.json",
                        help="dataset mode: what OUT may contain (datatypes, suffixes, "
                        "top-level files, extra allowed paths); anything else is withheld "
                        "and listed in OUT/derivatives/isyb/withheld.tsv (default: isyb's "
                        "release_policy.json)")
    executor_arguments(deface, "dataset mode: subjects")

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
        "head rendered at yaw -15, 0 and +15 degrees. Face detection: the Haar cascade on 3 "
        "views, and by default an ensemble (Haar + MTCNN, 12 views: yaw, pitch, two lights) "
        "reported per detector and view. With --template: the defaced face's distance (mm) to "
        "the original face and to that template's registered face. face_reference measures "
        "the subject's own face surface (brows to the lower edge of the mandible, found "
        "without a template): the fractions changed, left for a 10 mm brain guard and left "
        "unreached, whole and by thirds.")
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
    evaluate.add_argument("--detect", choices=("ensemble", "haar"), default="ensemble",
                          help="face detection: the ensemble and the Haar cascade, or the Haar "
                          "cascade on 3 views only (faster) (default: %(default)s)")
    evaluate.add_argument("--template", metavar="NAME|PATH",
                          help="the template the defacing used: also report the face distances "
                          "to the original and to this template's face (registers ORIG to it)")
    evaluate.add_argument("--json", action="store_true",
                          help="print the JSON object indented (it is always JSON)")

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
    demo.add_argument("--subjects", type=positive_int, default=3,
                      help="number of phantom subjects (default: %(default)s)")
    executor_arguments(demo, "subjects")
    deface.set_defaults(handler=cmd_deface)
    templates.set_defaults(handler=cmd_templates)
    evaluate.set_defaults(handler=cmd_evaluate)
    demo.set_defaults(handler=cmd_demo)


def cmd_deface(args: argparse.Namespace) -> int:
    from isyb.bids.classify import load_release_policy
    from isyb.deface.dataset import check_dataset, deface_dataset, withheld_path
    from isyb.deface.engine import DefaceOptions
    from isyb.deface.file import deface_file
    from isyb.templates.registry import resolve

    options = DefaceOptions(method=args.method, ears=args.ears, neck=args.neck,
                            keep_chin=args.keep_chin,
                            guard_mm=args.guard_mm, face_region=args.face_region,
                            face_margin_mm=args.face_margin)
    check_in_out(args.input, args.output)
    if args.input.is_dir():
        if args.save_mask:
            raise IsybError("--save-mask is for single files; dataset mode writes every mask "
                            "to OUT/derivatives/isyb")
        executor = executor_options(args)
        load_release_policy(args.release_policy)  # a bad policy fails before any work
        check_dataset(args.input, args.output, args.participant_label)
        template = resolve(args.template, progress=note)
        records = deface_dataset(args.input, args.output, template, options,
                                 labels=args.participant_label, executor=executor,
                                 progress=not args.quiet,
                                 release_policy=args.release_policy)
        failed = [i for r in records for i in r["images"] if i["status"] != "ok"]
        note(f"defaced {sum(len(r['images']) for r in records) - len(failed)} image(s) of "
              f"{len(records)} subject(s); summary: "
              f"{args.output / 'derivatives' / 'isyb' / 'index.html'}")
        withheld = withheld_path(args.output)
        count = len(withheld.read_text().splitlines()) - 1
        if count:
            note(f"withheld {count} file(s) the release policy does not allow: {withheld}")
        for image in failed:
            failure(f"failed: {image['file']}: {image['error']}")
        return 1 if failed else 0
    if args.participant_label or args.release_policy:
        raise IsybError("--participant-label and --release-policy need a BIDS dataset folder "
                        "as IN")
    from isyb.deface.file import check_paths
    from isyb.io import load_image, load_volume, sweep_partial_of

    check_paths(args.input, args.output, force=args.force, save_mask=args.save_mask)
    for path, option in ((args.output, "OUT"), (args.save_mask, "--save-mask")):
        if path is not None:
            check_output_file(path, option)  # before the minutes of work, not after
    load_image(args.input)  # a bad input fails now, not after a first template preparation
    for path in (args.output, args.save_mask):
        for partial in sweep_partial_of(path) if path else ():
            note(f"removed {partial}, left by an interrupted run")
    load_volume(args.input)  # its voxels too (NaN, constant), before any template work
    template = resolve(args.template, progress=note)
    record = deface_file(args.input, args.output, template, options, save_mask=args.save_mask,
                         force=args.force, qc_png=not args.no_png, stage=note)
    summary = {key: record[key] for key in ("output", "method", "changed_voxels",
                                            "face_surface_changed_fraction",
                                            "little_or_no_face")}
    summary["face_reference_changed_fraction"] = record["face_reference"]["changed_fraction"]
    summary["registration_score"] = record["registration"]["score_brain_dice"]
    summary["brain_guard_passed"] = record["brain_guard"]["passed"]
    print(json.dumps(summary))
    if record.get("note"):
        note(record["note"])
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from isyb.templates.registry import BUILTINS, cached, resolve

    if args.action == "list":
        print(f"{'name':<22}{'kind':<14}{'prepared':<10}description")
        for entry in BUILTINS.values():
            prepared = "yes" if cached(entry.name) else "no"
            print(f"{entry.name:<22}{entry.kind:<14}{prepared:<10}{entry.description}")
        return 0
    template = resolve(args.name, progress=note)
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

    renders = args.renders or Path(f"{strip_image_suffix(args.defaced)}_renders.png")
    check_not_input(renders, [args.original, args.defaced, args.mask, args.brain_mask],
                    "--renders")
    check_output_file(renders, "--renders")
    original, defaced = load_volume(args.original), load_volume(args.defaced)
    check_same_grid(original, defaced, ("ORIG", "DEFACED"))
    mask_volume = load_volume(args.mask)
    check_same_grid(original, mask_volume, ("ORIG", "FACE_MASK"))
    brain = None
    if args.brain_mask:
        brain_volume = load_volume(args.brain_mask)
        check_same_grid(original, brain_volume, ("ORIG", "BRAIN"))
        brain = brain_volume.data > 0
    template = None
    if args.template:
        from isyb.templates.registry import resolve

        template = resolve(args.template)
    record = evaluate_defacing(original, defaced, mask_volume.data > 0, brain=brain,
                               nmi_method=args.nmi, ensemble=args.detect == "ensemble",
                               template=template)
    save_renders(defaced, renders)
    record["renders_png"] = str(renders)
    print(json.dumps(record, indent=2 if args.json else None))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from isyb.deface.dataset import deface_dataset
    from isyb.deface.engine import DefaceOptions
    from isyb.synthetic.demo import MODALITIES, build_demo_dataset
    from isyb.templates.registry import resolve

    check_writable(args.output)
    if args.flat:
        from isyb.synthetic.demo import build_demo_flat

        folder, mapping = build_demo_flat(args.output, n_subjects=args.subjects)
        print(json.dumps({"flat_folder": str(folder), "map": str(mapping)}))
        return 0
    executor = executor_options(args)
    modalities = tuple(m.strip() for m in args.modalities.split(",") if m.strip())
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise IsybError(f"unknown --modalities {', '.join(unknown)}; choose from "
                        f"{', '.join(MODALITIES)}")
    bids = build_demo_dataset(args.output / "bids", n_subjects=args.subjects,
                              modalities=("anat", *modalities))
    note(f"phantom BIDS dataset written to {bids}")
    template = resolve("default", progress=note)
    out = args.output / "bids_defaced"
    records = deface_dataset(bids, out, template, DefaceOptions(), executor=executor,
                             progress=not args.quiet)
    images = [i for r in records for i in r["images"]]
    failed = [i for i in images if i["status"] != "ok"]
    for image in images:
        if image["status"] == "ok":
            p = image["provenance"]
            note(f"{image['file']}: registration Dice {p['registration']['score_brain_dice']}, "
                  f"{p['changed_voxels']} voxels changed, "
                  f"{p['brain_guard']['changed_voxels_in_guard']} in the brain guard")
        else:
            failure(f"{image['file']}: failed: {image['error']}")
    print(out / "derivatives" / "isyb" / "index.html")
    return 1 if failed else 0
