"""Validate ``isyb study`` by simulation: two head-shape populations, one template of each.

Simulation only: the F and p values this prints describe the simulated
cohort, not real populations.

The cohort (:mod:`isyb.study.simulate`) has a ``ref`` population (faces as
they come) and a ``cn200`` population (the face reshaped by the linear part of
``transforms/CAPIIO_to_CN200.mat`` raised to ``--strength``), made of
phantoms with individual head sizes and face strengths, plus each real head
of ``--real`` resampled to ``--voxel`` mm, once per population. One template
per population: a noise-free default-size phantom with that population's
face. Every subject is defaced with ``--method`` (default ``remove``) and
``--face-region`` (default ``template``: the registered template's own face
plus ``--face-margin``, default 3 mm, the simulation's margin; the deface
default of 8 mm absorbs the squared matrix's face-surface shifts). ``blur``
is not the right probe: it rebuilds the face along the registered template's
outline, so a matched template changes the face *less*. NMI is over each
subject's evaluation region, the same voxels for every template. The study
runs twice on the same work cache:

1. templates ``ref`` and ``cn200``, subsets = populations (mixed ANOVA:
   template within, population between). A shape-matched template that
   removes more face shows as a template × population interaction, with the
   matched template higher in each population;
2. templates ``ref`` and a byte-identical copy of it under another name: the
   negative control, which must show no effect at all;
3. with ``--isyb-design``, ``isyb study --design isyb`` as it stands (maskface,
   the template's face region with the design's 6 mm margin, mask_face's ROI
   enlargement of ``round(6·pixdim)`` voxels on the descriptor's 1 mm heads;
   type III mixed ANOVA) on ``ref`` and ``cn200``, and the same design with
   the simulation's 3 mm margin.

    python benchmarks/simulate_study.py [--phantoms 5] [--real pycortex-S1_T1w.nii.gz,...]
        [--strength 2] [--voxel 3] [--method remove] [--face-region template]
        [--face-margin 3] [--isyb-design] [--no-detectors] [--no-reid] [--nprocs 2]
        [--data DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

from isyb.study.simulate import (
    RESHAPES,
    SIMULATION_MARGIN_MM,
    SIMULATION_NOTE,
    matched_differences,
    run_simulation,
)

DEFAULT_REAL = "pycortex-S1_T1w.nii.gz,myconnectome_T1w_1p6mm.nii.gz"


def data_folder(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("ISYB_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"


def anova_rows(anova: pd.DataFrame) -> list[dict]:
    keep = anova[anova["Source"].isin(["template", "Interaction", "subset"])]
    return [{"analysis": r.analysis, "source": r.Source, "F": float(r.F),
             "p": float(r.p_unc)} for r in keep.itertuples()]


def design_summary(key: str, study: dict, names: dict[str, str], dv: str) -> dict:
    """Print and return one ``--design isyb`` study: matched − mismatched per subject and
    the type III rows of the template and the interaction."""
    diffs = matched_differences(study["metrics"], names, dv)
    anova = study["anova"].set_index("Source")
    print(f"\n{study['summary']['design']} ({key}): matched - mismatched per subject: "
          + ", ".join(f"{v:+.4f}" for v in diffs["matched_minus_mismatched"]))
    rows = []
    for source in ("template", "template × subset"):
        row = anova.loc[source]
        rows.append({"source": source, "F": float(row["F"]), "df1": float(row["df1"]),
                     "df2": float(row["df2"]), "p": float(row["p"])})
        print(f"  {source:18s} F({row['df1']:g}, {row['df2']:g}) = {row['F']:.3f}  "
              f"p = {row['p']:.4g}")
    return {"design": study["summary"]["design"], "anova": rows,
            "matched_minus_mismatched": diffs["matched_minus_mismatched"].tolist()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="shared data folder (default $ISYB_TEST_DATA or "
                        "<repo>/../shared/data)")
    parser.add_argument("--out", help="output folder (default: a new temporary folder)")
    parser.add_argument("--phantoms", type=int, default=5, help="phantoms per population")
    parser.add_argument("--real", default=DEFAULT_REAL,
                        help="comma-separated files of DATA/heads, each used once per population "
                             "('' for none)")
    parser.add_argument("--strength", type=float, default=2.0,
                        help="power of the CN200 matrix applied to the cn200 faces")
    parser.add_argument("--reshape", choices=RESHAPES, default="cn200",
                        help="cn200 faces: the CAPIIO->CN200 matrix (default, with --strength "
                        "2) or CN200 relative to MNI152 (use --strength 1)")
    parser.add_argument("--voxel", type=float, default=3.0, help="cohort voxel size, mm")
    parser.add_argument("--method", choices=("remove", "blur", "noise", "maskface"),
                        default="remove")
    parser.add_argument("--face-region", choices=("template", "rule"), default="template")
    parser.add_argument("--face-margin", type=float, default=SIMULATION_MARGIN_MM,
                        help="template face-region margin, mm (default: %(default)s)")
    parser.add_argument("--isyb-design", action="store_true",
                        help="also run --design isyb, with its 6 mm margin and with 3 mm")
    parser.add_argument("--no-detectors", dest="detectors", action="store_false",
                        help="skip the face detectors (as isyb study --no-detectors)")
    parser.add_argument("--no-reid", dest="reid", action="store_false",
                        help="skip the face distances and re-identification")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dv", default="nmi", choices=("nmi", "face_surface_changed_fraction"))
    args = parser.parse_args(argv)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="isyb-simstudy-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ISYB_HOME", str(out / "isyb_home"))
    print(f"output: {out}", flush=True)
    real = [name for name in args.real.split(",") if name]
    start = time.perf_counter()
    result = run_simulation(data_folder(args.data), out, phantoms_per_population=args.phantoms,
                            real_heads=real, strength=args.strength, voxel_mm=args.voxel,
                            method=args.method, face_region=args.face_region,
                            face_margin_mm=args.face_margin, nprocs=args.nprocs,
                            seed=args.seed, dv=args.dv, detectors=args.detectors,
                            reid=args.reid, isyb_design=args.isyb_design,
                            reshape=args.reshape, log=print)
    seconds = time.perf_counter() - start
    pd.set_option("display.width", 160)
    print(f"\n{SIMULATION_NOTE}")
    print(f"cohort: {len(result['subjects'])} subjects ({args.phantoms} phantoms per population"
          f" + {len(real)} real heads x 2 populations), {args.voxel:g} mm, "
          f"{args.reshape} matrix ** {args.strength:g}; {args.method}, "
          f"face region {args.face_region}"
          f" (margin {args.face_margin:g} mm); DV {args.dv}; {seconds:.0f} s")
    sources = {s.label: s.source for s in result["subjects"]}
    diffs = matched_differences(result["main"]["metrics"], result["names"], args.dv)
    diffs.insert(2, "source", diffs["subject"].map(sources))
    print("\nper subject (template columns = DV):")
    print(diffs.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    print("\nmatched - mismatched, mean (SD) per population:")
    for subset, group in diffs.groupby("subset"):
        values = group["matched_minus_mismatched"]
        print(f"  {subset}: {values.mean():+.5f} ({values.std(ddof=1):.5f}), n={len(values)}")
    phantoms = diffs[diffs["source"] == "phantom"]
    if len(phantoms) < len(diffs):
        print("  phantoms only: " + ", ".join(
            f"{subset} {group['matched_minus_mismatched'].mean():+.5f}"
            for subset, group in phantoms.groupby("subset")))
    rows = anova_rows(result["main"]["anova"])
    print("\ntemplates ref vs cn200:")
    for row in rows:
        print(f"  {row['analysis']:10s} {row['source']:12s} F = {row['F']:.3f}  p = {row['p']:.4g}")
    control_rows = anova_rows(result["control"]["anova"])
    cm = result["control"]["metrics"]
    spread = cm.groupby("subject")[args.dv].agg(lambda v: float(v.max() - v.min())).max()
    print("\nnegative control, ref vs an identical copy of ref:")
    print(f"  largest per-subject difference: {spread:g}")
    for row in control_rows:
        print(f"  {row['analysis']:10s} {row['source']:12s} F = {row['F']:.3f}  p = {row['p']:.4g}")
    results = {"note": SIMULATION_NOTE, "seconds": round(seconds, 1), "args": vars(args),
               "main": rows, "control": control_rows, "control_max_difference": spread,
               "matched_minus_mismatched": diffs.to_dict(orient="records")}
    for key in ("isyb", "isyb_margin") if args.isyb_design else ():
        results[key] = design_summary(key, result[key], result["names"], args.dv)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
