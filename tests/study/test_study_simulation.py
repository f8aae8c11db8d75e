"""`isyb study` on a simulated two-population cohort (simulation only).

The cohort (:mod:`isyb.study.simulate`) has a ``ref`` population and a
``cn200`` population whose faces are reshaped by the CAPIIO→CN200 matrix
squared (relative to the brain: not an affine difference of the whole head):
2 phantoms per population, each with its own head size and face strength,
3 mm voxels; it is the study shared by tests/study (conftest
``study_simulation``, built once per test run). One template per population.
Every subject is defaced with the ``template`` face region (the registered
template's own face plus a margin, like mask_face and pydeface) and
``remove``; the simulation's margin is 3 mm, not the deface default of 8 mm,
because the squared matrix moves the face surface by up to about 8 mm and
8 mm absorbs that (see :mod:`isyb.study.simulate`). NMI is over each
subject's evaluation region, the same voxels for both templates. The F and p
values these tests see describe the simulated cohort, not real populations.

What is asserted (measured values in the comments, simulation only):

* the shape-matched template removes more face: matched − mismatched NMI is
  positive for every subject (measured +0.005, +0.011 ref; +0.018, +0.020
  cn200), and so is the changed fraction of the face's skin surface; the
  template × population interaction of the mixed ANOVA is significant
  (measured F(1, 2) = 88.6, p = 0.011), and in each population the mean NMI
  is higher with its own template (3 + 3 phantoms: F(1, 4) = 93.9,
  p = 0.00063; README);
* the negative control (the same template under two names) gives exactly
  the same NMI for every subject and no template effect: F is undefined
  (0/0) in every analysis, never a number.

No real head is in this cohort: the templates are phantoms, whose face does
not match a real face to within a 3 mm margin, so a real head adds its own
mismatch, larger than the simulated effect (measured on pycortex-S1:
matched − mismatched NMI −0.005 as ``ref``, +0.030 as ``cn200``).
``benchmarks/simulate_study.py`` runs the cohort with real heads too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isyb.study.simulate import (
    POPULATIONS,
    SIMULATION_MARGIN_MM,
    SIMULATION_NOTE,
    build_templates,
    face_weight,
    load_fsl_matrix,
    matched_differences,
    matrix_power,
    phantom_head,
    reshape_matrix,
)


@pytest.fixture(scope="module")
def cn200_matrix(data_root: Path) -> np.ndarray:
    path = data_root / "transforms" / "CAPIIO_to_CN200.mat"
    if not path.is_file():
        pytest.skip(f"{path} not found in the test data")
    return load_fsl_matrix(path)


def test_reshape_matrices(cn200_matrix: np.ndarray, data_root: Path) -> None:
    """``cn200`` is the team's CAPIIO->CN200 matrix; ``cn200-vs-mni152`` is it times the
    inverse of mask_face's CAPIIO->MNI152 (CN200 in MNI152's terms: about as wide, 8 % shorter
    front to back, 15 % lower)."""
    np.testing.assert_array_equal(reshape_matrix(data_root, "cn200"), cn200_matrix)
    mni = load_fsl_matrix(data_root / "transforms" / "mask_face" / "CAPIIO_to_mni152.mat")
    relative = reshape_matrix(data_root, "cn200-vs-mni152")
    np.testing.assert_allclose(relative @ mni, cn200_matrix, atol=1e-12)
    np.testing.assert_allclose(np.diag(relative)[:3], [0.997, 0.924, 0.853], atol=0.002)
    with pytest.raises(ValueError, match="unknown reshape"):
        reshape_matrix(data_root, "cn2020")


def test_matrix_power_and_face_reshaping_keep_the_brain(cn200_matrix: np.ndarray) -> None:
    assert np.allclose(matrix_power(cn200_matrix, 0.0), np.eye(3))
    assert np.allclose(matrix_power(cn200_matrix, 1.0), cn200_matrix[:3, :3], atol=1e-9)
    assert np.allclose(matrix_power(cn200_matrix, 2.0),
                       cn200_matrix[:3, :3] @ cn200_matrix[:3, :3], atol=1e-9)
    plain, affine, brain = phantom_head(strength=0.0, linear=cn200_matrix, voxel_mm=3.0,
                                        noise_sd=0.0)
    shaped, _, _ = phantom_head(strength=2.0, linear=cn200_matrix, voxel_mm=3.0, noise_sd=0.0)
    weight, _ = face_weight(plain.shape, affine, brain)
    assert weight[brain].max() == 0.0 and weight.max() == pytest.approx(1.0)
    changed = plain != shaped
    assert not changed[weight == 0].any()  # the brain and the rest of the head never move
    assert changed.sum() > 2000  # the face does (about 8000 voxels of 3 mm)


def test_templates_have_their_exact_brain_mask(cn200_matrix: np.ndarray, tmp_path: Path) -> None:
    paths = build_templates(tmp_path, cn200_matrix, strength=2.0, voxel_mm=3.0)
    assert set(paths) == set(POPULATIONS)
    for population in POPULATIONS:
        assert (tmp_path / f"tpl-sim{population}_desc-brain_mask.nii.gz").is_file()


def _tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``metrics.tsv`` and ``anova.tsv`` of a study folder."""
    metrics = pd.read_csv(folder / "metrics.tsv", sep="\t", dtype={"subject": str},
                          na_values=["n/a"])
    return metrics, pd.read_csv(folder / "anova.tsv", sep="\t", na_values=["n/a"])


def test_cohort_has_two_populations_and_every_pair_ran(study_simulation: dict) -> None:
    metrics, _ = _tables(study_simulation["study"])
    assert sorted(metrics["subset"].unique()) == sorted(POPULATIONS)
    assert metrics.groupby("subset")["subject"].nunique().tolist() == [2, 2]
    assert (metrics["status"] == "ok").all() and metrics["brain_changed_voxels"].eq(0).all()
    assert (metrics["method"] == "remove").all()
    assert (metrics["face_region"] == "template").all()
    assert (metrics["face_margin_mm"] == SIMULATION_MARGIN_MM).all()
    # one voxel set per subject, whatever the template
    assert metrics.groupby("subject")["evaluation_region_voxels"].nunique().eq(1).all()
    assert SIMULATION_NOTE in (study_simulation["study"] / "report.html").read_text()


def test_shape_matched_template_removes_more_face(study_simulation: dict) -> None:
    """Simulation only: the matched template is better for every subject."""
    metrics, anova = _tables(study_simulation["study"])
    names = study_simulation["names"]
    diffs = matched_differences(metrics, names)
    assert (diffs["matched_minus_mismatched"] > 0).all(), diffs
    surface = matched_differences(metrics, names, "face_surface_changed_fraction")
    assert (surface["matched_minus_mismatched"] > 0).all(), surface
    means = diffs.groupby("subset")[["ref", "cn200"]].mean()
    assert means.loc["ref", "ref"] > means.loc["ref", "cn200"]
    assert means.loc["cn200", "cn200"] > means.loc["cn200", "ref"]
    mixed = anova.query("analysis == 'mixed'").set_index("Source")
    assert mixed.loc["Interaction", "DF1"] == 1 and mixed.loc["Interaction", "DF2"] == 2
    assert mixed.loc["Interaction", "p_unc"] < 0.05
    assert mixed.loc["Interaction", "F"] > 18.51  # F(1, 2) critical value at 0.05


def test_identical_templates_show_no_effect(study_simulation: dict) -> None:
    metrics, anova = _tables(study_simulation["control"])
    spread = metrics.groupby("subject")["nmi"].agg(lambda v: v.max() - v.min())
    assert (spread == 0.0).all()  # deterministic registration: the same numbers, bit for bit
    within = anova[anova["Source"].isin(["template", "Interaction"])]
    assert len(within) == 5  # mixed: template and interaction; rm: ref, cn200, pooled
    assert within["F"].isna().all() and within["p_unc"].isna().all()
