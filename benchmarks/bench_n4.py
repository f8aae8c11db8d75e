"""N4 in numpy (``isyb.head.n4``) against ANTsPy's N4, on every real head of the test data.

Usage::

    python benchmarks/bench_n4.py [--repeats 3] [--data DIR]

For each head (T1w or T2w of ``DIR/heads``): deepbet's brain, its bounding box
with 8 voxels of margin padded to 150 mm per axis (as ``isyb.head.tissue._n4_field``
prepares N4's input), then ANTs' N4 (``ants.n4_bias_field_correction``, ITK on one
thread) and isyb's N4, both at MRIQC's settings, ``--repeats`` times each,
alternating. Prints one line per head: the median CPU seconds of each (process
time, so the machine's load barely matters), their ratio, the largest relative
difference of the two fields inside the brain, and the share of brain voxels
whose 3-class Atropos label (``isyb.head.atropos``, on the image corrected by
each field) is the same. Ends with the sums over the heads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

from _timing import default_data, machine, source_state
from isyb.head import tissue
from isyb.head.ants import start_itk
from isyb.head.brain import extract_brain
from isyb.head.morphology import bounding_box
from isyb.head.n4 import n4_bias_field
from isyb.io import load_volume


def _inputs(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, ...]]:
    """N4's image, mask and weight (the padded brain box) and spacing, as _n4_field's."""
    volume = load_volume(path)
    brain = extract_brain(volume.data, volume.zooms)
    box = bounding_box(brain, pad=8)
    image, mask, weight, _ = tissue.n4_domain(np.asarray(volume.data[box], dtype=np.float32),
                                              brain[box].astype(np.float32), volume.zooms)
    return image, mask.astype(np.float32), weight, tuple(float(z) for z in volume.zooms)


def _ants_n4(image: np.ndarray, mask: np.ndarray, weight: np.ndarray,
             spacing: tuple[float, ...]) -> np.ndarray:
    ants = start_itk()
    return ants.n4_bias_field_correction(
        ants.from_numpy(image, spacing=spacing), mask=ants.from_numpy(mask, spacing=spacing),
        weight_mask=ants.from_numpy(weight, spacing=spacing), shrink_factor=4,
        return_bias_field=True, convergence={"iters": [50, 50, 50, 50], "tol": 1e-7}).numpy()


def _labels(image: np.ndarray, field: np.ndarray, brain: np.ndarray, contrast: str,
            spacing: tuple[float, ...]) -> np.ndarray:
    corrected = image / np.maximum(field, 1e-6)
    means = [float(f"{m:.6g}") for m in tissue.fit_mixture(corrected[brain]).means]
    posteriors = tissue._segment(corrected, brain, np.asarray(spacing), means, mrf=0.01,
                                 iterations=5, engine="numpy")
    return np.argmax(posteriors, axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=default_data())
    args = parser.parse_args(argv)
    print(machine(), source_state())
    heads = sorted(p for p in (args.data / "heads").iterdir()
                   if ("T1w" in p.name or "T2w" in p.name) and "_brain" not in p.name)
    totals = [0.0, 0.0]
    for path in heads:
        image, mask, weight, spacing = _inputs(path)
        seconds: dict[str, list[float]] = {"ants": [], "numpy": []}
        fields = {}
        for _ in range(args.repeats):
            for name, run in (("ants", _ants_n4), ("numpy", n4_bias_field)):
                start = time.process_time()
                fields[name] = run(image, mask, weight, spacing)
                seconds[name].append(time.process_time() - start)
        brain = weight > 0
        difference = float(np.abs(fields["numpy"] / fields["ants"] - 1)[brain].max())
        contrast = "T2w" if "T2w" in path.name else "T1w"
        same = float(np.mean(_labels(image, fields["numpy"], brain, contrast, spacing)[brain]
                             == _labels(image, fields["ants"], brain, contrast, spacing)[brain]))
        ants_s, numpy_s = (statistics.median(seconds[k]) for k in ("ants", "numpy"))
        totals[0] += ants_s
        totals[1] += numpy_s
        print(f"{path.name:36s} {image.shape} ANTs {ants_s:6.2f} CPU s, numpy {numpy_s:5.2f} "
              f"({ants_s / numpy_s:4.1f}x); field max rel diff {difference:.1e}; "
              f"same label {100 * same:.4f} %")
    print(f"all heads: ANTs {totals[0]:.1f} CPU s, numpy {totals[1]:.1f} "
          f"({totals[0] / totals[1]:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
