"""`isyb study`'s re-identification step (:func:`isyb.study.run.reidentify`) on stored
descriptors: one task per original face, the same ranks on any executor, and a record of
an earlier version (no stored original) completed and stored."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from isyb.deface.engine import DefaceOptions
from isyb.evaluate import reid
from isyb.executor import ExecutorOptions
from isyb.io import load_volume
from isyb.study.run import DESCRIPTOR, ORIGINAL_DESCRIPTOR, reidentify, work_name
from isyb.synthetic import rescan
from isyb.synthetic.phantom import make_phantom, to_nifti

OPTIONS = DefaceOptions(method="remove")


def _face(seed: int, shape: tuple[int, int] = (60, 60)) -> np.ndarray:
    """A face-like depth map (mm) with its own bumps: a dome plus four Gaussian features."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    centre = (np.array(shape) - 1) / 2
    radius2 = (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2
    depth = 80.0 - radius2 / 80.0
    for _ in range(4):
        r, c = rng.uniform(0.25, 0.75, 2) * shape
        depth += rng.uniform(-8, 15) * np.exp(-((rows - r) ** 2 + (cols - c) ** 2)
                                               / (2 * rng.uniform(3, 7) ** 2))
    return np.where(radius2 < (0.47 * min(shape)) ** 2, depth, np.nan).astype(np.float32)


def _stored(work: Path, template, count: int, shape: tuple[int, int] = (60, 60), *,
            impostor: tuple[int, int] | None = None) -> dict:
    """A study's work folder with ``count`` subjects' original and "defaced" descriptors
    (the original plus 0.3 mm of noise; with ``impostor = (k, m)``, subject k's defaced
    face is subject m's), and the metrics table that points at them."""
    rng = np.random.default_rng(0)
    gallery, probes, rows = [], [], []
    for k in range(count):
        subject = f"{k + 1:02d}"
        original = _face(k, shape)
        looks_like = _face(impostor[1], shape) if impostor and k == impostor[0] else original
        probe = (looks_like + rng.normal(0, 0.3, original.shape)).astype(np.float32)
        pair = work / f"sub-{subject}" / work_name(OPTIONS) / f"tpl-{template.name}"
        pair.mkdir(parents=True)
        np.save(pair / ORIGINAL_DESCRIPTOR, original)
        np.save(pair / DESCRIPTOR, probe)
        gallery.append(original)
        probes.append(probe)
        rows.append({"subject": subject, "template": template.name, "status": "ok",
                     "subject_to_template": np.eye(4).tolist()})
    return {"table": pd.DataFrame(rows), "gallery": gallery, "probes": probes}


@pytest.mark.parametrize("executor", [ExecutorOptions(threads=1),
                                      ExecutorOptions(nprocs=2, threads=1)],
                         ids=["this-process", "two-processes"])
def test_ranks_are_those_of_the_whole_matrix_on_any_executor(
        tmp_path: Path, default_template, executor: ExecutorOptions) -> None:
    """Subject 1's defaced face is subject 2's: its own original is not nearest, and the
    ranks of the transposed matrix differ, so a mix-up of rows and columns would show."""
    cohort = _stored(tmp_path, default_template, 3, impostor=(0, 1))
    expected = reid.identification(cohort["gallery"], cohort["probes"])
    assert expected["ranks"][0] > 1  # the cohort does what the test needs
    assert not np.array_equal(
        reid.identification_from_distances(expected["distances"].T)["ranks"], expected["ranks"])
    table = reidentify(cohort["table"], {}, [default_template], tmp_path, OPTIONS,
                       executor=executor)
    np.testing.assert_array_equal(table["reid_rank"], expected["ranks"])
    assert table["reid_rank1"].tolist() == [0.0, 1.0, 1.0]
    assert "subject_to_template" not in table


def test_a_record_without_the_stored_original_gets_it(tmp_path: Path, default_template) -> None:
    """The original's descriptor is computed from the image and the stored registration,
    and stored, as a current version's subject task would have stored it."""
    frame = reid.frame_for(default_template)
    cohort = _stored(tmp_path / "work", default_template, 2, frame.shape)
    phantom = make_phantom(voxel_size=3.0, fov_mm=rescan.PHANTOM_FOV_MM,
                           fov_center_mm=rescan.PHANTOM_FOV_CENTRE_MM)
    image = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(to_nifti(phantom, "RAS", dtype=np.float32), image)
    pair = tmp_path / "work" / "sub-01" / work_name(OPTIONS) / f"tpl-{default_template.name}"
    (pair / ORIGINAL_DESCRIPTOR).unlink()
    table = reidentify(cohort["table"], {"01": image}, [default_template], tmp_path / "work",
                       OPTIONS)
    expected = reid.face_descriptor(load_volume(image), np.eye(4), frame)
    np.testing.assert_array_equal(np.load(pair / ORIGINAL_DESCRIPTOR), expected)
    assert table["reid_rank"].notna().all()
