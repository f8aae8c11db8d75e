"""Own-face coverage of isyb's defacings on the real full-face heads (issue 20, issue 15 items 1-3).

Usage::

    python benchmarks/face_coverage.py [--data DIR] [--work DIR] [--heads NAME ...]
        [--templates NAME ...] [--methods blur ...] [--guard-mm 10 ...] [--keep-chin]

For every head, template, method and guard margin it defaces in process (the
brain mask from deepbet and the registration are computed once per head and
template and cached in ``--work``) and prints one JSON line with: the face
reference's changed / guard / unreached fractions, whole and per third
(:mod:`isyb.head.face_reference`), the brain voxels changed (deepbet's mask),
the largest depth step across the region's border
(:func:`isyb.viz.seams.border_step_mm`, steps the original had left out),
and the time of the
defacing step itself (registration excluded). The MNI templates are read from
a sparse TemplateFlow home built under ``--work`` from ``DIR/templates``. No
picture is written.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import default_data

FULL_FACE = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz",
             "mne-sample_T1w_3mm.mgz")
TEMPLATES = ("default", "MNI152NLin6Asym", "MNI152NLin2009cAsym")
TEMPLATEFLOW = {"MNI152NLin6Asym": ("tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
                                    "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"),
                "MNI152NLin2009cAsym": ("tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
                                        "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz")}


def templateflow_home(data: Path, home: Path) -> None:
    """A sparse TemplateFlow home with the two MNI templates, symlinked from ``data``."""
    for name, files in TEMPLATEFLOW.items():
        folder = home / f"tpl-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for filename in files:
            if not (folder / filename).exists():
                (folder / filename).symlink_to(data / "templates" / filename)
        (folder / "template_description.json").write_text(json.dumps({"Identifier": name}))
    (home / "dataset_description.json").write_text(json.dumps({"Name": "TemplateFlow subset"}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--work", type=Path, default=Path("face_coverage_work"))
    parser.add_argument("--heads", nargs="+", default=list(FULL_FACE))
    parser.add_argument("--templates", nargs="+", default=list(TEMPLATES))
    parser.add_argument("--methods", nargs="+", default=["blur"])
    parser.add_argument("--guard-mm", nargs="+", type=float, default=[10.0])
    parser.add_argument("--keep-chin", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ISYB_HOME", str(args.work / "isyb_home"))
    os.environ["TEMPLATEFLOW_HOME"] = str(args.work / "templateflow")
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    templateflow_home(args.data, args.work / "templateflow")

    import numpy as np

    from isyb.deface.checked import deface_checked
    from isyb.deface.engine import DefaceOptions, align
    from isyb.head.brain import extract_brain
    from isyb.io import load_volume
    from isyb.templates.registry import resolve
    from isyb.viz.seams import border_step_mm

    for head in args.heads:
        volume = load_volume(args.data / "heads" / head)
        brain_file = args.work / f"{head}.brain.npy"
        if not brain_file.exists():
            np.save(brain_file, extract_brain(volume.data, volume.zooms))
        brain = np.load(brain_file)
        for name in args.templates:
            template = resolve(name)
            cache = args.work / f"{head}.{name}.alignment.pkl"
            if cache.exists():
                alignment = pickle.loads(cache.read_bytes())
            else:
                alignment = align(volume, template, brain=brain)
                cache.write_bytes(pickle.dumps(alignment))
            for method in args.methods:
                for guard in args.guard_mm:
                    options = DefaceOptions(method=method, guard_mm=guard,
                                            keep_chin=args.keep_chin)
                    clock = time.perf_counter()
                    checked = deface_checked(volume, template, options, alignment=alignment)
                    seconds = time.perf_counter() - clock
                    result = checked.defacing
                    reference = checked.report.face_reference
                    print(json.dumps({
                        "head": head, "template": name, "method": method, "guard_mm": guard,
                        "keep_chin": args.keep_chin,
                        "changed": reference["changed_fraction"],
                        "guard": reference["guard_fraction"],
                        "unreached": reference["unreached_fraction"],
                        "thirds": {third: [values["changed_fraction"], values["guard_fraction"],
                                           values["unreached_fraction"]]
                                   for third, values in reference["thirds"].items()},
                        "brain_changed_voxels": int(((result.data != volume.data)
                                                     & brain).sum()),
                        "border_step_mm": round(border_step_mm(
                            result.data, volume.zooms, result.region, volume.data), 2),
                        "deface_s": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
