"""The tasks of ``isyb study``'s re-identification: one original face against every defaced
face of its template, with every distance cached on disk.

A distance is a function of the two descriptors' contents, the surface-match settings and
the fit's code. Each is kept, keyed by the SHA-256 of the probe descriptor's file, in a file
beside the gallery's descriptor (:data:`DISTANCE_CACHE`), which also holds the gallery
file's SHA-256 and :data:`DISTANCE_SETTINGS`; its ``version`` stands for the code and is
raised whenever a change of the fit changes a distance (a test pins one distance to
catch a change that forgets to). A task hashes the very bytes it reads, so a descriptor
rewritten meanwhile is never stored under another file's digest. A rerun of the study
computes no fit again, an interrupted run loses at most the columns that were running, and a
study with one subject more computes ``2N - 1`` fits per template, not ``N²``. JSON
floats round-trip exactly, so a cached column gives the same ranks as a computed one. The
file is strict JSON (RFC 8259, readable by ``jq``): a face too small to compare, whose
distance is infinite, is stored as ``null``. Entries of probes that left the study stay in the
file (a few dozen bytes each) and serve them if they come back.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isyb.evaluate.reid import distance_column
from isyb.evaluate.surface_match import (
    ICP_ITERATIONS,
    ICP_TOLERANCE_MM,
    MAX_SCALE_CHANGE,
    MIN_POINTS,
    PROBE_STRIDE,
    SPACING_MM,
    TRIM,
)
from isyb.io import write_text

#: The cache of one original face's distances, in that face's pair folder.
DISTANCE_CACHE = "reid_distances.json"
#: What a distance depends on besides the two descriptors. ``version`` counts changes
#: of the fit's code that its parameters do not show; a cache of other settings is unused.
DISTANCE_SETTINGS = {"version": 1, "spacing_mm": SPACING_MM, "trim": TRIM,
                     "probe_stride": PROBE_STRIDE, "icp_iterations": ICP_ITERATIONS,
                     "icp_tolerance_mm": ICP_TOLERANCE_MM, "max_scale_change": MAX_SCALE_CHANGE,
                     "min_points": MIN_POINTS}


@dataclass(frozen=True)
class ReidColumn:
    """A task of :func:`isyb.study.run.reidentify`: one original face (``gallery``, a
    descriptor file) against every defaced face of its template (``probes``), column
    ``index`` of ``template``'s distance matrix; ``cache`` is the gallery's
    :data:`DISTANCE_CACHE` file."""

    template: str
    index: int
    gallery: Path
    probes: tuple[Path, ...]
    cache: Path


def cached_distances(cache: Path, gallery_sha256: str) -> dict[str, float]:
    """The distances (mm) stored in ``cache`` for this gallery face and the current
    :data:`DISTANCE_SETTINGS`, keyed by the probe's SHA-256; empty when there are none or
    the file is unreadable (it is then rewritten whole)."""
    try:
        stored = json.loads(cache.read_text(encoding="utf-8"))
        if (stored["settings"] != DISTANCE_SETTINGS
                or stored["gallery_sha256"] != gallery_sha256):
            return {}
        return {str(key): math.inf if value is None else float(value)
                for key, value in stored["distances"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _read(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), data


def _array(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def reid_column(job: ReidColumn) -> tuple[str, int, np.ndarray]:
    """``(template, index, distances)``: the surface distances (mm) of ``job.probes`` to
    ``job.gallery`` (:func:`isyb.evaluate.reid.distance_column`), fitting only the probes
    whose distance is not cached, then storing them with the cached ones (atomically)."""
    gallery_sha256, gallery = _read(job.gallery)
    probes = [_read(path) for path in job.probes]
    known = cached_distances(job.cache, gallery_sha256)
    missing = [i for i, (digest, _) in enumerate(probes) if digest not in known]
    if missing:
        surface = distance_column(_array(gallery),
                                  [_array(probes[i][1]) for i in missing])[None]
        known.update({probes[i][0]: float(value)
                      for i, value in zip(missing, surface, strict=True)})
        stored = {digest: None if value == math.inf else value
                  for digest, value in sorted(known.items())}
        write_text(job.cache, json.dumps({"settings": DISTANCE_SETTINGS,
                                          "gallery_sha256": gallery_sha256,
                                          "distances": stored}, indent=1, allow_nan=False) + "\n")
    return job.template, job.index, np.array([known[digest] for digest, _ in probes])
