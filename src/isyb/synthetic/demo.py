"""A small BIDS dataset of phantom heads, for the demo and for tests (no downloads)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from isyb import __version__
from isyb.io import atomic_path, write_text
from isyb.synthetic.phantom import make_phantom, to_nifti


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


#: Modalities the demo can write: the T1w head always, and on request a
#: resting BOLD run, a DWI run and a pCASL run per subject (:mod:`isyb.synthetic.runs`).
MODALITIES = ("anat", "func", "dwi", "perf")


def build_demo_dataset(root: Path, n_subjects: int = 3,
                       modalities: tuple[str, ...] = ("anat",)) -> Path:
    """Write a raw BIDS dataset of ``n_subjects`` phantom heads into ``root``.

    Every subject has its T1w; ``modalities`` adds ``func`` (resting BOLD),
    ``dwi`` and ``perf`` (pCASL) runs of the same phantom, on the same world
    frame. Existing files are rewritten only if missing, so the demo can be
    rerun into the same folder.
    """
    unknown = sorted(set(modalities) - set(MODALITIES))
    if unknown:
        raise ValueError(f"unknown demo modalities: {', '.join(unknown)} "
                         f"(choose from {', '.join(MODALITIES)})")
    root.mkdir(parents=True, exist_ok=True)
    description = {"Name": "isyb phantom demo", "BIDSVersion": "1.9.0",
                   "DatasetType": "raw", "License": "CC0", "Authors": ["isyb demo"],
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
    for index in range(n_subjects):
        spec = DEMO_SUBJECTS[index % len(DEMO_SUBJECTS)]
        _write_runs(root / f"sub-{index + 1:02d}", spec, modalities, seed=index)
    write_text(root / "participants.tsv", "\n".join(rows) + "\n")
    columns = {f"{name}_mm": {"Description": f"phantom head {name}", "Units": "mm"}
               for name in ("length", "width", "height")}
    write_text(root / "participants.json", json.dumps(columns, indent=2) + "\n")
    return root


def _save_run(data, affine, path: Path, *, tr: float | None = None) -> None:
    import nibabel as nib
    import numpy as np

    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.set_data_dtype(np.int16)
    if tr is not None:
        image.header.set_xyzt_units("mm", "sec")
        image.header["pixdim"][4] = tr
    else:
        image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        image.to_filename(str(tmp))


def _write_runs(folder: Path, spec: DemoSubject, modalities: tuple[str, ...], *,
                seed: int) -> None:
    """The subject's functional, diffusion and perfusion runs (files that are missing)."""
    from isyb.synthetic.runs import Geometry, diffusion, pcasl, rest_bold

    label = folder.name
    geometry = Geometry(spec.length, spec.width, spec.height, spec.origin_shift_mm)
    bold = folder / "func" / f"{label}_task-rest_bold.nii.gz"
    if "func" in modalities and not bold.is_file():
        run = rest_bold(geometry, seed=seed)
        n_slices = run.series.shape[2]
        slice_timing = [round(k * run.tr / n_slices, 4) for k in range(n_slices)]
        write_text(bold.with_name(f"{label}_task-rest_bold.json"), json.dumps(
            {"TaskName": "rest", "RepetitionTime": run.tr, "SliceTiming": slice_timing,
             "SliceEncodingDirection": "k", "Manufacturer": "isyb phantom",
             "MagneticFieldStrength": 3}, indent=2) + "\n")
        _save_run(run.series, run.affine, bold, tr=run.tr)
    dwi = folder / "dwi" / f"{label}_dwi.nii.gz"
    if "dwi" in modalities and not dwi.is_file():
        run = diffusion(geometry, seed=seed)
        stem = dwi.with_name(f"{label}_dwi")
        write_text(stem.with_suffix(".bval"), " ".join(f"{b:g}" for b in run.bvals) + "\n")
        write_text(stem.with_suffix(".bvec"), "\n".join(
            " ".join(f"{v:.6f}" for v in row) for row in run.bvecs.T) + "\n")
        write_text(stem.with_suffix(".json"), json.dumps(
            {"Manufacturer": "isyb phantom", "MagneticFieldStrength": 3,
             "PhaseEncodingDirection": "j-", "TotalReadoutTime": 0.05}, indent=2) + "\n")
        _save_run(run.series, run.affine, dwi)
    asl = folder / "perf" / f"{label}_asl.nii.gz"
    if "perf" in modalities and not asl.is_file():
        run = pcasl(geometry, seed=seed)
        pairs = run.volume_types.count("label")
        write_text(asl.with_name(f"{label}_aslcontext.tsv"),
                   "volume_type\n" + "\n".join(run.volume_types) + "\n")
        write_text(asl.with_name(f"{label}_asl.json"), json.dumps(
            {**run.metadata, "TotalAcquiredPairs": pairs}, indent=2) + "\n")
        _save_run(run.series, run.affine, asl, tr=run.metadata["RepetitionTimePreparation"])


#: The mapping table of the flat demo folder (see :mod:`isyb.bids.importer`).
DEMO_MAP = ("series\tdatatype\tsuffix\tentities\n"
            "t1_mprage*\tanat\tT1w\t\n"
            "rest_epi*\tfunc\tbold\ttask-rest\n")


def build_demo_flat(root: Path, n_subjects: int = 2) -> tuple[Path, Path]:
    """Write a flat folder of dcm2niix-style phantom outputs and its mapping table.

    ``root/dcm2niix`` gets, per subject ``S<nn>``, a T1w phantom head
    (``S01_t1_mprage_2.nii.gz``) and a short phantom BOLD run
    (``S01_rest_epi_5.nii.gz``), each with a JSON sidecar that carries fake
    identifying DICOM fields (patient name, institution, serial number,
    acquisition date-time), as a scanner export would; every second subject
    moves (0.5 mm and 0.5° random walk, versus 0.05), so the FD rule has
    something to exclude. ``root/map.tsv`` maps
    them to BIDS. Returns ``(folder, map)``. Used by the README's release
    walk-through: import, participant, group, validator.
    """
    import nibabel as nib
    import numpy as np

    from isyb.synthetic.epi import phantom_bold

    folder = root / "dcm2niix"
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(n_subjects):
        spec = DEMO_SUBJECTS[index % len(DEMO_SUBJECTS)]
        name = f"S{index + 1:02d}"
        identity = {"PatientName": f"Phantom^Demo{index + 1:02d}", "PatientID": f"ID{index:04d}",
                    "InstitutionName": "isyb phantom lab", "DeviceSerialNumber": "12345",
                    "AcquisitionDateTime": f"2024-05-{index + 10:02d}T09:15:00.000000",
                    "Manufacturer": "isyb phantom", "MagneticFieldStrength": 3}
        head = folder / f"{name}_t1_mprage_2.nii.gz"
        if not head.is_file():
            phantom = make_phantom(voxel_size=spec.voxel_size, length=spec.length,
                                   width=spec.width, height=spec.height, seed=index)
            image = to_nifti(phantom, spec.orientation, spec.origin_shift_mm)
            image.header["descrip"] = identity["PatientName"].encode()
            with atomic_path(head) as tmp:
                image.to_filename(str(tmp))
        write_text(head.with_name(f"{name}_t1_mprage_2.json"), json.dumps(
            {**identity, "SeriesDescription": "t1_mprage", "SeriesNumber": 2,
             "RepetitionTime": 2.3}, indent=2) + "\n")
        bold = folder / f"{name}_rest_epi_5.nii.gz"
        if not bold.is_file():
            motion = 0.05 if index % 2 == 0 else 0.5  # every second subject moves (mm, deg)
            series, _ = phantom_bold((32, 32, 20), (6.0, 6.0, 6.0), 60, max_trans=motion,
                                     max_rot_deg=motion, seed=index)
            image = nib.Nifti1Image(series, np.diag([6.0, 6.0, 6.0, 1.0]))
            image.header.set_xyzt_units("mm", "sec")
            image.header["pixdim"][4] = 2.0
            with atomic_path(bold) as tmp:
                image.to_filename(str(tmp))
        write_text(bold.with_name(f"{name}_rest_epi_5.json"), json.dumps(
            {**identity, "SeriesDescription": "rest_epi", "SeriesNumber": 5,
             "RepetitionTime": 2.0, "SliceTiming": [round((k % 2 * 10 + k // 2) * 0.1, 3)
                                                   for k in range(20)]}, indent=2) + "\n")
    mapping = root / "map.tsv"
    write_text(mapping, DEMO_MAP)
    return folder, mapping
