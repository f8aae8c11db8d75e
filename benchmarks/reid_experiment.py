"""Re-identification experiment: rank-1 of re-scans and of defaced faces against a gallery.

Usage::

    python benchmarks/reid_experiment.py [--data DIR] [--out DIR] [--isyb-home DIR]
                                         [--phantoms 6] [--no-derived] [--methods blur,remove,noise]
                                         [--voxel 2.0] [--seed 0] [--fast]

The cohort (see :mod:`isyb.evaluate.reid` for the attack):

* the three full-face real heads of ``DATA/heads`` (pycortex S1, myconnectome
  1.6 mm, mne-sample 3 mm);
* one *derived* subject per real head (``--no-derived`` leaves them out): the
  head reshaped by the linear part of ``DATA/transforms/CAPIIO_to_CN200.mat``
  (about the head's centre; x +4.6 %, y -3.0 %, z -7.9 %), then given its own
  face by :func:`isyb.evaluate.rescan.vary_face` (3 mm, 10 mm). The reshaping
  alone would not make another person: the affine registration to the
  template undoes it, and the two would have the same face in the template
  frame. It makes the derived subject's *head* differ from its source's, as
  between populations, so that only the face can tell them apart;
* ``--phantoms`` phantoms (``isyb.evaluate.rescan.varied_phantom``, at
  ``--voxel`` mm), each with its own head shape (±8 % per axis) and face.

For every subject: the gallery entry is its scan aligned to the default
template (deepbet brain mask + affine registration, :func:`isyb.deface.engine.align`).
Probes: a simulated re-scan (:func:`isyb.evaluate.rescan.rescan`), aligned the
same way from scratch; and, per defacing method, the defaced scan
(:func:`isyb.deface.engine.deface_volume`, default template and options),
registered to the template again by the attacker. The defaced scans reuse the
original's brain mask: defacing never changes a brain voxel (the brain guard
and the tests make sure), so deepbet would find the same brain, and this
saves a deepbet run per probe. "oracle" rows use the gallery's own
registration for the defaced scan instead, which favours the attacker.
``--fast`` also carries brain masks into re-scans and derived heads through
their known transforms (and uses the phantoms' exact masks) instead of running
deepbet on them.

A control cohort of ``--phantoms`` phantoms that differ *only* in head shape
(no face variation) measures whether head shape alone, after affine
normalisation, identifies anyone under this attack.

Two distances are reported: ``surface`` (the attack's default, trimmed ICP
surface distance) and ``detail`` (the same after a 5 mm high-pass of the
depth differences: facial detail only). Printed: N, chance, rank-1, the number
of rank-1 hits, the one-sided binomial p value, and the median distance to
the own gallery entry and to the others (mm). ``OUT/results.json`` keeps the
numbers only; no face, depth map or render of an original is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FULL_FACE = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz")


@dataclass
class Subject:
    """One cohort member: its scan, brain mask if known, and its descriptors."""

    name: str
    volume: object
    brain: np.ndarray | None = None
    descriptors: dict[str, np.ndarray] = field(default_factory=dict)


def _data_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("ISYB_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def reshape_head(volume, linear: np.ndarray):
    """``volume`` with its head reshaped by the 3x3 ``linear`` about the head's centre.

    The image is resampled (trilinear) on its own grid: the new image at world
    point ``p`` is the old one at ``c + linear^-1 (p - c)``, ``c`` being the
    centroid of the voxels above the skin threshold.
    """
    from isyb.head.register import resample_to
    from isyb.synthetic.rescan import as_volume
    from isyb.viz.render import head_centre

    centre = volume.affine[:3, :3] @ head_centre(volume.data) + volume.affine[:3, 3]
    mapping = np.eye(4)
    mapping[:3, :3] = linear
    mapping[:3, 3] = centre - linear @ centre
    data = resample_to(volume.data, volume.affine, volume.shape, volume.affine,
                       np.linalg.inv(mapping), order=1)
    return as_volume(data, volume.affine), mapping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="shared data folder (default $ISYB_TEST_DATA or "
                        "<repo>/../shared/data)")
    parser.add_argument("--out", help="output folder (default: a new temporary folder)")
    parser.add_argument("--isyb-home", help="ISYB_HOME for the prepared template")
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--no-derived", action="store_true")
    parser.add_argument("--methods", default="blur,remove,noise")
    parser.add_argument("--voxel", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fast", action="store_true",
                        help="carry brain masks through known transforms instead of deepbet")
    args = parser.parse_args(argv)

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="isyb-reid-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.isyb_home:
        os.environ["ISYB_HOME"] = args.isyb_home
    os.environ.setdefault("ISYB_HOME", str(out / "isyb_home"))
    print(f"output: {out}", flush=True)

    from isyb.deface.engine import DefaceOptions, align, deface_volume
    from isyb.evaluate import reid
    from isyb.head.register import resample_to
    from isyb.io import load_volume
    from isyb.synthetic import rescan
    from isyb.templates.registry import resolve

    data = _data_root(args.data)
    methods = [m for m in args.methods.split(",") if m]
    rng = np.random.default_rng(args.seed)
    clock = time.perf_counter()
    template = resolve("default")
    frame = reid.frame_for(template)
    timings: dict[str, float] = {"align_s": 0.0, "deface_s": 0.0, "descriptor_s": 0.0,
                                 "distance_s": 0.0}
    n_align = 0

    def aligned(volume, brain=None):
        nonlocal n_align
        start = time.perf_counter()
        result = align(volume, template, brain=brain if args.fast else None)
        timings["align_s"] += time.perf_counter() - start
        n_align += 1
        return result

    def describe(volume, s2t):
        start = time.perf_counter()
        descriptor = reid.face_descriptor(volume, s2t, frame)
        timings["descriptor_s"] += time.perf_counter() - start
        return descriptor

    def carry(mask, old, new, world_to_world):
        return resample_to(mask.astype(np.float32), old.affine, new.shape, new.affine,
                           world_to_world) > 0.5

    # --- cohort
    subjects: list[Subject] = []
    sources = []
    for name in FULL_FACE:
        path = data / "heads" / name
        if path.is_file():
            sources.append(Subject(name.split("_")[0], load_volume(path)))
        else:
            print(f"missing {path}: left out", file=sys.stderr)
    subjects.extend(sources)
    alignments = {}
    if not args.no_derived and sources:
        fsl = np.loadtxt(data / "transforms" / "CAPIIO_to_CN200.mat")
        for source in sources:
            alignments[source.name] = aligned(source.volume)
            reshaped, mapping = reshape_head(source.volume, fsl[:3, :3])
            s2t = alignments[source.name].registration.subject_to_template @ np.linalg.inv(mapping)
            brain = carry(alignments[source.name].brain, source.volume, reshaped,
                          np.linalg.inv(mapping))
            weight = rescan.face_weight(reshaped, s2t, template.rule, brain=brain)
            varied = rescan.vary_face(reshaped, weight, rng)
            subjects.append(Subject(f"{source.name}-CN200shape+face", varied, brain))
    reference = None
    if args.phantoms:
        reference = rescan.reference_to_template(template, voxel_size=args.voxel, seed=10_000)
        for k in range(args.phantoms):
            volume, brain = rescan.varied_phantom(args.seed * 1000 + k, reference, template.rule,
                                                voxel_size=args.voxel)
            subjects.append(Subject(f"phantom{k}", volume, brain))
    print(f"cohort: {len(subjects)} subjects ({', '.join(s.name for s in subjects)})", flush=True)

    # --- gallery and probes
    for subject in subjects:
        start = time.perf_counter()
        alignment = alignments.get(subject.name) or aligned(subject.volume, subject.brain)
        s2t = alignment.registration.subject_to_template
        subject.descriptors["gallery"] = describe(subject.volume, s2t)
        again, motion = rescan.simulate_rescan(subject.volume, rng)
        brain = carry(alignment.brain, subject.volume, again, np.linalg.inv(motion))
        subject.descriptors["rescan"] = describe(
            again, aligned(again, brain).registration.subject_to_template)
        for method in methods:
            tick = time.perf_counter()
            result = deface_volume(subject.volume, template, DefaceOptions(method=method),
                                   alignment=alignment)
            timings["deface_s"] += time.perf_counter() - tick
            defaced = rescan.as_volume(result.data, subject.volume.affine)
            tick = time.perf_counter()
            own = align(defaced, template, brain=alignment.brain)
            timings["align_s"] += time.perf_counter() - tick
            n_align += 1
            subject.descriptors[method] = describe(defaced, own.registration.subject_to_template)
            subject.descriptors[f"{method} (oracle)"] = describe(defaced, s2t)
        print(f"  {subject.name}: {time.perf_counter() - start:.0f} s", flush=True)

    # --- shape-only control
    control: list[Subject] = []
    if args.phantoms and reference is not None:
        for k in range(args.phantoms):
            volume, brain = rescan.varied_phantom(args.seed * 1000 + 500 + k, reference,
                                                template.rule, voxel_size=args.voxel,
                                                amplitude_mm=0.0)
            subject = Subject(f"plain{k}", volume, brain)
            alignment = aligned(volume, brain)
            subject.descriptors["gallery"] = describe(
                volume, alignment.registration.subject_to_template)
            again, motion = rescan.simulate_rescan(volume, rng)
            carried = carry(brain, volume, again, np.linalg.inv(motion))
            subject.descriptors["rescan"] = describe(
                again, aligned(again, carried).registration.subject_to_template)
            control.append(subject)

    # --- identification
    rows = []

    def evaluate(cohort: list[Subject], probe: str, label: str) -> None:
        gallery = [s.descriptors["gallery"] for s in cohort]
        probes = [s.descriptors[probe] for s in cohort]
        start = time.perf_counter()
        matrices = reid.distance_matrices(gallery, probes)  # one alignment for both attacks
        timings["distance_s"] += time.perf_counter() - start
        for attack, highpass_mm in (("surface", None), ("detail", reid.DETAIL_HIGHPASS_MM)):
            result = reid.identification(gallery, probes, distances=matrices[highpass_mm])
            matrix = result["distances"]
            off = matrix[~np.eye(len(cohort), dtype=bool)]
            rows.append({"cohort": label, "probe": probe, "attack": attack,
                         "n": result["n"], "chance": round(result["chance"], 3),
                         "rank1": round(result["rank1"], 3), "hits": round(result["hits"], 2),
                         "p_value": float(f"{result['p_value']:.3g}"),
                         "own_mm": round(float(np.median(np.diag(matrix))), 2),
                         "others_mm": round(float(np.median(off)), 2),
                         "ranks": [float(r) for r in result["ranks"]]})

    for probe in ["rescan", *methods, *(f"{m} (oracle)" for m in methods)]:
        evaluate(subjects, probe, "faces")
    real_like = [s for s in subjects if not s.name.startswith("phantom")]
    if len(real_like) >= 2:
        for probe in ["rescan", *methods]:
            evaluate(real_like, probe, "real+derived")
    if control:
        evaluate(control, "rescan", "shape-only phantoms")
    total = time.perf_counter() - clock

    header = f"{'cohort':<20} {'probe':<16} {'attack':<8} {'N':>3} {'chance':>6} {'rank1':>6} " \
             f"{'hits':>5} {'p':>8} {'own mm':>7} {'others':>7}"
    print(header)
    for row in rows:
        print(f"{row['cohort']:<20} {row['probe']:<16} {row['attack']:<8} {row['n']:>3} "
              f"{row['chance']:>6.3f} {row['rank1']:>6.3f} {row['hits']:>5.1f} "
              f"{row['p_value']:>8.2g} {row['own_mm']:>7.2f} {row['others_mm']:>7.2f}")
    timings = {key: round(value, 1) for key, value in timings.items()}
    print(f"aligned {n_align} scans; timings (s): {timings}; total {total:.0f} s")
    record = {"subjects": [s.name for s in subjects], "control": [s.name for s in control],
              "methods": methods, "fast": args.fast, "voxel_mm": args.voxel, "seed": args.seed,
              "rows": rows, "timings_s": timings, "alignments": n_align,
              "total_s": round(total, 1), "cpus": os.cpu_count()}
    (out / "results.json").write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
