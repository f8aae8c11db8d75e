"""Time `isyb study` on 10 subjects x 3 templates (real heads plus phantoms).

Run: python benchmarks/bench_study.py [--data DIR] [--out DIR] [--nprocs 1]

The cohort is the 8 head scans of ../shared/data/heads (symlinked into a BIDS
layout) plus 2 phantoms; the templates are default, MNI152NLin6Asym and
MNI152NLin2009cAsym (a local TemplateFlow home filled from
../shared/data/templates). Templates are prepared once before the timed run.
The same command is then run again to time a fully cached rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADS = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz",
         "colin27_T1w.nii.gz", "chris_T1w_cropped.nii.gz", "itk-kmeans_T1w_LSA_2x2x3mm.nii.gz",
         "ds000240-sub01_T1w_defaced.nii.gz", "myconnectome_T2w_slab.nii.gz")
TEMPLATES = "default,MNI152NLin6Asym,MNI152NLin2009cAsym"


def default_data() -> Path:
    env = os.environ.get("ISYB_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def build_cohort(data: Path, root: Path) -> Path:
    """A BIDS dataset of the real heads (symlinks) and two phantoms."""
    from isyb.synthetic.demo import build_demo_dataset

    build_demo_dataset(root, n_subjects=2)
    for index, name in enumerate(HEADS, start=3):
        suffix = ".mgz" if name.endswith(".mgz") else ".nii.gz"
        target = root / f"sub-{index:02d}" / "anat" / f"sub-{index:02d}_T1w{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(data / "heads" / name)
    return root


def templateflow_home(data: Path, home: Path) -> Path:
    for name in ("MNI152NLin6Asym", "MNI152NLin2009cAsym"):
        folder = home / f"tpl-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for suffix in ("T1w", "desc-brain_mask"):
            filename = f"tpl-{name}_res-01_{suffix}.nii.gz"
            (folder / filename).symlink_to(data / "templates" / filename)
    return home


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-study-")))
    parser.add_argument("--nprocs", type=int, default=1)
    args = parser.parse_args()
    isyb = str(Path(sys.executable).with_name("isyb"))
    env = dict(os.environ, ISYB_HOME=str(args.out / "isyb_home"),
               TEMPLATEFLOW_HOME=str(templateflow_home(args.data, args.out / "templateflow")))
    bids = build_cohort(args.data, args.out / "bids")
    for name in TEMPLATES.split(","):
        subprocess.run([isyb, "templates", "prepare", name], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    command = [isyb, "study", str(bids), str(args.out / "study"), "--templates", TEMPLATES,
               "--split", "a:5,b:5", "--nprocs", str(args.nprocs), "--quiet"]
    first = timed(command, env)
    cached = timed(command, env)
    pairs = 10 * 3
    result = {"subjects": 10, "templates": 3, "nprocs": args.nprocs, "cores": os.cpu_count(),
              "total_s": round(first, 1), "per_subject_template_s": round(first / pairs, 2),
              "cached_rerun_s": round(cached, 1)}
    print(json.dumps(result, indent=2))
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"outputs in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
