"""Face masking on the real scans of ../shared/data (skipped when the folder is absent).

The acceptance checks of `isyb deface`: the brain is never touched, the face is
gone (skin surface changed, the stock face detector finds nothing), any
template works, and hard inputs run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.deface.engine import Alignment, DefaceOptions, subject_masks
from isyb.deface.file import deface_file
from isyb.head.register import resample_to
from isyb.io import Volume, load_volume
from isyb.templates.registry import Template, resolve
from isyb.viz.faces import face_detected
from real_alignments import real_alignment

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

HEADS = (
    "pycortex-S1_T1w.nii.gz",
    "myconnectome_T1w_1p6mm.nii.gz",
    "myconnectome_T2w_slab.nii.gz",
    "mne-sample_T1w_3mm.mgz",
    "colin27_T1w.nii.gz",
    "chris_T1w_cropped.nii.gz",
    "itk-kmeans_T1w_LSA_2x2x3mm.nii.gz",
    "ds000240-sub01_T1w_defaced.nii.gz",
)
FULL_FACE = ("pycortex-S1_T1w.nii.gz", "myconnectome_T1w_1p6mm.nii.gz", "mne-sample_T1w_3mm.mgz")
METHODS = ("blur", "remove", "noise")


class Case:
    """One real scan, its alignment to the default template, and its defacings.

    The methods share one alignment and one set of subject masks, as ``isyb study``
    does (tests/deface/test_engine_speed.py: the same bytes as masks computed per call);
    test_same_input_gives_the_same_output defaces without either."""

    def __init__(self, path: Path, template: Template, out_dir: Path,
                 alignment: Alignment) -> None:
        self.path = path
        self.volume: Volume = load_volume(path)
        self.template = template
        self.alignment = alignment  # align(volume, template), once per test run
        self.subject = subject_masks(self.volume, alignment.brain, DefaceOptions().guard_mm)
        self.out_dir = out_dir
        self.outputs: dict[str, tuple[dict, Volume]] = {}

    def deface(self, method: str) -> tuple[dict, Volume]:
        if method not in self.outputs:
            out = self.out_dir / f"{method}_{self.path.name}"
            record = deface_file(self.path, out, self.template, DefaceOptions(method=method),
                                 alignment=self.alignment, subject=self.subject, qc_png=False)
            self.outputs[method] = (record, load_volume(out))
        return self.outputs[method]


@pytest.fixture(scope="module")
def cases(data_root: Path, default_template: Template, shared_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    out_dir = tmp_path_factory.mktemp("real")
    cache: dict[str, Case] = {}

    class Lazy(dict):
        def __missing__(self, name: str) -> Case:
            path = data_root / "heads" / name
            if not path.is_file():
                pytest.skip(f"{path} not in the test data")
            cache[name] = Case(path, default_template, out_dir,
                               real_alignment(shared_dir, path, default_template))
            self[name] = cache[name]
            return cache[name]

    return Lazy()


def _changed(original: Volume, defaced: Volume) -> np.ndarray:
    return original.data != defaced.data


@pytest.mark.parametrize("name", HEADS)
def test_no_voxel_changes_inside_the_brain_guard(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    record, defaced = case.deface("blur")
    assert record["brain_guard"]["changed_voxels_in_guard"] == 0
    assert record["brain_guard"]["passed"]
    changed = _changed(case.volume, defaced)
    assert not changed[case.alignment.brain].any()
    source = nib.load(str(case.path))
    written = nib.load(record["output"])
    assert written.shape == source.shape
    assert np.allclose(written.affine, source.affine)
    assert written.get_data_dtype() == source.get_data_dtype()


@pytest.mark.parametrize("method", METHODS)
def test_reference_brain_of_colin27_is_untouched(cases: dict[str, Case], data_root: Path,
                                                 method: str) -> None:
    case = cases["colin27_T1w.nii.gz"]
    reference = load_volume(data_root / "heads" / "colin27_brain.nii.gz").data > 0
    _, defaced = case.deface(method)
    assert _changed(case.volume, defaced)[reference].sum() == 0


@pytest.mark.parametrize("method", METHODS)
def test_reference_brain_of_mne_sample_is_untouched(cases: dict[str, Case], data_root: Path,
                                                    method: str) -> None:
    case = cases["mne-sample_T1w_3mm.mgz"]
    brain_1mm = load_volume(data_root / "heads" / "mne-sample_brain_1mm.mgz")
    # any 3 mm voxel that overlaps the 1 mm brain counts as brain
    reference = resample_to(brain_1mm.data > 0, brain_1mm.affine, case.volume.shape,
                            case.volume.affine) > 0.0
    assert reference.sum() * 27 > 1.0e6  # a whole brain, more than 1 litre
    _, defaced = case.deface(method)
    assert _changed(case.volume, defaced)[reference].sum() == 0


@pytest.mark.parametrize("name", FULL_FACE)
def test_stock_detector_finds_the_original_faces(cases: dict[str, Case], name: str) -> None:
    case = cases[name]
    assert face_detected(case.volume.data, case.volume.zooms)["detected"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FULL_FACE)
def test_face_is_gone_from_full_face_scans(cases: dict[str, Case], name: str,
                                           method: str) -> None:
    case = cases[name]
    record, defaced = case.deface(method)
    assert record["face_surface_changed_fraction"] >= 0.95
    assert not record["little_or_no_face"]
    detection = face_detected(defaced.data, defaced.zooms)
    assert not detection["detected"], detection["yaws"]


def test_already_defaced_input_runs_and_says_so(cases: dict[str, Case]) -> None:
    record, _ = cases["ds000240-sub01_T1w_defaced.nii.gz"].deface("blur")
    assert record["little_or_no_face"]
    assert "already be defaced" in record["note"]


@pytest.mark.parametrize("template_name", ["MNI152NLin6Asym", "bare-path"])
def test_any_template_works(cases: dict[str, Case], templateflow_pinned: Path, data_root: Path,
                            tmp_path: Path, template_name: str) -> None:
    if template_name == "bare-path":
        bare = tmp_path / "head_only.nii.gz"
        shutil.copyfile(data_root / "templates" / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
                        bare)
        template = resolve(str(bare))
        assert template.info["brain_mask"] == "derived by deepbet"
    else:
        template = resolve(template_name)
        assert template.info["brain_mask"].endswith("desc-brain_mask.nii.gz")
    case = cases["pycortex-S1_T1w.nii.gz"]
    out = tmp_path / "out.nii.gz"
    record = deface_file(case.path, out, template, DefaceOptions(), qc_png=False)
    defaced = load_volume(out)
    assert record["brain_guard"]["changed_voxels_in_guard"] == 0
    assert record["registration"]["score_brain_dice"] > 0.85
    assert record["face_surface_changed_fraction"] >= 0.95
    assert not face_detected(defaced.data, defaced.zooms)["detected"]


def test_same_input_gives_the_same_output(cases: dict[str, Case], default_template: Template,
                                          tmp_path: Path) -> None:
    """A whole new defacing (deepbet, registration, masking) of myconnectome gives the voxels
    of the module's defacing with the default method (blur), whose alignment was computed
    once per run (tests/real_alignments.py), maybe by another pytest-xdist worker. Two
    independent runs, as before; the first is the one the brain-guard test checks."""
    case = cases["myconnectome_T1w_1p6mm.nii.gz"]
    assert DefaceOptions().method == "blur"
    shared, _ = case.deface("blur")
    out = tmp_path / "again.nii.gz"
    deface_file(case.path, out, default_template, DefaceOptions(), qc_png=False)
    assert np.array_equal(np.asarray(nib.load(str(out)).dataobj),
                          np.asarray(nib.load(shared["output"]).dataobj))
