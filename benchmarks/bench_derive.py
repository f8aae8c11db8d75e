"""Benchmark the derived-metric numerics that exist so far (isyb derive is in progress).

Usage::

    python benchmarks/bench_derive.py [--repeats 3] [--data DIR]

Times, in this process (the numerics only: no file reading, no start-up):

* ALFF/fALFF and ReHo (27 neighbours) of a 61×73×61×240 run (random
  Gaussian series, TR 2 s, in a box mask of 51×63×51 voxels). Targets:
  ALFF/fALFF ≤ 10 s, ReHo ≤ 30 s on 2 cores.
* CBF of the real pCASL run of ``DATA/asl`` and FA/MD of the real DWI of
  ``DATA/dwi`` (dipy, OLS).

Prints the median and the range of ``--repeats`` runs of each.
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


def timed(function, repeats: int) -> list[float]:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        walls.append(time.perf_counter() - start)
    return walls


def main(argv: list[str] | None = None) -> int:
    from isyb.derive.cbf import asl_cbf
    from isyb.derive.dti import fa_md, read_gradients
    from isyb.derive.rfmri import alff_falff, reho
    from isyb.qc.bold import bold_brain_mask

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=default_data())
    args = parser.parse_args(argv)

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
        "reho": lambda: reho(series, mask=mask),
        "cbf (real pCASL 64x57x16x110)": lambda: asl_cbf(asl_series, types, metadata),
        "fa_md (real DWI 72x72x39x21)": lambda: fa_md(dwi_series, bvals, bvecs, mask=dwi_mask),
    }
    print(f"{'metric':<34}{'median s':>10}{'min s':>8}{'max s':>8}{'target s':>10}")
    for name, job in jobs.items():
        walls = timed(job, args.repeats)
        target = TARGETS_S.get(name)
        print(f"{name:<34}{statistics.median(walls):>10.2f}{min(walls):>8.2f}"
              f"{max(walls):>8.2f}{'' if target is None else f'{target:.0f}':>10}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
