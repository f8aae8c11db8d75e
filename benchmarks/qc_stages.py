"""Wall and CPU seconds of each stage of one T1w QC (``isyb.qc.anat.qc_anat``), as JSON.

Usage::

    python benchmarks/qc_stages.py IMAGE [--threads N]

Runs :func:`isyb.qc.anat.qc_anat` on IMAGE once, in this process, with the
stages wrapped by timers: reading (``load``), deepbet (``deepbet``), the
P10-P99.9 intensity clip (``clip``), N4's field (``n4``), the tissue mixture
that starts Atropos (``mixture``), Atropos (``atropos``) and everything else
(``rest``: tissue cores, every metric). The background masks (head, empty
voxels, air: :func:`isyb.qc.masks.background_masks`) are found in a second
thread while clip, N4 and Atropos run, so their CPU seconds fall in those
stages (and in ``rest`` for what is left of them after Atropos). CPU is the
process's user + system time (``time.process_time``: all its threads), so CPU
/ wall is about the number of
cores a stage kept busy; it does not depend on the machine's load the way wall
time does. ``--threads N`` first sets torch's and ITK's thread counts as a
pool worker does (:func:`isyb.executor.limit_threads`); without it the
libraries use their defaults, as ``isyb qc anat`` does. Prints one JSON line:
``{"stages": {name: [wall_s, cpu_s]}, "total": [wall_s, cpu_s], "icvs_wm": ...}``.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

#: (module, function, stage) timed, in the order they run.
STAGES = (("isyb.qc.anat", "load_volume", "load"),
          ("isyb.head.brain", "extract_brain", "deepbet"),
          ("isyb.qc.masks", "intensity_clip", "clip"),
          ("isyb.head.tissue", "_n4_field", "n4"),
          ("isyb.head.tissue", "fit_mixture", "mixture"),
          ("isyb.head.tissue", "_segment", "atropos"))


def _timer(function: Callable[..., Any], totals: list[float]) -> Callable[..., Any]:
    """``function`` adding its wall and CPU seconds to ``totals``."""

    @functools.wraps(function)
    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
        finally:
            totals[0] += time.perf_counter() - wall
            totals[1] += time.process_time() - cpu

    return timed


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("image", help="T1w head image (NIfTI)")
    parser.add_argument("--threads", type=int, help="torch and ITK threads (default: theirs)")
    args = parser.parse_args(argv)
    if args.threads:
        from isyb.executor import limit_threads

        limit_threads(args.threads)
    totals: dict[str, list[float]] = {}
    for module_name, name, stage in STAGES:
        module = importlib.import_module(module_name)
        totals[stage] = [0.0, 0.0]
        setattr(module, name, _timer(getattr(module, name), totals[stage]))
    from isyb.qc.anat import qc_anat

    wall, cpu = time.perf_counter(), time.process_time()
    qc = qc_anat(args.image)
    total = [time.perf_counter() - wall, time.process_time() - cpu]
    totals["rest"] = [total[i] - sum(t[i] for t in totals.values()) for i in (0, 1)]
    print(json.dumps({"stages": {k: [round(v, 3) for v in t] for k, t in totals.items()},
                      "total": [round(v, 3) for v in total],
                      "icvs_wm": round(qc.metrics["icvs_wm"], 5)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
