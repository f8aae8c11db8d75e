"""Benchmark ``isyb qc``: T1w QC of a real 256³ head and BOLD QC of a 64×64×36×240 run.

Usage::

    python benchmarks/bench_qc.py [--repeats N] [--data DIR] [--out DIR] [--no-stages]

What it measures, each command as its own child process (wall time around
the child, peak memory from ``os.wait4``; see ``_timing.py``):

1. ``isyb qc anat heads/pycortex-S1_T1w.nii.gz``: deepbet brain extraction,
   N4 + Atropos tissues, air mask and every anatomical metric. Target ≤ 20 s.
2. ``isyb qc bold RUN --tsv FRAMES``: RUN is a phantom EPI run of 64×64×36
   voxels of 3 mm and 240 volumes (TR 2 s) with known rigid motion (up to
   1.5 mm and 1.5°), written once by :func:`isyb.synthetic.epi.phantom_bold`.
   Motion estimation, realignment and every functional metric. Target ≤ 60 s.
   The motion error against the known truth is printed as a check that the
   timed work is the real one.
3. Unless ``--no-stages``: the T1w QC of 1. again, ``--repeats`` times, under
   ``qc_stages.py`` (one child process each), which times each stage
   (reading, deepbet, clip, N4, mixture, Atropos, the rest) in wall and CPU
   seconds (process user + system, all threads). CPU seconds do not depend
   on the load of a shared machine the way wall seconds do, and CPU / wall
   shows how many cores a stage kept busy.

Each command runs ``--repeats`` times (default 3) after one untimed warm-up
(file-system cache, byte-compiled modules). For scale: MRIQC documents about
42 min for one T1w plus one BOLD run. Results are printed and written to
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from _timing import default_data, isyb_version, machine, run_child, script, source_state, timed

SCAN = "heads/pycortex-S1_T1w.nii.gz"
BOLD_SHAPE, BOLD_VOX, BOLD_VOLUMES, BOLD_TR = (64, 64, 36), (3.0, 3.0, 3.0), 240, 2.0
TARGETS_S = {"qc_anat": 20.0, "qc_bold": 60.0}


def write_bold(path: Path) -> np.ndarray:
    """Write the phantom run and return its true motion parameters."""
    import nibabel as nib

    from isyb.synthetic.epi import phantom_bold

    series, params = phantom_bold(BOLD_SHAPE, BOLD_VOX, BOLD_VOLUMES, max_trans=1.5,
                                  max_rot_deg=1.5, seed=3)
    image = nib.Nifti1Image(series, np.diag([*BOLD_VOX, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = BOLD_TR
    image.to_filename(str(path))
    return params


def motion_error(frames: Path, truth: np.ndarray) -> dict:
    """RMS errors of the estimated motion against the truth (mm and degrees)."""
    import pandas as pd

    table = pd.read_csv(frames, sep="\t")
    found = table[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].to_numpy()
    steady = ~np.isnan(found).any(axis=1)
    # Parameters are relative to the first steady-state volume: compare differences.
    diff = (found[steady] - found[steady][0]) - (truth[steady] - truth[steady][0])
    return {"trans_rms_mm": float(np.sqrt(np.mean(diff[:, :3] ** 2))),
            "rot_rms_deg": float(np.degrees(np.sqrt(np.mean(diff[:, 3:] ** 2))))}


def profile_stages(scan: Path, repeats: int, env: dict[str, str],
                   logs: Path) -> dict[str, list[float]]:
    """Median wall and CPU seconds of each T1w QC stage over ``repeats`` runs of
    ``qc_stages.py`` (each a child process; its JSON line is the last of its log)."""
    runs = []
    for i in range(repeats):
        log = logs / f"qc_anat_stages_{i}.log"
        run_child([sys.executable, str(Path(__file__).with_name("qc_stages.py")), str(scan)],
                  env, log)
        record = json.loads(log.read_text().strip().splitlines()[-1])
        runs.append({**record["stages"], "total": record["total"]})
        print(f"  stages run {i + 1}/{repeats}: total {record['total'][0]:.2f} s wall, "
              f"{record['total'][1]:.2f} s CPU", flush=True)
    return {name: [round(statistics.median(run[name][j] for run in runs), 3) for j in (0, 1)]
            for name in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs each (default: 3)")
    parser.add_argument("--data", type=Path, default=default_data(),
                        help="test data folder (default: $ISYB_TEST_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, help="results and outputs (default: a temp dir)")
    parser.add_argument("--no-stages", action="store_true",
                        help="skip the per-stage profile of the T1w QC (qc_stages.py)")
    args = parser.parse_args(argv)
    scan = args.data / SCAN
    if not scan.is_file():
        raise SystemExit(f"missing {scan}: set --data or ISYB_TEST_DATA")
    out = args.out or Path(tempfile.mkdtemp(prefix="isyb-bench-qc-"))
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    info, source = machine(), source_state()
    started = dt.datetime.now().astimezone()
    print(f"isyb {isyb_version()} (commit {source['commit']}"
          f"{', modified sources' if source['src_modified'] else ''})")
    print(f"machine: {info['nproc']} usable cores, {info['cpu_model']}, "
          f"{info['mem_total_gib']} GiB RAM; load average {os.getloadavg()}")
    env = dict(os.environ)
    isyb = script("isyb")

    bold = out / "sub-bench_task-rest_bold.nii.gz"
    truth = write_bold(bold)
    frames = out / "frames.tsv"
    commands = {
        "qc_anat": [*isyb, "qc", "anat", str(scan)],
        "qc_bold": [*isyb, "qc", "bold", str(bold), "--tsv", str(frames)],
    }
    results = {}
    for label, command in commands.items():
        print(f"{' '.join(command[len(isyb):])}:", flush=True)
        warm = run_child(command, env, logs / f"{label}_warmup.log")
        print(f"  warm-up: {warm['wall_s']:.2f} s", flush=True)
        results[label] = timed(label, command, args.repeats, env, logs)
    results["qc_bold"]["motion_error"] = motion_error(frames, truth)
    stages = None if args.no_stages else profile_stages(scan, args.repeats, env, logs)
    anat_json = json.loads((logs / "qc_anat_0.log").read_text().strip().splitlines()[-1])

    print()
    print(f"{'command':<34}{'runs':>5}{'median s':>10}{'min s':>8}{'max s':>8}"
          f"{'peak MiB':>10}{'target s':>10}  met")
    for label, result in results.items():
        target = TARGETS_S[label]
        print(f"{label.replace('_', ' '):<34}{len(result['runs']):>5}{result['median_s']:>10.2f}"
              f"{result['min_s']:>8.2f}{result['max_s']:>8.2f}{result['max_rss_mib']:>10.0f}"
              f"{target:>10.0f}  {'yes' if result['median_s'] <= target else 'NO'}")
    error = results["qc_bold"]["motion_error"]
    print(f"BOLD motion vs truth: {error['trans_rms_mm']:.3f} mm, {error['rot_rms_deg']:.3f} deg "
          "RMS (checks ≤ 0.1 mm, ≤ 0.1 deg)")
    print(f"T1w metrics: isyb_snr {anat_json['isyb_snr']:.2f}, isyb_cnr "
          f"{anat_json['isyb_cnr']:.2f}, efc {anat_json['efc']:.3f}, icvs_wm "
          f"{anat_json['icvs_wm']:.3f}")
    if stages:
        print(f"T1w QC by stage, median of {args.repeats} runs of qc_stages.py "
              "(wall s, CPU s, CPU/wall):")
        for name, (wall, cpu) in stages.items():
            print(f"  {name:<10}{wall:>8.2f}{cpu:>8.2f}{cpu / wall if wall > 0 else 0.0:>8.2f}")
    print(f"load average at the end {os.getloadavg()}; MRIQC documents ~42 min per subject "
          "(T1w + BOLD)")
    record = {"started": started.isoformat(timespec="seconds"), "machine": info,
              "source": source, "source_end": source_state(), "results": results,
              "qc_anat_stages": stages,
              "bold": {"shape": [*BOLD_SHAPE, BOLD_VOLUMES], "voxel_mm": BOLD_VOX,
                       "tr_s": BOLD_TR}}
    if record["source_end"] != source:
        print("WARNING: the isyb sources changed while the benchmark ran; rerun on a stable tree")
    (out / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
