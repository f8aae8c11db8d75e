"""Time the re-identification attack's distance matrices: isyb's k-d tree against scipy's default.

Run: python benchmarks/bench_reid.py [--phantoms 4] [--repeats 3] [--methods remove,blur,maskface]

The cohort is built as in ``tests/evaluate/test_reid.py``: ``--phantoms`` phantom heads
(:func:`isyb.synthetic.rescan.varied_phantom`, 2 mm, each with its own head shape and
face) aligned to the default template with their exact brain masks, one simulated re-scan
of each (:func:`isyb.synthetic.rescan.simulate_rescan`, aligned from scratch), and each
head defaced by each of ``--methods`` (default ``remove``). Their face descriptors
(:func:`isyb.evaluate.reid.face_descriptor`) are built once, untimed.

Timed: :func:`isyb.evaluate.reid.distance_matrix` of the re-scans and of each method's
defaced faces against the gallery (the surface attack: one trimmed ICP per pair, what
``isyb study``'s :func:`isyb.study.run.reidentify` computes), with the gallery tree of
:func:`isyb.evaluate.surface_match.point_tree` and with ``cKDTree``'s defaults,
alternated, ``--repeats`` times each, on one thread. Printed:
the medians of the process CPU time (s) per probe kind and tree, their ratio, and whether
the two trees gave the same matrices (a k-d tree's nearest point is exact; only an exact
tie between two gallery points could be resolved differently).
The CPU time per pair is what ``isyb study``'s re-identification costs per subject pair:
it compares every defaced face with every original, N x N fits per template.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from _timing import machine, source_state  # noqa: E402
from isyb.deface.engine import DefaceOptions, align, deface_volume, subject_masks  # noqa: E402
from isyb.evaluate import reid, surface_match  # noqa: E402
from isyb.head.register import resample_to  # noqa: E402
from isyb.io import volume_from_image  # noqa: E402
from isyb.synthetic import rescan  # noqa: E402
from isyb.templates.registry import resolve  # noqa: E402

VOXEL_MM = 2.0


def cohort(n_phantoms: int, methods: list[str]) -> dict[str, list[np.ndarray]]:
    """Gallery, re-scan and defaced-face descriptors (one list per method) of
    ``n_phantoms`` phantom heads."""
    template = resolve("default")
    frame = reid.frame_for(template)
    reference_to_template = rescan.reference_to_template(template, voxel_size=VOXEL_MM)
    rng = np.random.default_rng(2024)
    out: dict[str, list[np.ndarray]] = {kind: [] for kind in ("gallery", "rescan", *methods)}
    for k in range(n_phantoms):
        volume, brain = rescan.varied_phantom(k, reference_to_template, template.rule,
                                              voxel_size=VOXEL_MM)
        alignment = align(volume, template, brain=brain)
        to_template = alignment.registration.subject_to_template
        out["gallery"].append(reid.face_descriptor(volume, to_template, frame))
        again, motion = rescan.simulate_rescan(volume, rng)
        carried = resample_to(brain.astype(np.float32), volume.affine, again.shape,
                              again.affine, np.linalg.inv(motion)) > 0.5
        moved = align(again, template, brain=carried)
        out["rescan"].append(reid.face_descriptor(
            again, moved.registration.subject_to_template, frame))
        masks = subject_masks(volume, alignment.brain, DefaceOptions().guard_mm)
        for method in methods:
            result = deface_volume(volume, template, DefaceOptions(method=method),
                                   alignment=alignment, subject=masks)
            defaced = volume_from_image(nib.Nifti1Image(result.data.astype(np.float32),
                                                        volume.affine))
            out[method].append(reid.face_descriptor(defaced, to_template, frame))
        print(f"phantom {k + 1}/{n_phantoms} described", file=sys.stderr, flush=True)
    return out


def timed(gallery: list[np.ndarray], probes: list[np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.process_time()
    matrix = reid.distance_matrix(gallery, probes)
    return time.process_time() - start, matrix


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="remove",
                        help="comma-separated defacing methods whose faces are probes")
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    print(machine(), source_state(), flush=True)
    descriptors = cohort(args.phantoms, methods)
    trees = {"isyb": surface_match.point_tree, "scipy default": cKDTree}
    seconds: dict[tuple[str, str], list[float]] = {}
    results: dict[tuple[str, str], np.ndarray] = {}
    for _ in range(args.repeats):
        for kind in ("rescan", *methods):
            for name, build in trees.items():
                surface_match.point_tree = build
                cpu, matrix = timed(descriptors["gallery"], descriptors[kind])
                seconds.setdefault((kind, name), []).append(cpu)
                results[(kind, name)] = matrix
    pairs = args.phantoms * args.phantoms
    print(f"{'probes':8s} {'tree':14s} {'CPU s (median)':>15s} {'per pair':>9s} {'runs':>30s}")
    for (kind, name), values in seconds.items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        print(f"{kind:8s} {name:14s} {statistics.median(values):15.2f} "
              f"{statistics.median(values) / pairs:9.3f} {runs:>30s}")
    for kind in ("rescan", *methods):
        ours = statistics.median(seconds[(kind, "isyb")])
        theirs = statistics.median(seconds[(kind, "scipy default")])
        same = np.array_equal(results[(kind, "isyb")], results[(kind, "scipy default")])
        print(f"{kind}: isyb / scipy default = {ours / theirs:.2f}; identical matrices: {same}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
