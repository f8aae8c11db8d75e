"""Benchmark ``isyb deface`` on a real 256³ 1 mm head, against nibabel I/O and quickshear.

Usage::

    python benchmarks/bench_deface.py [--repeats N] [--data DIR] [--out DIR]
                                      [--isyb-home DIR] [--method-repeats M]

What it measures, each command as its own child process:

1. ``isyb deface heads/pycortex-S1_T1w.nii.gz OUT --force`` (default method,
   blur), ``--repeats`` times after one warm-up run. The warm-up also prepares
   the default template into ``ISYB_HOME`` (a fresh folder under ``--out``
   unless ``--isyb-home`` is given), so the timed runs use a warm template
   cache. ``--method remove`` and ``--method noise`` are timed
   ``--method-repeats`` times (default 1).
2. A plain nibabel load + save of the same file (``nib.load``,
   ``np.asarray(img.dataobj)``, save as ``.nii.gz``), ``--repeats`` times: the
   floor that any tool reading and writing this file pays.
3. quickshear 1.2 (Schimke & Hale 2011) with the brain mask isyb itself uses
   (deepbet via :func:`isyb.head.brain.extract_brain`, computed once here and saved
   on the input grid), ``--repeats`` times. Mask computation is not part of
   quickshear's time; it is reported on its own.

Wall time is measured around each child; peak memory is the child's
``ru_maxrss`` from ``os.wait4`` (that child and the descendants it waited for).
A child started by fork/vfork inherits its parent's memory high-water mark
until it execs, so this script keeps itself small (no numpy, no isyb
computation) until every timed child has run; its own peak RSS at that point
is reported as the floor of the figures. The brain mask is computed in a
child too. Afterwards :func:`isyb.viz.faces.face_detected` (OpenCV's stock
Viola-Jones face detector on surface renders) is run on the original, on
quickshear's output and on isyb's output for each method. Only booleans and
box counts are kept; no render is saved.

Results are printed as a table and written to ``OUT/results.json``. The data
folder defaults to ``$ISYB_TEST_DATA``, else ``<repo>/../shared/data``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

from _timing import (
    default_data,
    detect,
    isyb_version,
    machine,
    run_child,
    script,
    source_state,
    timed,
)

SCAN = "heads/pycortex-S1_T1w.nii.gz"

NIBABEL_IO = """
import sys
import nibabel as nib
import numpy as np
img = nib.load(sys.argv[1])
data = np.asarray(img.dataobj)
img.__class__(data, img.affine, img.header).to_filename(sys.argv[2])
"""

BRAIN_MASK = """
import sys
from isyb.head.brain import extract_brain
from isyb.io import load_volume, save_mask_like
volume = load_volume(sys.argv[1])
mask = extract_brain(volume.data, volume.zooms)
save_mask_like(mask, volume, sys.argv[2])
print(f"{mask.sum() * volume.zooms.prod() / 1000:.1f} ml")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed runs of isyb (blur), nibabel and quickshear (default: 5)")
    parser.add_argument("--method-repeats", type=int, default=1,
                        help="timed runs of --method remove and noise (default: 1)")
    parser.add_argument("--data", type=Path, default=default_data(),
                        help="test data folder (default: $ISYB_TEST_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, help="results and outputs (default: a temp dir)")
    parser.add_argument("--isyb-home", type=Path,
                        help="ISYB_HOME for the runs (default: OUT/isyb_home, a cold cache "
                        "that the warm-up run fills)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.method_repeats < 1:
        parser.error("repeats must be ≥ 1")

    scan = args.data / SCAN
    if not scan.exists():
        print(f"bench_deface: {scan} not found; set ISYB_TEST_DATA or pass --data",
              file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="isyb_bench_deface_"))
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    home = args.isyb_home or out / "isyb_home"
    env = dict(os.environ, ISYB_HOME=str(home))

    info = machine()
    source = source_state()
    load_start = os.getloadavg()
    started = dt.datetime.now().astimezone()
    print(f"isyb {isyb_version()} (commit {source['commit']}"
          f"{', with uncommitted changes in src/' if source['src_modified'] else ''}); "
          f"input {scan}")
    print(f"machine: {info['nproc']} usable cores (os.cpu_count {info['cpu_count']}), "
          f"{info['cpu_model']}, {info['mem_total_gib']} GiB RAM; load average "
          f"{load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    print(f"outputs: {out}")
    print(f"ISYB_HOME={home}")

    isyb = script("isyb")
    outputs = {m: out / f"isyb_{m}.nii.gz" for m in ("blur", "remove", "noise")}
    results: dict = {}

    print("warm-up: isyb deface (prepares and caches the default template if needed)",
          flush=True)
    warm = run_child([*isyb, "deface", str(scan), str(outputs["blur"]), "--force"], env,
                     logs / "warmup.log")
    results["warmup"] = warm
    print(f"  warm-up: {warm['wall_s']:.2f} s, {warm['max_rss_mib']:.0f} MiB "
          "(the timed runs below use the warm template cache)", flush=True)

    print("isyb deface (blur, default):", flush=True)
    results["isyb_blur"] = timed(
        "isyb_blur", [*isyb, "deface", str(scan), str(outputs["blur"]), "--force"],
        args.repeats, env, logs)
    for method in ("remove", "noise"):
        print(f"isyb deface --method {method}:", flush=True)
        results[f"isyb_{method}"] = timed(
            f"isyb_{method}",
            [*isyb, "deface", str(scan), str(outputs[method]), "--force", "--method", method],
            args.method_repeats, env, logs)

    print("nibabel load + save (.nii.gz):", flush=True)
    results["nibabel_io"] = timed(
        "nibabel_io", [sys.executable, "-c", NIBABEL_IO, str(scan), str(out / "nibabel.nii.gz")],
        args.repeats, env, logs)

    print("brain mask for quickshear (isyb.head.brain.extract_brain, in a child process):",
          flush=True)
    mask_path = out / "brain_mask.nii.gz"
    results["brain_mask"] = run_child(
        [sys.executable, "-c", BRAIN_MASK, str(scan), str(mask_path)], env,
        logs / "brain_mask.log")
    print(f"  {results['brain_mask']['wall_s']:.2f} s, "
          f"{results['brain_mask']['max_rss_mib']:.0f} MiB (includes Python start-up and "
          f"loading deepbet); {(logs / 'brain_mask.log').read_text().split()[-2]} ml", flush=True)

    print("quickshear (same brain mask, default buffer 10 voxels):", flush=True)
    sheared = out / "quickshear.nii.gz"
    results["quickshear"] = timed(
        "quickshear", [*script("quickshear"), str(scan), str(mask_path), str(sheared)],
        args.repeats, env, logs)

    source_end = source_state()
    if source_end["src_sha256"] != source["src_sha256"]:
        print("WARNING: the isyb sources under src/ changed while the benchmark ran; "
              "the runs mix code versions. Rerun on a stable tree.", flush=True)
    floor_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if sys.platform == "darwin":
        floor_mib /= 1024
    results["parent_max_rss_mib"] = round(floor_mib, 1)
    print(f"this script's own peak RSS during the timed runs: {floor_mib:.0f} MiB "
          "(a floor of the peak figures)", flush=True)

    print("face detection (OpenCV Viola-Jones on surface renders; no render is saved):",
          flush=True)
    faces = {"original": detect(scan), "quickshear": detect(sheared)}
    for method, path in outputs.items():
        faces[f"isyb_{method}"] = detect(path)
    for name, found in faces.items():
        result = "FACE FOUND" if found["detected"] else "no face"
        print(f"  {name:<12} {result} ({found['yaws_with_face']}/{found['yaws']} views)")
    results["faces"] = faces

    load_end = os.getloadavg()
    io = results["nibabel_io"]["median_s"]
    rows = [("isyb deface (blur)", "isyb_blur"), ("isyb deface --method remove", "isyb_remove"),
            ("isyb deface --method noise", "isyb_noise"),
            ("nibabel load + save", "nibabel_io"), ("quickshear (mask given)", "quickshear")]
    print()
    print(f"{'command':<30}{'runs':>5}{'median s':>10}{'min s':>8}{'max s':>8}"
          f"{'x nibabel':>10}{'peak MiB':>10}  face after")
    for label, key in rows:
        r = results[key]
        face_key = key if key in faces else None
        face = "-" if face_key is None else ("yes" if faces[face_key]["detected"] else "no")
        print(f"{label:<30}{len(r['runs']):>5}{r['median_s']:>10.2f}{r['min_s']:>8.2f}"
              f"{r['max_s']:>8.2f}{r['median_s'] / io:>10.1f}{r['max_rss_mib']:>10.0f}  {face}")
    ratio = results["isyb_blur"]["median_s"] / io
    print(f"\nisyb (blur) median / nibabel median: {ratio:.1f}x")
    print(f"face on original: {'yes' if faces['original']['detected'] else 'no'}; "
          f"after quickshear: {'yes' if faces['quickshear']['detected'] else 'no'}")
    print(f"load average (1 min) at start {load_start[0]:.2f}, at end {load_end[0]:.2f}, "
          f"on {info['nproc']} cores: a start value well above 0 means other work was "
          "running and the timings are noisy")

    report = {
        "benchmark": "bench_deface",
        "date": started.isoformat(timespec="seconds"),
        "isyb": isyb_version(),
        "source": {"start": source, "end": source_end,
                   "changed_during_run": source_end["src_sha256"] != source["src_sha256"]},
        "input": str(scan),
        "isyb_home": str(home),
        "machine": info,
        "load_average": {"start": load_start, "end": load_end},
        "repeats": args.repeats,
        "method_repeats": args.method_repeats,
        "ratio_isyb_blur_to_nibabel": round(ratio, 2),
        "results": results,
    }
    json_path = out / "results.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
