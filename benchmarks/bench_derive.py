"""Benchmark isyb derive: the numerics, the preprocessing, the registrations, one subject.

Usage::

    python benchmarks/bench_derive.py [--repeats 3] [--data DIR] [--quick]
    python benchmarks/bench_derive.py --anatomy [--heads colin27 mne-sample pycortex-S1]
        [--compare-direct] [--threads 2]

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

* ``--anatomy`` (only these rows, once each, wall and CPU seconds): anatomy
  without FreeSurfer on real 1 mm heads of ``DATA/heads`` (``--heads``:
  colin27 with its reference brain, the MNE sample's ``brain.mgz``, pycortex
  S1 with deepbet's brain): the three-tissue segmentation (N4 + Atropos),
  total GMV, the SyN normalisation and the cortex classes and GM regions it
  carries (:mod:`isyb.derive.cortex`, :mod:`isyb.derive.regions`), the GMV
  per region, and DiReCT cortical thickness of the cerebral cortex
  (:mod:`isyb.derive.morphometry`), with the mean CT and GMVs found;
  ``--whole-gm`` adds DiReCT on all three-tissue GM (isyb before the cortex
  classes); ``--compare-direct`` adds DiReCT on the same cortex with the
  settings isyb used before (:data:`PREVIOUS_DIRECT_PARAMETERS`), so before
  and after are timed in one run. ITK runs ``--threads`` threads (default 2,
  the target's cores), and glibc keeps freed memory
  (:func:`isyb.executor.keep_freed_memory`), as in the CLI and every task of
  ``isyb derive``: without it DiReCT's temporary images come from fresh
  pages the kernel zeroes, 7-9 s of system time on colin27 that the pipeline
  does not spend. Target: CT and GMV <= 60 s on 2 cores. The mean CT is
  printed as isyb reports it (voxel mean) and area-weighted (the harmonic
  mean of the voxel values: each GM voxel holds its column's thickness T, so
  a column of area a has a*T voxels and N / sum(1/T) = sum(a*T) / sum(a),
  the surface-style mean).

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

TARGETS_S = {"alff_falff": 10.0, "reho": 30.0}
#: Issue 16's target for CT and GMV of a 1 mm head on 2 cores, s: the whole chain from the
#: T1w and its brain mask (segmentation, SyN, atlas classes, DiReCT, GMV), not one step.
ANATOMY_TARGET_S = 60.0


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
                        help="time only CT and GMV on real 1 mm heads")
    parser.add_argument("--heads", nargs="+", choices=sorted(ANATOMY_HEADS),
                        default=["colin27"], help="the heads --anatomy times (default colin27)")
    parser.add_argument("--whole-gm", action="store_true",
                        help="--anatomy: also time DiReCT on all three-tissue GM")
    parser.add_argument("--compare-direct", action="store_true",
                        help="--anatomy: also time DiReCT with isyb's previous settings")
    parser.add_argument("--threads", type=int, default=2,
                        help="--anatomy: ITK threads (default 2)")
    parser.add_argument("--save", type=Path, default=None,
                        help="--anatomy: also write each head's labels and thickness map as "
                             "<head>_anatomy.npz in this folder (for inspection; not timed)")
    args = parser.parse_args(argv)
    if args.anatomy:
        from isyb.executor import keep_freed_memory, limit_threads

        keep_freed_memory()
        limit_threads(args.threads)
        print(f"ITK threads: {args.threads}")
        start = time.perf_counter()
        import ants  # noqa: F401  (a process's start-up, as bench_study.py: not a step's time)

        print(f"ANTsPy import (start-up, not counted): {time.perf_counter() - start:.2f} s")
        return anatomy_rows(args.data, args.heads, args.save, args.whole_gm,
                            args.compare_direct)

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


#: The real 1 mm heads of ``DATA/heads`` that ``--anatomy`` can time: T1w and how its brain
#: is found (a reference brain image > 0, the T1w itself > 0, or deepbet).
ANATOMY_HEADS = {
    "colin27": ("colin27_T1w.nii.gz", "colin27_brain.nii.gz"),
    "mne-sample": ("mne-sample_brain_1mm.mgz", None),
    "pycortex-S1": ("pycortex-S1_T1w.nii.gz", "deepbet"),
}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads (ITK's included), and of its
    child processes, ended (``RUSAGE_CHILDREN``) or running (``/proc``, Linux: the
    one-thread registration helper of :func:`isyb.head.ants.submit_one_itk_thread`)."""
    import os
    import resource

    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():  # ppid; utime and stime follow at 11 and 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _head(data: Path, name: str) -> tuple[np.ndarray, np.ndarray, tuple, np.ndarray]:
    """A real head's T1w (RAS, float32), its brain mask, voxel sizes (mm) and RAS affine."""
    from isyb.head.brain import extract_brain

    t1w_name, brain_name = ANATOMY_HEADS[name]
    t1w = nib.as_closest_canonical(nib.load(str(data / "heads" / t1w_name)))
    image = np.asarray(t1w.dataobj, dtype=np.float32)
    zooms = tuple(float(z) for z in t1w.header.get_zooms()[:3])
    if brain_name is None:  # a skull-stripped T1w (FreeSurfer's brain.mgz)
        brain = image > 0
    elif brain_name == "deepbet":
        brain = extract_brain(image, np.asarray(zooms))
    else:
        reference = nib.as_closest_canonical(nib.load(str(data / "heads" / brain_name)))
        brain = np.asarray(reference.dataobj) > 0
    return image, brain, zooms, t1w.affine


#: isyb's ``KellyKapowski`` settings before issue 16's speed-up (``--compare-direct``).
PREVIOUS_DIRECT_PARAMETERS = {"its": 10, "r": 0.1, "m": 1.5, "t": 10.0,
                              "maximum-number-of-invert-displacement-field-iterations": 10}


def anatomy_rows(data: Path, heads: list[str], save: Path | None = None,
                 whole_gm: bool = False, compare_direct: bool = False) -> int:
    """Segmentation, GMV, normalisation, cortex classes and DiReCT CT of real 1 mm heads,
    once each, with the wall and CPU seconds of each step and the values found."""
    print(f"{'head / step':<64}{'wall s':>9}{'CPU s':>9}{'target s':>10}")
    for name in heads:
        result, zooms = _anatomy_of(data, name, whole_gm, compare_direct)
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(save / f"{name}_anatomy.npz", zooms=np.asarray(zooms),
                                **{key: value for key, value in result.items()
                                   if isinstance(value, np.ndarray)})
    return 0


def _area_weighted(thickness: np.ndarray, labels: np.ndarray) -> float:
    """Harmonic mean (mm) of the GM voxels' thickness > 0: the area-weighted mean CT."""
    values = thickness[(labels == 2) & (thickness > 0)].astype(np.float64)
    return float(values.size / np.sum(1.0 / values))


def _anatomy_of(data: Path, name: str, whole_gm: bool = False,
                compare_direct: bool = False) -> tuple[dict, tuple]:
    """One head's rows of :func:`anatomy_rows`; its labels ("labels"), DiReCT's input
    ("cortex"), thickness maps ("ct", and "ct_all_gm" with ``whole_gm``) and GMV ("gmv"), and
    its voxel sizes."""
    import tempfile

    from isyb.derive.anatomy import segment_and_normalize
    from isyb.derive.cortex import (
        atlas_classes,
        cortical_segmentation,
        subject_classes,
        template_atlas,
    )
    from isyb.derive.morphometry import cortical_thickness, gm_volumes, mean_thickness
    from isyb.derive.normalize import normalization_template, template_points
    from isyb.derive.regions import atlas_names, regional_gm_volumes, subject_regions

    image, brain, zooms, affine = _head(data, name)
    template = normalization_template()
    work = Path(tempfile.mkdtemp(prefix="isyb_bench_anatomy_"))
    result: dict = {}

    def cortex() -> None:
        atlas = template_atlas(template)
        points = template_points(result["normalization"], template)
        classes = subject_classes(result["labels"], affine, result["normalization"], template,
                                  classes=atlas_classes(atlas), points=points)
        result["cortex"] = cortical_segmentation(result["labels"], classes)
        result["regions"] = subject_regions(result["labels"], classes, affine, points, atlas,
                                            atlas_names())

    def tissues_and_syn() -> None:
        result["labels"], result["normalization"] = segment_and_normalize(
            image, affine, brain, template, work, "SyN")

    jobs = {
        "segmentation (N4 + Atropos) | SyN (1 mm T1w -> 2 mm)": tissues_and_syn,
        "GM volume": lambda: result.update(gmv=gm_volumes(result["labels"], zooms)["total"]),
        "atlas classes and GM regions (SyN)": cortex,
        "regional GM volume": lambda: result.update(regional=regional_gm_volumes(
            result["labels"], result["regions"], zooms, atlas_names())),
        "cortical thickness (DiReCT), cerebral cortex": lambda: result.update(
            ct=cortical_thickness(result["cortex"], zooms)),
    }
    chain = set(jobs)
    if compare_direct:
        jobs["cortical thickness (DiReCT), cerebral cortex, before"] = lambda: result.update(
            ct_before=cortical_thickness(result["cortex"], zooms, PREVIOUS_DIRECT_PARAMETERS))
    if whole_gm:
        jobs["cortical thickness (DiReCT), all GM"] = lambda: result.update(
            ct_all_gm=cortical_thickness(result["labels"], zooms))
    totals = np.zeros(2)
    for step, job in jobs.items():
        cpu = _cpu_seconds()
        wall = timed(job, 1)[0]
        cpu = _cpu_seconds() - cpu
        target = TARGETS_S.get(step)
        print(f"{name + ' ' + step:<64}{wall:>9.2f}{cpu:>9.2f}"
              f"{'' if target is None else f'{target:.0f}':>10}", flush=True)
        totals += (wall, cpu) if step in chain else 0.0
    print(f"{name + ' CT and GMV from the T1w (the steps above)':<64}{totals[0]:>9.2f}"
          f"{totals[1]:>9.2f}{ANATOMY_TARGET_S:>10.0f}", flush=True)
    cortical_ml = gm_volumes(result["cortex"], zooms)["total"]
    print(f"{name}: mean CT {mean_thickness(result['ct'], result['cortex']):.3f} mm over the "
          f"cerebral cortex (adult 2.3-2.8; area-weighted "
          f"{_area_weighted(result['ct'], result['cortex']):.3f}), total GMV "
          f"{result['gmv']:.0f} ml (adult 500-800), cortical GMV {cortical_ml:.0f} ml",
          flush=True)
    if compare_direct:
        before, after = result["ct_before"], result["ct"]
        gm = (result["cortex"] == 2) & (before > 0) & (after > 0)
        print(f"{name}: before (previous settings): mean CT "
              f"{mean_thickness(before, result['cortex']):.3f} mm (area-weighted "
              f"{_area_weighted(before, result['cortex']):.3f}); after - before per GM voxel: "
              f"median {np.median(after[gm] - before[gm]):+.3f} mm, median |d| "
              f"{np.median(np.abs(after[gm] - before[gm])):.3f} mm, r = "
              f"{np.corrcoef(after[gm], before[gm])[0, 1]:.3f}", flush=True)
    regional = result["regional"]
    print(f"{name}: {len(regional)} aparc+aseg GM regions add up to "
          f"{regional['gmv_ml'].sum():.1f} ml ("
          + ", ".join(f"{k} {v:.1f}" for k, v in regional.groupby("structure")["gmv_ml"].sum()
                      .items()) + ")", flush=True)
    if whole_gm:
        print(f"{name}: mean CT {mean_thickness(result['ct_all_gm'], result['labels']):.2f} mm "
              f"over all GM", flush=True)
    return result, zooms


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
