"""The face-detector ensemble and "whose face" on the real full-face heads (issue 15, items 4-5).

Usage::

    python benchmarks/face_judge.py [--data DIR]
        [--work DIR] [--out DIR] [--heads NAME ...] [--templates NAME ...]
        [--methods blur noise remove]

For each full-face head of ``DATA/heads`` (pycortex S1, myconnectome 1.6 mm,
mne-sample 3 mm): the ensemble (:func:`isyb.evaluate.ensemble.ensemble_detect`,
12 views, Haar + MTCNN) on the original, then for each template and method the
defaced head (default options, through :func:`isyb.deface.checked.deface_checked`)
with: the ensemble's views with a face per detector (and MTCNN's highest
probability), the defaced face's mean distance to the subject's original face
and to the registered template's face
(:func:`isyb.evaluate.face_distance.face_distances`, template-frame mm, over the
region the defacing was allowed to change, and over its pixels where the two faces
differ by more than a voxel: the ``decisive_`` fields), the brain voxels changed (deepbet's
mask) and the largest depth step across the region's border
(:func:`isyb.viz.seams.border_step_mm`), and across its border with the brain
guard alone (``guard_edge_step_mm``). The brain mask and each registration
are computed once and cached in ``--work``, with the file names of
``face_coverage.py`` (the two scripts share a ``--work``). The MNI templates
come from ``DATA/templates`` through ``face_coverage.templateflow_home``
(recompressed copies: unless ``ISYB_TEMPLATEFLOW_PINS`` names a list, their
SHA-256 are listed and trusted). One JSON line per
run on stdout; ``OUT/results.json`` keeps them all. No render, depth map or
image of an original face is written.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import default_data
from face_coverage import FULL_FACE, TEMPLATES, templateflow_home


def _views(result) -> dict:
    """Views with a face per detector, and MTCNN's highest probability (None: no box)."""
    return {"views_with_face": {d: result.views_with_face(d) for d in result.detectors},
            "mtcnn_max_probability": max(
                (round(float(box[4]), 3) for boxes in result.hits.get("mtcnn", {}).values()
                 for box in boxes), default=None)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--work", type=Path, default=Path("face_coverage_work"))
    parser.add_argument("--out", type=Path, default=Path("face_judge_out"))
    parser.add_argument("--heads", nargs="+", default=list(FULL_FACE))
    parser.add_argument("--templates", nargs="+", default=list(TEMPLATES))
    parser.add_argument("--methods", nargs="+", default=["blur", "noise", "remove"])
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ISYB_HOME", str(args.work / "isyb_home"))
    os.environ["TEMPLATEFLOW_HOME"] = str(args.work / "templateflow")
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    templateflow_home(args.data, args.work / "templateflow")

    import numpy as np

    from isyb.deface.checked import deface_checked
    from isyb.deface.engine import DefaceOptions, align
    from isyb.evaluate.ensemble import ensemble_detect
    from isyb.evaluate.face_distance import face_distances
    from isyb.evaluate.reid import frame_for
    from isyb.head.brain import extract_brain
    from isyb.io import Volume, load_volume
    from isyb.templates.registry import resolve
    from isyb.viz.seams import border_step_mm

    rows = []
    for head in args.heads:
        volume = load_volume(args.data / "heads" / head)
        brain_file = args.work / f"{head}.brain.npy"
        if not brain_file.exists():
            np.save(brain_file, extract_brain(volume.data, volume.zooms))
        brain = np.load(brain_file)
        clock = time.perf_counter()
        original = ensemble_detect(volume.data, volume.zooms)
        row = {"head": head, "template": None, "method": "original", **_views(original),
               "views": len(original.views), "seconds": round(time.perf_counter() - clock, 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
        for name in args.templates:
            template = resolve(name)
            frame = frame_for(template)
            cache = args.work / f"{head}.{name}.alignment.pkl"
            if cache.exists():
                alignment = pickle.loads(cache.read_bytes())
            else:
                alignment = align(volume, template, brain=brain)
                cache.write_bytes(pickle.dumps(alignment))
            for method in args.methods:
                clock = time.perf_counter()
                result = deface_checked(volume, template, DefaceOptions(method=method),
                                        alignment=alignment).defacing
                defaced = Volume(result.data, volume.affine, volume.source, volume.path)
                judged = ensemble_detect(defaced.data, defaced.zooms)
                distance = face_distances(volume, defaced, result.allowed,
                                          alignment.registration.subject_to_template, frame)
                row = {"head": head, "template": name, "method": method, **_views(judged),
                       "views": len(judged.views),
                       "distance_mm": {key: (round(value, 2) if isinstance(value, float)
                                             else value)
                                       for key, value in distance.to_json().items()},
                       "brain_changed_voxels": int(((result.data != volume.data)
                                                    & brain).sum()),
                       "border_step_mm": round(border_step_mm(
                           result.data, volume.zooms, result.region, volume.data), 2),
                       "guard_edge_step_mm": round(border_step_mm(
                           result.data, volume.zooms, result.region, volume.data,
                           edge=result.guard), 2),
                       "seconds": round(time.perf_counter() - clock, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                (args.out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
