"""Own-face coverage of isyb's defacings on the real full-face heads (issue 20, issue 15 items 1-3).

Usage::

    python benchmarks/face_coverage.py [--data DIR] [--work DIR] [--heads NAME ...]
        [--templates NAME ...] [--methods blur ...] [--guard-mm 10 ...] [--keep-chin]

For every head, template, method and guard margin it defaces in process (the
brain mask from deepbet and the registration are computed once per head and
template and cached in ``--work``) and prints one JSON line with: the face
reference's changed / guard / unreached fractions, whole and per third
(:mod:`isyb.head.face_reference`), the brain voxels changed (deepbet's mask),
the largest depth step across the region's border
(:func:`isyb.viz.seams.border_step_mm`, steps the original had left out),
the face region's skin left by the brain guard (the brows and upper orbits
that the guard keeps: ``face_skin_in_guard_fraction`` of the provenance) and
the time of the defacing step itself (registration excluded). For the heads
with an independent brain mask in the data (:data:`REFERENCE_BRAINS`:
``colin27``, whose face ends at the eyes, and ``mne-sample``) it also prints
what a guard margin risks: the reference brain's voxels changed, the smallest
distance from a changed voxel to the reference brain, and how far the
reference brain reaches outside the deepbet mask the guard is built on. The
MNI templates are read from a sparse TemplateFlow home built under ``--work``
from ``DIR/templates``. No picture is written.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import default_data

FULL_FACE = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz",
             "mne-sample_T1w_3mm.mgz")
#: Heads with a brain mask that is not deepbet's (resampled to the head's grid, ``> 0.5``).
REFERENCE_BRAINS = {"colin27_T1w.nii.gz": "colin27_brain.nii.gz",
                    "mne-sample_T1w_3mm.mgz": "mne-sample_brain_1mm.mgz"}
TEMPLATES = ("default", "MNI152NLin6Asym", "MNI152NLin2009cAsym")
TEMPLATEFLOW = {"MNI152NLin6Asym": ("tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
                                    "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz"),
                "MNI152NLin2009cAsym": ("tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
                                        "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz")}


def templateflow_home(data: Path, home: Path) -> None:
    """A sparse TemplateFlow home with the two MNI templates, symlinked from ``data``.

    The test data's copies are recompressed, so they do not have TemplateFlow's
    digests and isyb refuses them (:mod:`isyb.templates.verify`). Unless
    ``ISYB_TEMPLATEFLOW_PINS`` already names a list, their SHA-256 are listed in
    ``home/pins.sha256`` and it is named: this benchmark trusts the test data.
    """
    for name, files in TEMPLATEFLOW.items():
        folder = home / f"tpl-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for filename in files:
            if not (folder / filename).exists():
                (folder / filename).symlink_to(data / "templates" / filename)
        (folder / "template_description.json").write_text(json.dumps({"Identifier": name}))
    (home / "dataset_description.json").write_text(json.dumps({"Name": "TemplateFlow subset"}))
    if not os.environ.get("ISYB_TEMPLATEFLOW_PINS"):
        pins = home / "pins.sha256"
        pins.write_text("".join(
            f"{hashlib.sha256((data / 'templates' / name).read_bytes()).hexdigest()}  {name}\n"
            for files in TEMPLATEFLOW.values() for name in files))
        os.environ["ISYB_TEMPLATEFLOW_PINS"] = str(pins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=default_data())
    parser.add_argument("--work", type=Path, default=Path("face_coverage_work"))
    parser.add_argument("--heads", nargs="+", default=list(FULL_FACE))
    parser.add_argument("--templates", nargs="+", default=list(TEMPLATES))
    parser.add_argument("--methods", nargs="+", default=["blur"])
    parser.add_argument("--guard-mm", nargs="+", type=float, default=[10.0])
    parser.add_argument("--keep-chin", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ISYB_HOME", str(args.work / "isyb_home"))
    os.environ["TEMPLATEFLOW_HOME"] = str(args.work / "templateflow")
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    templateflow_home(args.data, args.work / "templateflow")

    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_from_to
    from scipy import ndimage

    from isyb.deface.checked import deface_checked
    from isyb.deface.engine import DefaceOptions, align
    from isyb.head.brain import extract_brain
    from isyb.io import load_volume, volume_from_image
    from isyb.templates.registry import resolve
    from isyb.viz.seams import border_step_mm

    for head in args.heads:
        volume = load_volume(args.data / "heads" / head)
        brain_file = args.work / f"{head}.brain.npy"
        if not brain_file.exists():
            np.save(brain_file, extract_brain(volume.data, volume.zooms))
        brain = np.load(brain_file)
        risk = None
        if head in REFERENCE_BRAINS:
            source = nib.load(args.data / "heads" / REFERENCE_BRAINS[head])
            own = nib.load(args.data / "heads" / head)
            mask = nib.Nifti1Image((np.asanyarray(source.dataobj) > 0).astype(np.float32),
                                   source.affine)
            resampled = resample_from_to(mask, own, order=1)
            reference = volume_from_image(resampled).data > 0.5  # RAS, as load_volume
            outside = ndimage.distance_transform_edt(~brain, sampling=volume.zooms)
            to_reference = ndimage.distance_transform_edt(~reference, sampling=volume.zooms)
            risk = (reference, to_reference, round(float(outside[reference].max()), 1))
        for name in args.templates:
            template = resolve(name)
            cache = args.work / f"{head}.{name}.alignment.pkl"
            if cache.exists():
                alignment = pickle.loads(cache.read_bytes())
            else:
                alignment = align(volume, template, brain=brain)
                cache.write_bytes(pickle.dumps(alignment))
            for method in args.methods:
                for guard in args.guard_mm:
                    options = DefaceOptions(method=method, guard_mm=guard,
                                            keep_chin=args.keep_chin)
                    clock = time.perf_counter()
                    checked = deface_checked(volume, template, options, alignment=alignment)
                    seconds = time.perf_counter() - clock
                    result = checked.defacing
                    reference = checked.report.face_reference
                    changed = result.data != volume.data
                    row = {
                        "head": head, "template": name, "method": method, "guard_mm": guard,
                        "keep_chin": args.keep_chin,
                        "changed": reference["changed_fraction"],
                        "guard": reference["guard_fraction"],
                        "unreached": reference["unreached_fraction"],
                        "thirds": {third: [values["changed_fraction"], values["guard_fraction"],
                                           values["unreached_fraction"]]
                                   for third, values in reference["thirds"].items()},
                        "face_skin_in_guard": checked.report.face_skin_in_guard_fraction,
                        "brain_changed_voxels": int((changed & brain).sum()),
                        "border_step_mm": round(border_step_mm(
                            result.data, volume.zooms, result.region, volume.data), 2),
                        "deface_s": round(seconds, 1)}
                    if risk is not None:
                        truth, distance, reach = risk
                        row.update({
                            "reference_brain_changed_voxels": int((changed & truth).sum()),
                            "changed_to_reference_brain_min_mm": round(
                                float(distance[changed].min()), 1) if changed.any() else None,
                            "reference_brain_outside_deepbet_max_mm": reach})
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
