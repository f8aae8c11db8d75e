"""Exact distance transforms (``isyb.head.morphology.distance_mm``) against scipy's.

Usage::

    python benchmarks/bench_distance.py [--repeats 5] [--data DIR]

For each real head of ``DIR/heads``: its solid head mask (``head_mask`` at the
skin threshold), then the distance transform of the head and of the air around
it, by ``scipy.ndimage.distance_transform_edt`` and by ``distance_mm``, at the
head's own voxel sizes, ``--repeats`` times each, alternating. Prints per head
the path ``distance_mm`` took (``edt``: seung-lab's transform where its float32
arithmetic is exact; ``scipy``: scipy's own, for the other voxel sizes), the
median CPU seconds of scipy and of ``distance_mm`` (both directions together),
their ratio, and the largest difference of the two results in mm (0: the same
bits). Ends with the sums.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from _timing import default_data, machine, source_state
from isyb.head.morphology import _integer_spacing, distance_mm, head_mask, skin_threshold
from isyb.io import load_volume


def _cpu(function, *args) -> tuple[float, list[np.ndarray]]:
    start = time.process_time()
    results = [function(*arg) for arg in args]
    return time.process_time() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", type=Path, default=default_data())
    args = parser.parse_args()
    print(machine(), source_state())
    heads = sorted(p for p in (args.data / "heads").iterdir()
                   if "brain" not in p.name and p.name.endswith((".nii.gz", ".mgz")))
    totals = [0.0, 0.0]
    print(f"{'head':<38} {'grid':>13} {'path':>5} {'scipy s':>8} {'isyb s':>7} {'x':>5} "
          f"{'max diff mm':>11}")
    for path in heads:
        volume = load_volume(path)
        zooms = np.asarray(volume.zooms, dtype=float)
        head = head_mask(volume.data, skin_threshold(volume.data))
        inputs = [(head, zooms), (~head, zooms)]
        scipy_s, isyb_s = [], []
        for _ in range(args.repeats):
            seconds, expected = _cpu(lambda m, z: ndimage.distance_transform_edt(m, sampling=z),
                                     *inputs)
            scipy_s.append(seconds)
            seconds, found = _cpu(distance_mm, *inputs)
            isyb_s.append(seconds)
        gap = max(float(np.abs(a - b).max()) for a, b in zip(expected, found, strict=True))
        route = "edt" if _integer_spacing(zooms, head.shape) is not None else "scipy"
        a, b = statistics.median(scipy_s), statistics.median(isyb_s)
        totals[0] += a
        totals[1] += b
        grid = "x".join(str(n) for n in head.shape)
        print(f"{path.name:<38} {grid:>13} {route:>5} {a:8.3f} {b:7.3f} {a / b:5.1f} {gap:11.1e}")
    print(f"{'all':<38} {'':>13} {'':>5} {totals[0]:8.3f} {totals[1]:7.3f} "
          f"{totals[0] / totals[1]:5.1f}")


if __name__ == "__main__":
    main()
