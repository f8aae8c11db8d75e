"""The face-detector ensemble and "whose face" on the real full-face heads (issue 15, items 4-5).

Usage::

    python benchmarks/face_judge.py [--data DIR] [--out DIR] [--heads 3]
                                    [--methods blur,noise,remove] [--template default]

For each of the first ``--heads`` full-face heads of ``DATA/heads`` (pycortex
S1, myconnectome 1.6 mm, mne-sample 3 mm): the ensemble
(:func:`isyb.evaluate.ensemble.ensemble_detect`, 12 views, Haar + MTCNN) on the
original, then for each method the defaced head (default options, the
template's registration computed once) with the ensemble's views with a face
per detector, and the defaced face's distance to the subject's original face
and to the registered template's face (:func:`isyb.evaluate.face_distance.face_distances`,
mm, over the applied face region). ``OUT/results.json`` keeps the numbers only;
no render, depth map or image of an original face is written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

FULL_FACE = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("ISYB_TEST_DATA", "../shared/data"))
    parser.add_argument("--out", default="face_judge_out")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--methods", default="blur,noise,remove")
    parser.add_argument("--template", default="default")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from isyb.deface.engine import DefaceOptions, align, deface_volume
    from isyb.evaluate.ensemble import ensemble_detect
    from isyb.evaluate.face_distance import face_distances
    from isyb.evaluate.reid import frame_for
    from isyb.io import Volume, load_volume
    from isyb.templates.registry import resolve

    template = resolve(args.template)
    frame = frame_for(template)
    results = []
    for name in FULL_FACE[: args.heads]:
        clock = time.perf_counter()
        volume = load_volume(Path(args.data) / "heads" / name)
        original = ensemble_detect(volume.data, volume.zooms)
        row = {"head": name, "template": template.name,
               "original": {d: original.views_with_face(d) for d in original.detectors},
               "views": len(original.views), "methods": {}}
        alignment = align(volume, template)
        for method in args.methods.split(","):
            result = deface_volume(volume, template, DefaceOptions(method=method),
                                   alignment=alignment)
            defaced = Volume(result.data, volume.affine, volume.source, volume.path)
            judged = ensemble_detect(defaced.data, defaced.zooms)
            distance = face_distances(volume, defaced, result.allowed,
                                      alignment.registration.subject_to_template, frame)
            row["methods"][method] = {
                "views_with_face": {d: judged.views_with_face(d) for d in judged.detectors},
                "mtcnn_max_probability": max(
                    (box[4] for boxes in judged.hits.get("mtcnn", {}).values() for box in boxes),
                    default=None),
                "distance": distance.to_json(),
            }
            print(f"{name} {method}: {row['methods'][method]}", flush=True)
        row["seconds"] = round(time.perf_counter() - clock, 1)
        print(f"{name} original: {row['original']} of {row['views']} views "
              f"({row['seconds']} s)", flush=True)
        results.append(row)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
