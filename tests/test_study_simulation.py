"""`isyb study` on a simulated two-population cohort (simulation only).

The cohort (:mod:`isyb.study.simulate`) has a ``ref`` population and a
``cn200`` population whose faces are reshaped by the CAPIIO→CN200 matrix
squared (relative to the brain: not an affine difference of the whole head),
made of phantoms plus one real head resampled to 3 mm in each population.
One template per population. The F and p values these tests see describe the
simulated cohort, not real populations.

What is asserted, and why:

* the negative control (the same template under two names) gives exactly
  the same DV for every subject and no template effect;
* with one template of each face shape, the shape-matched template does
  *not* remove more face: this was measured, not wished for. Per-subject NMI
  differences go both ways (up to about 0.06), and the template × population
  interaction of the mixed ANOVA is not significant (measured F(1, 4) = 0.62,
  p = 0.47; simulation only). That is what isyb's design predicts: the face
  rule is a set of half-spaces anchored on the template's brain, generous
  enough to hold the whole face, and the registration is dominated by the
  cranium, so the template's face shape only moves the region's borders a
  little, in no consistent direction. (ISYB's reported template effect comes
  from template-space face masks, which isyb does not use.) The test asserts
  that no significant matched-template advantage appears (interaction
  p > 0.05) and that the differences stay small (< 0.1): if a change to the
  engine makes the template's face shape matter, this test says so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from isyb.study.simulate import (
    POPULATIONS,
    SIMULATION_NOTE,
    build_templates,
    face_weight,
    load_fsl_matrix,
    matched_differences,
    matrix_power,
    phantom_head,
    run_simulation,
)


@pytest.fixture(scope="module")
def cn200_matrix(data_root: Path) -> np.ndarray:
    path = data_root / "transforms" / "CAPIIO_to_CN200.mat"
    if not path.is_file():
        pytest.skip(f"{path} not found in the test data")
    return load_fsl_matrix(path)


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


@pytest.fixture(scope="module")
def simulated(data_root: Path, cn200_matrix: np.ndarray, isyb_home: Path,
              tmp_path_factory: pytest.TempPathFactory) -> dict:
    real = "pycortex-S1_T1w.nii.gz"
    if not (data_root / "heads" / real).is_file():
        pytest.skip(f"{data_root / 'heads' / real} not found in the test data")
    out = tmp_path_factory.mktemp("simulated")
    return run_simulation(data_root, out, phantoms_per_population=2, real_heads=[real],
                          strength=2.0, voxel_mm=3.0, nprocs=2, seed=0)


def _template_rows(anova, analysis: str):
    return anova[(anova["analysis"] == analysis) & (anova["Source"] == "template")].iloc[0]


def test_cohort_has_two_populations_and_every_pair_ran(simulated: dict) -> None:
    metrics = simulated["main"]["metrics"]
    assert sorted(metrics["subset"].unique()) == sorted(POPULATIONS)
    assert metrics.groupby("subset")["subject"].nunique().tolist() == [3, 3]
    assert (metrics["status"] == "ok").all() and metrics["brain_changed_voxels"].eq(0).all()
    assert SIMULATION_NOTE in (simulated["out"] / "study" / "report.html").read_text()


def test_shape_matched_template_removes_no_more_face(simulated: dict) -> None:
    """Measured, not wished for: the matched template is no better (simulation only)."""
    diffs = matched_differences(simulated["main"]["metrics"], simulated["names"])
    assert np.abs(diffs["matched_minus_mismatched"]).max() < 0.1
    anova = simulated["main"]["anova"]
    for analysis in ("mixed", "rm:pooled"):
        row = _template_rows(anova, analysis)
        assert np.isfinite(row["F"]) and 0.0 <= row["p_unc"] <= 1.0
    mixed = anova[anova["analysis"] == "mixed"].set_index("Source")
    assert mixed.loc["Interaction", "p_unc"] > 0.05


def test_identical_templates_show_no_effect(simulated: dict) -> None:
    metrics = simulated["control"]["metrics"]
    spread = metrics.groupby("subject")["nmi"].agg(lambda v: v.max() - v.min())
    assert (spread == 0.0).all()  # deterministic registration: the same numbers, bit for bit
    row = _template_rows(simulated["control"]["anova"], "rm:pooled")
    assert not (row["F"] > 1e-9)  # F is 0 or undefined (0/0), never an effect
    assert not (row["p_unc"] < 0.99)
