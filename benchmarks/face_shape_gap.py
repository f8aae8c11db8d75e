"""How far a subject's face reaches beyond a registered template's face: the size of the
template-shape effect that ``isyb study --design isyb`` can see (issue 13).

Simulation and template geometry only: no statement about real populations.

With a template that has no CAPIIO matrix, ``--design isyb`` obscures the subject's own
skin layer only inside the registered template's face tissue grown by the design's margin
(6 mm, mask_face's ROI enlargement; :func:`isyb.templates.face.within_template_face`). A
subject's skin point whose signed distance to the template's face tissue exceeds the margin
is left as it is; that, and nothing else, lets the template's face shape change NMI. So
this script measures, per subject x template pair, the distances of the subject's face skin
(skin-surface voxels of the subject's evaluation region, the voxels NMI is computed over)
to the template's face (:meth:`isyb.templates.registry.Template.face`), after isyb's own
registration, and the fractions beyond 3, 6 and 8 mm.

Pairs:

* ``sim``: the simulation's two populations (:mod:`isyb.study.simulate`, 3 mm subjects of
  the default head size, 2 mm templates): faces as they come (``ref``) and reshaped by the
  linear part of ``CAPIIO_to_CN200.mat`` squared (``cn200``, strength 2, the simulation's
  default);
* ``rel``: the same, reshaped instead by CN200 *relative to MNI152*: the linear part of
  ``CAPIIO_to_CN200.mat`` times the inverse of mask_face's ``CAPIIO_to_mni152.mat``, once
  (both map the same atlas, so this is CN200's shape in MNI152's terms, the comparison the
  descriptor made);
* ``mni``: the two real MNI152 heads (``MNI152NLin2009cAsym`` as the subject of
  ``MNI152NLin6Asym`` and the reverse, 1 mm), each also against itself.

It also gives the reshapings' own displacement of the reference phantom's face skin (mm,
before any registration), the number behind "moves the face surface by up to about 8 mm".

A box-shaped ROI, like mask_face's landmark box, that contains the template's face tissue
grown by the margin contains the shell measured here, so it leaves out at most the skin the
shell leaves out: these fractions bound what a box could see.

Run: ``python benchmarks/face_shape_gap.py [--data DIR] [--out DIR]`` (prints JSON and
writes ``face_shape_gap.json``; about 1-2 CPU min).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

MARGINS_MM = (3.0, 6.0, 8.0)


def default_data() -> Path:
    env = os.environ.get("ISYB_TEST_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def reach_beyond(volume, brain: np.ndarray, template) -> dict:
    """Signed distances (template mm) of ``volume``'s face skin to ``template``'s face tissue."""
    from isyb.deface.engine import align, subject_masks
    from isyb.evaluate.anonymization import evaluation_region
    from isyb.head.morphology import skin_surface_in

    to_template = align(volume, template, brain=brain).registration.subject_to_template
    masks = subject_masks(volume, brain, 10.0)
    skin = skin_surface_in(masks.head, evaluation_region(brain, volume.affine, guard=masks.guard))
    ijk = np.argwhere(skin).astype(float)
    points = ijk @ (to_template @ volume.affine)[:3, :3].T + (to_template @ volume.affine)[:3, 3]
    face = template.face()
    back = np.linalg.inv(face.affine)
    coords = (points @ back[:3, :3].T + back[:3, 3]).T
    distance = ndimage.map_coordinates(face.field.astype(np.float32), coords, order=1,
                                       mode="constant", cval=np.nan)
    known = distance[np.isfinite(distance)]
    return {"skin_voxels": int(skin.sum()), "outside_template_grid": int((~np.isfinite(
        distance)).sum()),
            "median_mm": round(float(np.median(known)), 2),
            "p90_mm": round(float(np.percentile(known, 90)), 2),
            "p99_mm": round(float(np.percentile(known, 99)), 2),
            "max_mm": round(float(known.max()), 2),
            **{f"beyond_{m:g}mm": round(float((known > m).mean()), 4) for m in MARGINS_MM}}


def displacement(linear: np.ndarray, voxel_mm: float = 2.0) -> dict:
    """How far the face-only reshaping by ``linear`` moves the reference phantom's face skin."""
    from isyb.evaluate.anonymization import evaluation_region
    from isyb.head.morphology import head_mask, skin_surface_in, skin_threshold
    from isyb.study.simulate import FOV_CENTRE_MM, FOV_MM, face_weight
    from isyb.synthetic.phantom import make_phantom

    phantom = make_phantom(voxel_size=voxel_mm, fov_mm=FOV_MM, fov_center_mm=FOV_CENTRE_MM,
                           noise_sd=0.0)
    brain = phantom.brain_mask
    head = head_mask(phantom.image, skin_threshold(phantom.image))
    skin = skin_surface_in(head, evaluation_region(brain, phantom.affine))
    weight, anchor = face_weight(phantom.image.shape, phantom.affine, brain)
    ijk = np.argwhere(skin)
    points = ijk @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]
    moved = weight[tuple(ijk.T)][:, None] * ((points - anchor) @ (linear - np.eye(3)).T)
    size = np.linalg.norm(moved, axis=1)
    return {"skin_voxels": int(skin.sum()),
            "median_mm": round(float(np.median(size)), 2),
            "p90_mm": round(float(np.percentile(size, 90)), 2),
            "max_mm": round(float(size.max()), 2),
            "mean_abs_per_axis_mm": [round(float(v), 2) for v in np.abs(moved).mean(axis=0)],
            **{f"over_{m:g}mm": round(float((size > m).mean()), 4) for m in MARGINS_MM}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="face-gap-")))
    args = parser.parse_args()
    os.environ.setdefault("ISYB_HOME", str(args.out / "isyb_home"))
    from bench_study import pin_local_copies, templateflow_home

    os.environ["TEMPLATEFLOW_HOME"] = str(templateflow_home(args.data, args.out / "tf"))
    os.environ.update(pin_local_copies(Path(os.environ["TEMPLATEFLOW_HOME"])))
    from isyb.io import Volume
    from isyb.study.simulate import (
        build_templates,
        load_fsl_matrix,
        matrix_power,
        phantom_head,
    )
    from isyb.templates.registry import resolve

    cn200 = load_fsl_matrix(args.data / "transforms" / "CAPIIO_to_CN200.mat")
    mni = load_fsl_matrix(args.data / "transforms" / "mask_face" / "CAPIIO_to_mni152.mat")
    relative = cn200 @ np.linalg.inv(mni)
    linears = {"sim": matrix_power(cn200, 2.0), "rel": relative[:3, :3]}
    result: dict = {"linear": {k: np.round(v, 4).tolist() for k, v in linears.items()},
                    "displacement_of_the_reference_face": {}, "pairs": {}}
    for name, linear in linears.items():
        result["displacement_of_the_reference_face"][name] = displacement(linear)
        # a strength-1 "population" with this linear: build_templates's strength is a power
        paths = build_templates(args.out / f"tpl_{name}", linear, strength=1.0)
        templates = {pop: resolve(str(path)) for pop, path in paths.items()}
        for population in ("ref", "cn200"):
            image, affine, brain = phantom_head(strength=0.0 if population == "ref" else 1.0,
                                                linear=linear, voxel_mm=3.0, seed=11)
            volume = Volume(image.astype(np.float32), affine, None, None)
            for tpl, template in templates.items():
                key = f"{name}: subject {population}, template {tpl}"
                result["pairs"][key] = reach_beyond(volume, brain, template)
                print(key, result["pairs"][key], flush=True)
    real = {name: resolve(name) for name in ("MNI152NLin6Asym", "MNI152NLin2009cAsym")}
    for subject_name, subject in real.items():
        head, brain = subject.load()
        volume = Volume(head.data.astype(np.float32), head.affine, None, None)
        for tpl, template in real.items():
            key = f"mni: subject {subject_name}, template {tpl}"
            result["pairs"][key] = reach_beyond(volume, brain, template)
            print(key, result["pairs"][key], flush=True)
    (args.out / "face_shape_gap.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
