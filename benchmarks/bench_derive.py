"""Benchmark isyb derive: the numerics, the preprocessing, the registrations, one subject.

Usage::

    python benchmarks/bench_derive.py [--repeats 3] [--data DIR] [--quick]
    python benchmarks/bench_derive.py --anatomy [--data DIR]

Times, in this process (no file reading, no start-up, except the last row):

* ALFF/fALFF (isyb, ccs and dparsf conventions), the ccs and dparsf
  band-passes and ReHo (27 neighbours) of a 61×73×61×240 run (random
  Gaussian series, TR 2 s, in a box mask of 51×63×51 voxels). Targets:
  ALFF/fALFF ≤ 10 s, ReHo ≤ 30 s on 2 cores.
* CBF of the real pCASL run of ``DATA/asl`` and FA/MD of the real DWI of
  ``DATA/dwi`` (dipy, OLS).
* rfMRI preprocessing (``prepare_bold`` + ``clean_bold``: dummies, despike,
  slice timing, motion, scaling, 24 + WM + CSF regression, trends) of a
  64×64×36×240 phantom run with known motion (no real BOLD of that size is
  available offline).
* SyN normalisation of the real pycortex T1w (1 mm, its deepbet brain) to
  the 2 mm symmetric ICBM 2009a (a fresh work folder each time, so nothing
  is reused), and ``to_template`` of the 64×64×36×240 run into it.
* The whole participant level of ``isyb derive`` (separate process, SyN) for
  one subject of the extended demo (T1w, 46×54×37×125 BOLD, DWI, pCASL).

* ``--anatomy`` (only these rows, once each): anatomy without FreeSurfer on
  the real 1 mm colin27 T1w of ``DATA/heads`` with its reference brain: the
  three-tissue segmentation (N4 + Atropos), total GMV, and DiReCT cortical
  thickness (:mod:`isyb.derive.morphometry`) of the top 40 mm of the brain
  (the whole 1 mm brain takes well over 10 minutes on 2 shared cores), with
  the mean CT and GMV found. Target: CT and GMV <= 60 s on 2 cores.

Prints the median and the range of ``--repeats`` runs of each (``--quick``:
the subject row once).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from _timing import default_data

TARGETS_S = {"alff_falff": 10.0, "reho": 30.0, "cortical thickness (DiReCT), top 40 mm": 60.0,
             "GM volume": 60.0}


def timed(function, repeats: int) -> list[float]:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        walls.append(time.perf_counter() - start)
    return walls


def main(argv: list[str] | None = None) -> int:
    from isyb.derive.cbf import asl_cbf
    from isyb.derive.conventions import bandpass, convention_alff_falff
    from isyb.derive.dti import fa_md, read_gradients
    from isyb.derive.rfmri import alff_falff, reho
    from isyb.qc.bold import bold_brain_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--quick", action="store_true",
                        help="time the end-to-end subject once")
    parser.add_argument("--anatomy", action="store_true",
                        help="time only CT and GMV on a real 1 mm head")
    args = parser.parse_args(argv)
    if args.anatomy:
        return anatomy_rows(args.data)

    series = np.random.default_rng(0).normal(size=(61, 73, 61, 240)).astype(np.float32)
    mask = np.zeros(series.shape[:3], dtype=bool)
    mask[5:-5, 5:-5, 5:-5] = True
    asl = args.data / "asl" / "perf" / "sub-01_asl"
    asl_series = np.asarray(nib.load(f"{asl}.nii.gz").dataobj, dtype=np.float64)
    types = Path(f"{asl}context.tsv").read_text().split()[1:]
    metadata = json.loads(Path(f"{asl}.json").read_text())
    dwi = args.data / "dwi" / "DWI_dir80_AP"
    dwi_series = np.asarray(nib.load(f"{dwi}.nii.gz").dataobj, dtype=np.float64)
    bvals, bvecs = read_gradients(Path(f"{dwi}.bval"), Path(f"{dwi}.bvec"),
                                  dwi_series.shape[3])
    dwi_mask = bold_brain_mask(dwi_series[..., bvals <= 50].mean(axis=-1))

    jobs = {
        "alff_falff": lambda: alff_falff(series, 2.0, mask=mask),
        "alff_falff ccs": lambda: convention_alff_falff(series, 2.0, "ccs", mask=mask),
        "alff_falff dparsf": lambda: convention_alff_falff(series, 2.0, "dparsf", mask=mask),
        "bandpass ccs (3dFourier)": lambda: bandpass(series, 2.0, "ccs", mask=mask),
        "bandpass dparsf (y_IdealFilter)": lambda: bandpass(series, 2.0, "dparsf", mask=mask),
        "reho": lambda: reho(series, mask=mask),
        "cbf (real pCASL 64x57x16x110)": lambda: asl_cbf(asl_series, types, metadata),
        "fa_md (real DWI 72x72x39x21)": lambda: fa_md(dwi_series, bvals, bvecs, mask=dwi_mask),
        **registration_jobs(args.data),
    }
    print(f"{'metric':<34}{'median s':>10}{'min s':>8}{'max s':>8}{'target s':>10}")
    for name, job in jobs.items():
        walls = timed(job, args.repeats)
        target = TARGETS_S.get(name)
        print(f"{name:<34}{statistics.median(walls):>10.2f}{min(walls):>8.2f}"
              f"{max(walls):>8.2f}{'' if target is None else f'{target:.0f}':>10}")
    walls = timed(subject_job(), 1 if args.quick else args.repeats)
    print(f"{'derive participant, 1 demo subject':<34}{statistics.median(walls):>10.2f}"
          f"{min(walls):>8.2f}{max(walls):>8.2f}")
    return 0


def _top_slab(labels: np.ndarray, mm: int) -> np.ndarray:
    """The labels of the top ``mm`` voxels (1 mm) of the brain, 0 below."""
    top = int(np.argwhere(labels > 0)[:, 2].max())
    slab = labels.copy()
    slab[..., : top - mm] = 0
    return slab


def anatomy_rows(data: Path) -> int:
    """Segmentation, GMV and DiReCT CT (top 40 mm) of colin27 (1 mm), once each, with the
    values found."""
    from isyb.derive.morphometry import cortical_thickness, gm_volumes, mean_thickness
    from isyb.head.tissue import segment_tissues

    heads = data / "heads"
    t1w = nib.as_closest_canonical(nib.load(str(heads / "colin27_T1w.nii.gz")))
    brain = nib.as_closest_canonical(nib.load(str(heads / "colin27_brain.nii.gz")))
    image = np.asarray(t1w.dataobj, dtype=np.float32)
    zooms = t1w.header.get_zooms()[:3]
    result: dict = {}
    jobs = {
        "segmentation (CSF/GM/WM)": lambda: result.update(
            labels=segment_tissues(image, np.asarray(brain.dataobj) > 0, zooms)),
        "GM volume": lambda: result.update(gmv=gm_volumes(result["labels"], zooms)["total"]),
        "cortical thickness (DiReCT), top 40 mm": lambda: result.update(
            slab=_top_slab(result["labels"], 40),
            ct=cortical_thickness(_top_slab(result["labels"], 40), zooms)),
    }
    print(f"{'colin27 1 mm':<34}{'s':>10}{'target s':>10}")
    for name, job in jobs.items():
        wall = timed(job, 1)[0]
        target = TARGETS_S.get(name)
        print(f"{name:<34}{wall:>10.2f}{'' if target is None else f'{target:.0f}':>10}")
    print(f"mean CT {mean_thickness(result['ct'], result['slab']):.2f} mm (adult 2.3-2.8), "
          f"total GMV {result['gmv']:.0f} ml (adult 500-800)")
    return 0


def registration_jobs(data: Path) -> dict:
    """Preprocessing, SyN normalisation and to_template jobs (see the module docstring)."""
    import tempfile

    from isyb.derive.normalize import normalization_template, normalize, to_template
    from isyb.derive.preprocess import clean_bold, prepare_bold
    from isyb.head.brain import extract_brain
    from isyb.io import load_volume
    from isyb.synthetic.epi import phantom_bold

    series, _ = phantom_bold((64, 64, 36), (3.5, 3.5, 3.5), 240, seed=1)
    timing = [(k % 2 * 18 + k // 2) * 2.0 / 36 for k in range(36)]
    zooms = (3.5, 3.5, 3.5)
    bold_affine = np.diag([3.5, 3.5, 3.5, 1.0])

    def preprocess():
        prepared = prepare_bold(series, zooms, 2.0, slice_timing=timing)
        return clean_bold(prepared)

    head = load_volume(data / "heads" / "pycortex-S1_T1w.nii.gz")
    brain = extract_brain(head.data, head.zooms)
    template = normalization_template()
    work = Path(tempfile.mkdtemp(prefix="isyb_bench_derive_"))
    done = {}

    def syn():
        target = work / f"syn{len(done)}"
        done[target] = normalize(head.data, head.affine, brain, template, target, kind="SyN")

    def warp():
        if not done:
            syn()
        to_template(series, bold_affine, next(iter(done.values())), template)

    return {"preprocess 64x64x36x240": preprocess,
            "SyN normalisation (1 mm T1w)": syn,
            "to_template 64x64x36x240 -> 2 mm": warp}


def subject_job():
    """``isyb derive`` participant level for one extended-demo subject, as a child process.

    The demo is written once; each call derives into a fresh output folder.
    """
    import subprocess
    import sys
    import tempfile

    from isyb.synthetic.demo import build_demo_dataset

    root = Path(tempfile.mkdtemp(prefix="isyb_bench_subject_"))
    bids = build_demo_dataset(root / "bids", n_subjects=1,
                              modalities=("anat", "func", "dwi", "perf"))
    runs = []

    def job() -> None:
        runs.append(root / f"out{len(runs)}")
        subprocess.run([sys.executable, "-m", "isyb.cli", "derive", str(bids), str(runs[-1]),
                        "participant", "--quiet"], check=True, capture_output=True)

    return job


if __name__ == "__main__":
    raise SystemExit(main())
