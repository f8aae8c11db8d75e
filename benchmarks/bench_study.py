"""Time `isyb study` on 10 subjects x 3 templates (real heads plus phantoms).

Run: python benchmarks/bench_study.py [--data DIR] [--out DIR] [--nprocs 1]
     python benchmarks/bench_study.py --isyb-scale [--subjects 2] [--method maskface] [--threads 1]

The cohort is the 8 head scans of ../shared/data/heads (symlinked into a BIDS
layout) plus 2 phantoms; the templates are default, MNI152NLin6Asym and
MNI152NLin2009cAsym (a local TemplateFlow home filled from
../shared/data/templates). Templates are prepared once before the timed run.
The same command is then run again to time a fully cached rerun.

``--isyb-scale`` times the study's own per-subject task
(:func:`isyb.study.run.run_subject`, in this process, one process) on a
small sample of ISYB-shaped heads: 1 mm phantoms with a 200 × 232 × 256 mm
field of view (the ISYB T1w grid is 1 mm), 3 templates, and extrapolates to
the descriptor's 215 subjects × 3 templates. The method defaults to
``maskface`` with the template face region: what ``isyb study``'s default
design (``--design isyb``) runs (``--method blur`` times the other design's
defacing). Each stage (brain extraction,
evaluation region, subject masks, face detection, registration, defacing,
metrics, face distances and descriptor, detector ensemble, writing) is timed
by wrapping the functions the task calls, and the defacing's own stages come
from its report; per-subject stages are shared by the subject's templates and
reported per pair. The templates' caches (registration grid, face, outline),
built once for the whole study, are built before the timed run. The task runs
with ``--threads`` torch and ITK threads (1 by default: what ``isyb study
--nprocs 2`` gives each of its two tasks on 2 cores) and glibc keeping freed
memory (:func:`isyb.executor.keep_freed_memory`), as each local task does. It also reports the
process's CPU time per pair and of each stage (user + system, all threads):
the wall time depends on the load. Work done once per worker process (ANTsPy's
import, about 1.5 CPU s) is done before the timed run and reported apart
(``process_startup_cpu_s``): a study's workers run many subjects each, so it is
not a cost per pair. The 2-core extrapolation assumes two such tasks at once on
otherwise idle cores (half the CPU time of all pairs, plus each worker's start-up).
The re-identification that follows the subjects (N × N surface fits per template) is
timed on the sampled subjects' descriptors (each original against the other subjects'
defaced faces: ``subjects × (subjects - 1)`` fits per template) and extrapolated to
215² × 3 fits: ``..._with_reid`` is the whole first run.
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


def pin_local_copies(home: Path) -> dict[str, str]:
    """The environment that lists ``home``'s template files as verified copies.

    The shared test copies are recompressed, so isyb refuses them against
    TemplateFlow's own digests (issue 17); a user who verified a copy lists its
    SHA-256 in ``$ISYB_TEMPLATEFLOW_PINS``, as this does.
    """
    from isyb.templates.fetch import sha256_file
    from isyb.templates.verify import PINS_ENV

    pins = home / "pins.sha256"
    pins.write_text("".join(f"{sha256_file(path)}  {path.name}\n"
                            for path in sorted(home.glob("tpl-*/*.nii.gz"))))
    return {PINS_ENV: str(pins), "TEMPLATEFLOW_AUTOUPDATE": "0"}


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


STAGES = {"load_volume": "load", "extract_brain": "brain extraction",
          "evaluation_region": "evaluation region", "subject_masks": "subject masks",
          "face_detected": "face detection (Haar)", "align": "registration",
          "registration_grid": "registration",
          "deface_volume": "defacing", "evaluate_defacing": "metrics (NMI, surface)",
          "face_distances": "face distances", "face_descriptor": "face descriptor",
          "frame_samples": "face descriptor", "samples_descriptor": "face descriptor",
          "ensemble_detect": "detector ensemble", "save_mask_like": "writing masks"}
#: The defacing's own stages, from its report's ``timings_s`` (a part of "defacing").
DEFACE_STAGES = {"region_s": "defacing: face region", "obscure_s": "defacing: obscure",
                 "statistics_s": "defacing: statistics"}
ISYB_SUBJECTS, ISYB_TEMPLATES = 215, 3


def isyb_scale(args: argparse.Namespace) -> dict:
    """Time per subject × template pair on 1 mm phantoms, by stage; extrapolate to 215 × 3."""
    os.environ.setdefault("ISYB_HOME", str(args.out / "isyb_home"))
    os.environ["TEMPLATEFLOW_HOME"] = str(templateflow_home(args.data, args.out / "templateflow"))
    os.environ.update(pin_local_copies(Path(os.environ["TEMPLATEFLOW_HOME"])))
    import nibabel as nib

    import isyb.study.run as run
    from isyb.executor import keep_freed_memory, limit_threads
    from isyb.study.study import StudyOptions
    from isyb.synthetic.phantom import make_phantom
    from isyb.templates.outline import outline_for
    from isyb.templates.registry import resolve

    # what the study's local executor sets up in each task (isyb.executor._Limited)
    keep_freed_memory()
    limit_threads(args.threads)
    # Once per worker process, not per pair: ANTsPy's import (its __init__ loads
    # matplotlib, statsmodels and scikit-learn; about 1.5 CPU s), which the first
    # registration would otherwise charge to the first subject's pairs.
    start_cpu = time.process_time()
    import ants  # noqa: F401
    startup_cpu = time.process_time() - start_cpu
    # the defacing of isyb study's default design (its face margin included: 6 mm, mask_face's
    # ROI enlargement), with --method and --face-region as given
    options = StudyOptions(method=args.method, face_region=args.face_region).deface_options()
    templates = tuple(resolve(name) for name in TEMPLATES.split(","))  # prepared, untimed
    for template in templates:  # per-template caches, built once for all subjects: untimed
        template.working_grid()
        template.face()
        outline_for(template, options.smooth_mm)
        if hasattr(run, "_frame"):  # the face frame, once per process since this session
            run._frame(template)
    spent: dict[str, float] = dict.fromkeys([*STAGES.values(), *DEFACE_STAGES.values()], 0.0)
    spent_cpu: dict[str, float] = dict.fromkeys(STAGES.values(), 0.0)
    for name, label in STAGES.items():
        function = getattr(run, name, None)
        if function is None:  # a stage this version of the study does not have
            continue

        def timed_stage(*a, _function=function, _label=label, **k):
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                result = _function(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - start
                spent_cpu[_label] += time.process_time() - start_cpu
            if _label == "defacing":
                for key, part in DEFACE_STAGES.items():
                    spent[part] += result.report["timings_s"].get(key, 0.0)
            return result
        setattr(run, name, timed_stage)
    total = cpu = 0.0
    for index in range(args.subjects):
        phantom = make_phantom(voxel_size=1.0, seed=index, length=190.0 + 6 * index)
        image = args.out / "heads" / f"sub-{index:02d}_T1w.nii.gz"
        image.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(phantom.image.astype("float32"), phantom.affine), image)
        job = run.SubjectJob(f"{index:02d}", image, templates, args.out / "work", options)
        start, start_cpu = time.perf_counter(), time.process_time()
        rows = run.run_subject(job)
        total += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        assert all(row["status"] == "ok" for row in rows), rows
    pairs = args.subjects * len(templates)
    per_pair = total / pairs
    reid_fits, reid_cpu = time_reidentification(args.out / "work", run.work_name(options),
                                                templates, args.subjects)
    reid_cpu_h = reid_cpu / reid_fits * ISYB_SUBJECTS**2 * ISYB_TEMPLATES / 3600
    per_subject_min = (cpu / pairs * ISYB_SUBJECTS * ISYB_TEMPLATES + 2 * startup_cpu) / 2 / 60
    return {"mode": "isyb-scale", "subjects_sampled": args.subjects,
            "templates": TEMPLATES, "method": args.method, "face_region": args.face_region,
            "face_margin_mm": options.face_margin_mm,
            "voxel_mm": 1.0, "grid": list(phantom.image.shape), "processes": 1,
            "threads": args.threads,
            "cores": os.cpu_count(), "load_average": [round(x, 1) for x in os.getloadavg()],
            "total_s": round(total, 1), "per_pair_s": round(per_pair, 2),
            "cpu_s_per_pair": round(cpu / pairs, 2),
            "stage_s_per_pair": {k: round(v / pairs, 2) for k, v in spent.items()},
            "stage_cpu_s_per_pair": {k: round(v / pairs, 2) for k, v in spent_cpu.items()},
            "extrapolated_215x3_h_one_process": round(
                per_pair * ISYB_SUBJECTS * ISYB_TEMPLATES / 3600, 2),
            "process_startup_cpu_s": round(startup_cpu, 2),
            # two one-thread tasks at once on two otherwise idle cores: the CPU time halved,
            # plus each worker's start-up once
            "extrapolated_215x3_min_2_tasks_idle": round(per_subject_min, 1),
            "reid_fits_timed": reid_fits,
            "reid_cpu_s_per_fit": round(reid_cpu / reid_fits, 3),
            "extrapolated_215x3_reid_cpu_h": round(reid_cpu_h, 2),
            "extrapolated_215x3_min_2_tasks_idle_with_reid": round(
                per_subject_min + reid_cpu_h * 60 / 2, 1),
            "target_per_pair_s": 3.0}


def time_reidentification(work: Path, setting: str, templates: tuple, subjects: int
                          ) -> tuple[int, float]:
    """``(fits, CPU s)`` of the study's re-identification among the sampled subjects: each
    original face against every *other* subject's defaced face of its template, as
    :func:`isyb.study.reid_columns.reid_column` fits them (without its cache). A subject
    against itself is left out: at 215 subjects such fits are 0.5 % of all, in a small
    sample a large share. The phantoms' faces are one shape scaled, so faces of real
    cohorts, farther apart, may cost more iterations' worth of search per fit."""
    import numpy as np

    from isyb.evaluate.reid import distance_column
    from isyb.study.run import DESCRIPTOR, ORIGINAL_DESCRIPTOR

    fits, cpu = 0, 0.0
    for template in templates:
        pairs = [work / f"sub-{index:02d}" / setting / f"tpl-{template.name}"
                 for index in range(subjects)]
        probes = [np.load(pair / DESCRIPTOR) for pair in pairs]
        for own, pair in enumerate(pairs):
            gallery = np.load(pair / ORIGINAL_DESCRIPTOR)
            others = [probe for index, probe in enumerate(probes) if index != own]
            start_cpu = time.process_time()
            distance_column(gallery, others)
            cpu += time.process_time() - start_cpu
            fits += len(others)
    return fits, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="bench-study-")))
    parser.add_argument("--nprocs", type=int, default=1)
    parser.add_argument("--isyb-scale", action="store_true",
                        help="time per pair on ISYB-shaped 1 mm heads, by stage, extrapolated "
                        "to 215 subjects x 3 templates")
    parser.add_argument("--subjects", type=int, default=2, help="--isyb-scale: heads sampled")
    parser.add_argument("--method", default="maskface",
                        help="--isyb-scale: defacing method (the isyb design's, isyb study's "
                        "default: maskface)")
    parser.add_argument("--threads", type=int, default=1,
                        help="--isyb-scale: torch and ITK threads of the task (1: what "
                        "`isyb study --nprocs 2` gives each task on 2 cores)")
    parser.add_argument("--face-region", default="template",
                        help="--isyb-scale: face region (the isyb design's: template)")
    args = parser.parse_args()
    if args.isyb_scale:
        result = isyb_scale(args)
        print(json.dumps(result, indent=2))
        (args.out / "results_isyb_scale.json").write_text(json.dumps(result, indent=2) + "\n")
        return 0
    isyb = str(Path(sys.executable).with_name("isyb"))
    home = templateflow_home(args.data, args.out / "templateflow")
    env = dict(os.environ, ISYB_HOME=str(args.out / "isyb_home"), TEMPLATEFLOW_HOME=str(home),
               **pin_local_copies(home))
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
