"""Anonymization evaluation: NMI against scikit-learn, brain and face checks, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from isyb.cli import main
from isyb.deface.engine import DefaceOptions
from isyb.deface.file import deface_file
from isyb.evaluate.anonymization import evaluate_defacing
from isyb.evaluate.nmi import face_nmi, quantize
from isyb.io import load_volume, volume_from_image
from isyb.synthetic.phantom import make_phantom, to_nifti


def _pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    original = rng.gamma(2.0, 30.0, size=(20, 22, 24))
    defaced = original.copy()
    mask = np.zeros(original.shape, dtype=bool)
    mask[5:15, 10:22, 4:12] = True
    defaced[mask] = rng.normal(40.0, 10.0, size=int(mask.sum()))
    return original, defaced, mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_equals_scikit_learn_on_the_binned_labels(seed: int) -> None:
    original, defaced, mask = _pair(seed)
    a = original[mask]
    r = a - defaced[mask]
    expected = normalized_mutual_info_score(quantize(a), quantize(r),
                                            average_method="arithmetic")
    assert face_nmi(original, defaced, mask) == pytest.approx(expected, abs=1e-12)


def test_quantize_uses_64_equal_width_bins_over_min_max() -> None:
    values = np.linspace(-3.0, 5.0, 1000)
    bins = quantize(values)
    assert bins.min() == 0 and bins.max() == 63
    assert np.array_equal(np.bincount(bins), np.bincount(np.minimum(
        np.floor((values + 3.0) / 8.0 * 64).astype(int), 63)))


def test_nmi_is_zero_when_nothing_was_removed() -> None:
    original, _, mask = _pair()
    assert face_nmi(original, original.copy(), mask) == 0.0
    assert face_nmi(original, original.copy(), mask, method="studholme") == 1.0


def test_remove_scores_higher_than_touching_a_few_voxels() -> None:
    original, _, mask = _pair()
    removed = original.copy()
    removed[mask] = 0.0
    few = original.copy()
    index = np.argwhere(mask)[:20]
    few[tuple(index.T)] = 0.0
    assert face_nmi(original, removed, mask) > face_nmi(original, few, mask) + 0.5


def test_studholme_is_the_entropy_ratio() -> None:
    original, defaced, mask = _pair()
    a, r = quantize(original[mask]), quantize(original[mask] - defaced[mask])

    def entropy(labels: np.ndarray) -> float:
        p = np.bincount(labels) / labels.size
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    expected = (entropy(a) + entropy(r)) / entropy(a * 64 + r)
    value = face_nmi(original, defaced, mask, method="studholme")
    assert value == pytest.approx(expected, abs=1e-12)
    assert 1.0 <= value <= 2.0


def test_evaluation_of_a_phantom_defacing(default_template, tmp_path: Path) -> None:
    # test_api's head and the README's: the run's work cache aligns it once for all three
    phantom = make_phantom(voxel_size=2.0, seed=5)
    source = tmp_path / "phantom.nii.gz"
    to_nifti(phantom, "LIA").to_filename(str(source))
    out, mask_path = tmp_path / "defaced.nii.gz", tmp_path / "mask.nii.gz"
    deface_file(source, out, default_template, DefaceOptions(method="remove"),
                save_mask=mask_path, qc_png=False)
    original, defaced = load_volume(source), load_volume(out)
    brain = volume_from_image(to_nifti(phantom, "LIA", labels=True)).data
    record = evaluate_defacing(original, defaced, load_volume(mask_path).data > 0,
                               brain=np.isin(brain, [4, 5]), detect=False)
    assert record["brain_changed_voxels"] == 0
    assert record["changed_voxels_outside_face_mask"] == 0
    assert record["face_surface_changed_fraction"] > 0.95
    # remove: R equals A inside the mask except on the sealing wall (one constant value,
    # issue 15), so the NMI is high but no longer exactly 1
    assert 0.7 < record["nmi"] < 1.0
    assert record["face_reference_lower_changed_fraction"] >= 0.9

    # the CLI: one JSON object, renders of the defaced head, exit 0
    renders = tmp_path / "renders.png"
    assert main(["evaluate", str(source), str(out), "--mask", str(mask_path),
                 "--brain-mask", str(mask_path), "--renders", str(renders),
                 "--detect", "haar"]) == 0  # the ensemble: tests/evaluate/test_ensemble.py
    assert renders.is_file()


def test_mismatched_grids_are_a_one_line_error(tmp_path: Path, capsys) -> None:
    a = tmp_path / "a.nii.gz"
    b = tmp_path / "b.nii.gz"
    nib.Nifti1Image(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), np.eye(4)).to_filename(
        str(a))  # not constant: a constant image is refused before the grids are compared
    nib.Nifti1Image(np.arange(1200, dtype=np.float32).reshape(10, 10, 12), np.eye(4)).to_filename(
        str(b))
    assert main(["evaluate", str(a), str(b), "--mask", str(a)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different grids" in err[0]


@pytest.mark.realdata
def test_evaluate_cli_on_a_real_head(data_root: Path, default_template, tmp_path: Path,
                                     capsys) -> None:
    source = data_root / "heads" / "myconnectome_T1w_1p6mm.nii.gz"
    out, mask = tmp_path / "defaced.nii.gz", tmp_path / "mask.nii.gz"
    deface_file(source, out, default_template, DefaceOptions(), save_mask=mask, qc_png=False)
    capsys.readouterr()
    assert main(["evaluate", str(source), str(out), "--mask", str(mask), "--detect", "haar"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["face_detected_original"] and not record["face_detected_defaced"]
    assert record["brain_changed_voxels"] == 0
    assert 0.0 < record["nmi"] < 1.0
    assert record["face_surface_changed_fraction"] >= 0.95
