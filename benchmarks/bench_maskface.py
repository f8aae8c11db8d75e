"""Time ``isyb deface --method maskface`` on one 256³ real head, and run the face detector.

Usage::

    python benchmarks/bench_maskface.py [--repeats 3] [--templates default,MNI152NLin6Asym]
                                        [--data DIR] [--out DIR] [--isyb-home DIR]

Input: ``heads/pycortex-S1_T1w.nii.gz`` (256³, 1 mm, LIA, full face). For each
template: one untimed warm-up (prepares the template in ``ISYB_HOME``), then
``--repeats`` timed runs of ``isyb deface IN OUT --method maskface --template
T --force``, each a child process (wall time around it, peak RSS from
``os.wait4``), and one run of ``--method blur`` for comparison. ``default``
has no CAPIIO matrix (isyb's face region places the box); ``MNI152NLin6Asym``
places mask_face's face box through ``CAPIIO_to_mni152.mat``, as the
descriptor did (a sparse TemplateFlow home is laid out in OUT from
``DATA/templates``). The stage timings of the last run come from its
provenance record. The face detector (:func:`isyb.viz.faces.face_detected`,
OpenCV Viola-Jones on surface renders at yaw -15°, 0°, +15°) runs on the
original and on each output; only booleans and counts are kept, no render.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from _timing import default_data, detect, machine, run_child, script, source_state, timed

SCAN = "heads/pycortex-S1_T1w.nii.gz"
MNI_FILES = ("tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
             "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz")


def templateflow_home(data: Path, home: Path) -> Path:
    """A sparse TemplateFlow home with MNI152NLin6Asym at 1 mm, linked from ``DATA/templates``."""
    folder = home / "tpl-MNI152NLin6Asym"
    folder.mkdir(parents=True, exist_ok=True)
    for name in MNI_FILES:
        target = folder / name
        if not target.exists():
            target.symlink_to(data / "templates" / name)
    (folder / "template_description.json").write_text(json.dumps(
        {"Identifier": "MNI152NLin6Asym", "Name": "MNI152NLin6Asym (benchmark subset)"}))
    (home / "dataset_description.json").write_text(json.dumps(
        {"Name": "TemplateFlow (benchmark subset)", "BIDSVersion": "1.1.0"}))
    return home


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--templates", default="default,MNI152NLin6Asym")
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--out", type=Path)
    parser.add_argument("--isyb-home", type=Path)
    args = parser.parse_args(argv)
    scan = args.data / SCAN
    if not scan.exists():
        print(f"bench_maskface: {scan} not found; set ISYB_TEST_DATA or pass --data",
              file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="isyb_bench_maskface_"))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, ISYB_HOME=str(args.isyb_home or out / "isyb_home"),
               TEMPLATEFLOW_HOME=str(templateflow_home(args.data, out / "templateflow")))
    print(f"input {scan}; outputs {out}; machine {machine()}; source {source_state()}",
          flush=True)
    isyb = script("isyb")
    results: dict = {"faces": {"original": detect(scan)}}
    for template in [name for name in args.templates.split(",") if name]:
        output = out / f"maskface_{template}.nii.gz"
        command = [*isyb, "deface", str(scan), str(output), "--method", "maskface",
                   "--template", template, "--force"]
        warm = run_child(command, env, logs / f"warmup_{template}.log")
        print(f"{template}: warm-up {warm['wall_s']:.2f} s", flush=True)
        results[f"maskface_{template}"] = timed(f"maskface_{template}", command, args.repeats,
                                                env, logs)
        record = json.loads(output.with_name(output.name.replace(".nii.gz", "_isyb.json"))
                            .read_text())
        results[f"maskface_{template}"]["timings_s"] = record["timings_s"]
        results[f"maskface_{template}"]["maskface"] = record["maskface"]
        results[f"maskface_{template}"]["changed_voxels"] = record["changed_voxels"]
        print(f"  stages {record['timings_s']}; face box: {record['maskface']['face_box']}",
              flush=True)
        blur = out / f"blur_{template}.nii.gz"
        results[f"blur_{template}"] = timed(
            f"blur_{template}", [*isyb, "deface", str(scan), str(blur), "--template", template,
                                 "--force"], 1, env, logs)
        results["faces"][f"maskface_{template}"] = detect(output)
        results["faces"][f"blur_{template}"] = detect(blur)
    for name, found in results["faces"].items():
        verdict = "FACE FOUND" if found["detected"] else "no face"
        print(f"  {name:<28} {verdict} ({found['yaws_with_face']}/{found['yaws']} views)")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
