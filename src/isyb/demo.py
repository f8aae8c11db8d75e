"""A small BIDS dataset of phantom heads, for the demo and for tests (no downloads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from isyb import __version__
from isyb.io import atomic_path, write_text
from isyb.phantom import make_phantom, to_nifti


@dataclass(frozen=True)
class DemoSubject:
    """Head shape (mm), storage orientation, voxel size (mm) and origin shift (mm)."""

    length: float
    width: float
    height: float
    orientation: str
    voxel_size: float
    origin_shift_mm: tuple[float, float, float]


#: Varied shapes (long/narrow, short/wide - like the Western and Chinese head
#: shapes the ISYB templates differ by), orientations, voxel sizes and origins.
DEMO_SUBJECTS = (
    DemoSubject(190.0, 150.0, 225.0, "RAS", 1.5, (0.0, 0.0, 0.0)),
    DemoSubject(176.0, 160.0, 212.0, "LIA", 1.5, (12.0, -30.0, 50.0)),
    DemoSubject(204.0, 142.0, 236.0, "LSA", 1.75, (-20.0, 40.0, -10.0)),
    DemoSubject(182.0, 156.0, 220.0, "LPS", 1.25, (0.0, 0.0, 0.0)),
)


def build_demo_dataset(root: Path, n_subjects: int = 3) -> Path:
    """Write a raw BIDS dataset of ``n_subjects`` phantom T1w heads into ``root``.

    Existing subjects are rewritten only if their image is missing, so the
    demo can be rerun into the same folder.
    """
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": "isyb phantom demo", "BIDSVersion": "1.9.0",
                   "DatasetType": "raw", "License": "CC0",
                   "GeneratedBy": [{"Name": "isyb demo", "Version": __version__}]}
    write_text(root / "dataset_description.json", json.dumps(description, indent=2) + "\n")
    write_text(root / "README", "Synthetic head phantoms made by `isyb demo`. No real person.\n")
    rows = ["participant_id\tlength_mm\twidth_mm\theight_mm"]
    for index in range(n_subjects):
        spec = DEMO_SUBJECTS[index % len(DEMO_SUBJECTS)]
        label = f"{index + 1:02d}"
        rows.append(f"sub-{label}\t{spec.length:g}\t{spec.width:g}\t{spec.height:g}")
        image_path = root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz"
        if image_path.is_file():
            continue
        phantom = make_phantom(voxel_size=spec.voxel_size, length=spec.length,
                               width=spec.width, height=spec.height, seed=index)
        image = to_nifti(phantom, spec.orientation, spec.origin_shift_mm)
        with atomic_path(image_path) as tmp:
            image.to_filename(str(tmp))
        sidecar = {"Modality": "MR", "MagneticFieldStrength": 3,
                   "Manufacturer": "isyb phantom", "RepetitionTime": 2.3}
        write_text(image_path.with_name(f"sub-{label}_T1w.json"),
                   json.dumps(sidecar, indent=2) + "\n")
    write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    return root
