"""The 12 renders of the face-detector ensemble: today's renderer against an earlier one.

Usage::

    python benchmarks/bench_render.py [--data DIR] [--repeats 3] [--baseline-rev REV]

Renders the ensemble's views (yaw -15/0/15 at pitch -10/0/10 with the light 30 degrees
up, and the three pitch-0 views lit from the viewer) of
``heads/pycortex-S1_T1w.nii.gz`` with :func:`isyb.viz.render.render_views`, and, in the
same run, with ``src/isyb/viz/render.py`` as it was at git revision ``REV`` (default
``b9b2684``: every ray marched from the front of the box, every view cast). Prints the
medians, their ratio, and whether every picture is identical.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, default_data

VIEWS = ([(yaw, pitch, 30.0) for pitch in (-10, 0, 10) for yaw in (-15, 0, 15)]
         + [(yaw, 0, 0.0) for yaw in (-15, 0, 15)])


def module_at(rev: str, folder: Path):
    """``isyb.viz.render`` as it was at git revision ``rev``, imported under another name."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:src/isyb/viz/render.py"],
                            check=True, capture_output=True, text=True).stdout
    path = folder / "render_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("render_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-rev", default="b9b2684")
    args = parser.parse_args()

    from isyb.io import load_volume
    from isyb.viz import render

    volume = load_volume(args.data / "heads" / "pycortex-S1_T1w.nii.gz")
    with tempfile.TemporaryDirectory() as folder:
        baseline = module_at(args.baseline_rev, Path(folder))
    runs = {f"baseline {args.baseline_rev}": baseline.render_views,
            "render_views": render.render_views}
    times: dict[str, list[float]] = {name: [] for name in runs}
    pictures = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            clock = time.perf_counter()
            pictures[name] = run(volume.data, volume.zooms, VIEWS)
            times[name].append(time.perf_counter() - clock)
    first, second = pictures.values()
    same = all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    medians = [statistics.median(values) for values in times.values()]
    for (name, values), median in zip(times.items(), medians, strict=True):
        print(f"{name}: median {median:.2f} s ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"ratio {medians[0] / medians[1]:.2f}; identical pictures: {same}")


if __name__ == "__main__":
    main()
