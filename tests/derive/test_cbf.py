"""CBF from ASL: the white-paper formula on synthetic runs of known perfusion, and real pCASL."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from isyb.derive.cbf import (
    PARTITION_COEFFICIENT,
    T1_BLOOD_3T,
    ASLInputError,
    GEScaling,
    asl_cbf,
    cbf_map,
    read_parameters,
)

PCASL = {"ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.8,
         "LabelingDuration": 1.8, "M0Type": "Included", "BackgroundSuppression": False,
         "MRAcquisitionType": "3D"}


def _truth(shape=(20, 20, 8)) -> tuple[np.ndarray, np.ndarray]:
    """A CBF map (GM 60, WM 25 ml/100 g/min) and an M0 map."""
    cbf = np.full(shape, 25.0)
    cbf[:10] = 60.0
    m0 = np.full(shape, 1000.0)
    m0[:10] = 1200.0
    return cbf, m0


def _delta_m(cbf: np.ndarray, m0: np.ndarray, alpha: float, pld: np.ndarray | float,
             bolus: float, pasl: bool = False) -> np.ndarray:
    """Invert the white-paper formula (Alsop 2015 Eq. 1/2) by hand."""
    if pasl:
        return cbf * 2 * alpha * bolus * m0 / (6000 * PARTITION_COEFFICIENT
                                               * np.exp(pld / T1_BLOOD_3T))
    return (cbf * 2 * alpha * T1_BLOOD_3T * m0 * (1 - math.exp(-bolus / T1_BLOOD_3T))
            / (6000 * PARTITION_COEFFICIENT * np.exp(pld / T1_BLOOD_3T)))


def _series(delta_m: np.ndarray, m0: np.ndarray, pairs: int, noise: float,
            m0_volumes: int = 2, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    volumes, types = [], []
    for _ in range(m0_volumes):
        volumes.append(m0 + rng.normal(0, noise, m0.shape))
        types.append("m0scan")
    control = 0.6 * m0  # background-level tissue signal, cancels in the subtraction
    for _ in range(pairs):
        volumes.append(control - delta_m + rng.normal(0, noise, m0.shape))
        types.append("label")
        volumes.append(control + rng.normal(0, noise, m0.shape))
        types.append("control")
    return np.stack(volumes, axis=-1), types


@pytest.mark.parametrize("case", ["pcasl", "pcasl-efficiency", "pasl", "2d-slices"])
def test_known_perfusion_is_recovered_within_one_percent(case: str) -> None:
    truth, m0 = _truth()
    metadata = dict(PCASL)
    alpha, pld, bolus, pasl = 0.85, 1.8, 1.8, False
    if case == "pcasl-efficiency":
        metadata.update(LabelingEfficiency=0.72, BackgroundSuppression=True,
                        BackgroundSuppressionNumberPulses=2)
        alpha = 0.72 * 0.95 ** 2
    elif case == "pasl":
        metadata = {"ArterialSpinLabelingType": "PASL", "PostLabelingDelay": 1.8,
                    "BolusCutOffFlag": True, "BolusCutOffDelayTime": 0.8, "M0Type": "Included"}
        alpha, bolus, pasl = 0.98, 0.8, True
    elif case == "2d-slices":
        metadata.update(MRAcquisitionType="2D", SliceTiming=list(np.arange(8) * 0.05))
        pld = 1.8 + np.arange(8)[None, None, :] * 0.05
    delta_m = _delta_m(truth, m0, alpha, pld, bolus, pasl)
    series, types = _series(delta_m, m0, pairs=60, noise=2.0)
    cbf, summary = asl_cbf(series, types, metadata)
    for value in (60.0, 25.0):
        region = truth == value
        assert cbf[region].mean() == pytest.approx(value, rel=0.01)
    assert summary["pairs"] == 60
    noiseless, _ = asl_cbf(*_series(delta_m, m0, pairs=2, noise=0.0), metadata)
    np.testing.assert_allclose(noiseless, truth, rtol=1e-9)


def test_m0_from_an_estimate_a_separate_image_and_a_short_tr() -> None:
    truth, m0 = _truth()
    delta_m = _delta_m(truth, m0, 0.85, 1.8, 1.8)
    series, types = _series(delta_m, m0, pairs=2, noise=0.0, m0_volumes=0)
    separate, _ = asl_cbf(series, types, {**PCASL, "M0Type": "Separate"}, m0_image=m0)
    np.testing.assert_allclose(separate, truth, rtol=1e-9)
    uniform = _delta_m(truth, np.full(truth.shape, 1000.0), 0.85, 1.8, 1.8)
    series, types = _series(uniform, m0, pairs=2, noise=0.0, m0_volumes=0)
    estimate, _ = asl_cbf(series, types, {**PCASL, "M0Type": "Estimate", "M0Estimate": 1000})
    np.testing.assert_allclose(estimate, truth, rtol=1e-9)
    # an M0 measured with TR 2 s holds 1 - e^(-2/1.3) of the full M0; the correction undoes it
    short = m0 * (1 - math.exp(-2.0 / 1.3))
    series, types = _series(delta_m, short, pairs=2, noise=0.0)
    series[..., 2:] = _series(delta_m, m0, pairs=2, noise=0.0)[0][..., 2:]
    corrected, summary = asl_cbf(series, types, {**PCASL, "RepetitionTimePreparation": 2.0})
    np.testing.assert_allclose(corrected, truth, rtol=1e-9)
    assert summary["m0_recovery_factor"] == pytest.approx(1 - math.exp(-2.0 / 1.3))


@pytest.mark.parametrize(("change", "message"), [
    ({"LabelingDuration": None}, "lacks LabelingDuration"),
    ({"M0Type": "Absent"}, "M0Type is Absent"),
    ({"BackgroundSuppression": True}, "BackgroundSuppressionNumberPulses is missing"),
    ({"PostLabelingDelay": [1.5, 2.0]}, "multi-PLD"),
    ({"ArterialSpinLabelingType": "VSASL"}, "not CASL, PCASL or PASL"),
])
def test_missing_or_unusable_fields_are_clear_errors(change: dict, message: str) -> None:
    with pytest.raises(ASLInputError, match=message):
        read_parameters({**PCASL, **change})


def test_context_must_match_the_series() -> None:
    series = np.zeros((4, 4, 2, 5))
    with pytest.raises(ASLInputError, match="lists 4 volumes, the image has 5"):
        asl_cbf(series, ["m0scan", "label", "control", "label"], PCASL)
    with pytest.raises(ASLInputError, match="no m0scan"):
        asl_cbf(series, ["label", "control"] * 2 + ["label"], PCASL)


def test_real_pcasl_gives_physiological_grey_matter_cbf(data_root: Path) -> None:
    from isyb.head.tissue import fit_mixture
    from isyb.qc.bold import bold_brain_mask

    folder = data_root / "asl" / "perf"
    image = nib.load(str(folder / "sub-01_asl.nii.gz"))
    types = (folder / "sub-01_aslcontext.tsv").read_text().split()[1:]
    metadata = json.loads((folder / "sub-01_asl.json").read_text())
    series = np.asarray(image.dataobj, dtype=np.float64)
    m0 = series[..., np.asarray(types) == "m0scan"].mean(axis=-1)
    brain = bold_brain_mask(m0)
    cbf, summary = asl_cbf(series, types, metadata, mask=brain)
    # GM: the middle class of a 3-class mixture of the PD-weighted M0 (CSF > GM > WM)
    values = m0[brain]
    grey = np.zeros_like(brain)
    grey[brain] = fit_mixture(values).posteriors(values).argmax(axis=1) == 1
    mean_gm = float(cbf[grey].mean())
    print(f"real pCASL: mean GM CBF {mean_gm:.1f} ml/100 g/min over {int(grey.sum())} voxels, "
          f"brain {float(cbf[brain].mean()):.1f}")
    assert 30.0 <= mean_gm <= 80.0
    assert summary["labeling_efficiency"] == 0.72 and summary["m0_type"] == "Included"


# GE 3D pCASL product output: one PW (deltam) and one PD (m0scan) volume; the sidecar says
# background suppression without a pulse count, which the GE formula does not need.
GE = {"ArterialSpinLabelingType": "PCASL", "PostLabelingDelay": 1.525, "LabelingDuration": 1.45,
      "M0Type": "Included", "BackgroundSuppression": True, "MRAcquisitionType": "3D"}


def test_ge_formula_matches_a_hand_computation() -> None:
    pw = np.full((3, 3, 2), 960.0)
    pd = np.full((3, 3, 2), 2000.0)
    pd[0] = 0.0  # outside the PD: 0, not a division by zero
    # 6000 λ (1 - e^(-ST/T1t)) e^(PLD/T1b) / (2 α T1b (1 - e^(-LD/T1b))) · PW / (SF NEX PD)
    by_hand = (6000 * 0.9 * (1 - math.exp(-2.0 / 1.2)) * math.exp(1.525 / 1.6)
               / (2 * 0.6 * 1.6 * (1 - math.exp(-1.45 / 1.6))) * 960.0 / (32 * 3 * 2000.0))
    assert by_hand == pytest.approx(49.644, abs=1e-3)
    cbf, summary = asl_cbf(np.stack([pw, pd], axis=-1), ["deltam", "m0scan"], GE,
                           formula="ge", ge=GEScaling(scaling_factor=32, nex=3))
    np.testing.assert_allclose(cbf[1:], by_hand, rtol=1e-12)
    assert np.all(cbf[0] == 0.0)
    assert summary["formula"] == "ge" and summary["labeling_efficiency"] == 0.6
    assert summary["t1_blood_s"] == 1.6 and summary["ge_nex"] == 3
    assert summary["m0_recovery_factor"] == pytest.approx(1 - math.exp(-2.0 / 1.2))


def test_ge_and_white_paper_formulas_agree_at_matched_assumptions() -> None:
    """GE = white paper with ΔM = PW / (SF NEX), M0 = PD / (1 - e^(-ST/T1t)), α 0.6, T1b 1.6.

    At those matched assumptions the ratio is exactly 1. With each formula's own defaults
    (white paper α 0.85 without background suppression, T1b 1.65 s) the ratio GE / white
    paper for the same ΔM and M0 is (0.85 / 0.6) · g(1.6) / g(1.65), with
    g(T1b) = e^(PLD/T1b) / (T1b (1 - e^(-LD/T1b))): 1.4754 at PLD 1.525 s, LD 1.45 s.
    """
    truth, m0 = _truth()
    delta_m = _delta_m(truth, m0, 0.85, 1.525, 1.45)
    scaling = GEScaling(scaling_factor=32, nex=3)
    pw = delta_m * 32 * 3
    pd = m0 * (1 - math.exp(-2.0 / 1.2))
    ge_params = read_parameters(GE, formula="ge")
    ge = cbf_map(pw, pd, ge_params, formula="ge", ge=scaling)
    matched = cbf_map(delta_m, m0, dataclasses.replace(ge_params, efficiency=0.6),
                      t1_blood=1.6)
    np.testing.assert_allclose(ge, matched, rtol=1e-12)
    white_paper = cbf_map(delta_m, m0, read_parameters({**GE, "BackgroundSuppression": False}))
    np.testing.assert_allclose(white_paper, truth, rtol=1e-12)

    def g(t1b: float) -> float:
        return math.exp(1.525 / t1b) / (t1b * (1 - math.exp(-1.45 / t1b)))

    ratio = 0.85 / 0.6 * g(1.6) / g(1.65)
    assert ratio == pytest.approx(1.4754, abs=1e-4)
    np.testing.assert_allclose(ge / white_paper, ratio, rtol=1e-12)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: asl_cbf(np.ones((2, 2, 2, 2)), ["deltam", "m0scan"], GE, formula="ge"),
     "needs the PW scaling factor and NEX"),
    (lambda: cbf_map(np.ones(3), 1.0, read_parameters(GE, formula="ge"), formula="ge"),
     "not BIDS fields"),
    (lambda: GEScaling(scaling_factor=32, nex=0), "nex must be a positive number"),
    (lambda: GEScaling(scaling_factor=None, nex=3), "scaling_factor must be a positive"),
    (lambda: read_parameters({**GE, "ArterialSpinLabelingType": "PASL", "BolusCutOffFlag": True,
                              "BolusCutOffDelayTime": 0.8}, formula="ge"), "this run is PASL"),
    (lambda: read_parameters(GE, formula="siemens"), "unknown CBF formula"),
    (lambda: read_parameters(GE), "BackgroundSuppressionNumberPulses is missing"),
])
def test_ge_formula_inputs_are_checked(call, message: str) -> None:
    with pytest.raises(ASLInputError, match=message):
        call()
