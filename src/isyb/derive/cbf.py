"""Cerebral blood flow (CBF, ml/100 g/min) from single-PLD ASL: white paper or GE 3D pCASL.

Alsop et al. (2015), "Recommended implementation of arterial spin-labeled
perfusion MRI for clinical applications", Magn Reson Med 73:102-116, Eq. 1
(pCASL) and Eq. 2 (PASL, QUIPSS II):

    pCASL: CBF = 6000 λ ΔM e^(PLD/T1b) / (2 α T1b M0 (1 - e^(-τ/T1b)))
    PASL:  CBF = 6000 λ ΔM e^(TI/T1b)  / (2 α TI1 M0)

with ΔM = control - label, λ = 0.9 ml/g (brain/blood partition coefficient),
T1b = 1.65 s (blood T1 at 3 T), τ the labeling duration, PLD the
post-labeling delay (for PASL, TI the inversion time, which BIDS stores in
``PostLabelingDelay``, and TI1 the bolus cut-off delay
``BolusCutOffDelayTime``), and α the labeling efficiency: the sidecar's
``LabelingEfficiency`` when given, else the white paper's 0.85 (pCASL) or
0.98 (PASL). The factor 6000 turns ml/g/s into ml/100 g/min.

Background suppression lowers the effective efficiency: each inversion pulse
keeps about 95 % of the label (white paper, "Background suppression"), so α
is multiplied by 0.95 per pulse when ``BackgroundSuppression`` is true and
``BackgroundSuppressionNumberPulses`` is given. When ``BackgroundSuppression``
is true without a pulse count, that is an error (the CBF would be biased by
an unknown factor).

M0 comes from the ``M0Type``: ``Included`` (the mean of the run's ``m0scan``
volumes, :data:`aslcontext`), ``Separate`` (a separate ``m0scan`` image,
given by the caller), ``Estimate`` (the sidecar's ``M0Estimate``, a number).
``Absent`` cannot give absolute CBF and is an error. When the M0 volumes were
acquired with a short repetition time (``RepetitionTimePreparation`` of the
M0 volumes, 0 < TR < 5 s), M0 is corrected for incomplete recovery of
grey matter, M0 / (1 - e^(-TR/T1gm)) with T1gm = 1.3 s; a TR of 0 or missing
is taken as full recovery, and the summary says which was used.

ΔM is the mean over label/control pairs (mean of all control volumes minus
mean of all label volumes), or the mean of ``deltam`` volumes. 2-D readouts
get a per-slice PLD, PLD + ``SliceTiming[k]``; 3-D readouts one PLD.
Multi-PLD runs are not handled (an error says so).

GE 3D pCASL (``formula="ge"``): GE's product quantification of its 3D
spiral pCASL, whose outputs are a perfusion-weighted difference image PW
(scaled by the scanner) and a proton-density reference PD acquired by
saturation recovery:

    CBF = 6000 λ (1 - e^(-ST/T1t)) e^(PLD/T1b)
          / (2 α T1b (1 - e^(-LD/T1b))) · PW / (SF · NEX · PD)

with λ = 0.9, ST = 2 s (saturation time of the PD image), T1t = 1.2 s
(tissue T1: the factor 1 - e^(-ST/T1t) corrects the PD's partial
saturation), T1b = 1.6 s, α = 0.6 (0.8 labeling efficiency × 0.75 for
background suppression), SF the PW scaling factor (32 on GE's product
sequence) and NEX the number of excitations (averages) of the PW image.
PLD and LD come from the sidecar (``PostLabelingDelay``,
``LabelingDuration``); SF and NEX are not BIDS fields, so the caller gives
them (:class:`GEScaling`). The sidecar's ``LabelingEfficiency`` and
background-suppression fields are not used: α = 0.6 already holds them, and
no separate M0 recovery correction is applied (the ST term is that
correction). Source: GE's 3D ASL (Functool) documentation as reproduced in
the University of Michigan fMRI lab's ``cbf_calc_ge.m``
(HernandezGarciaLab/Matlab_ASL_repo, flow/) with exactly these constants,
and as used by e.g. Xu et al. (2010), NMR Biomed 23:286-293. It is the
white-paper pCASL equation with PD / (1 - e^(-ST/T1t)) as M0, PW / (SF NEX)
as ΔM, α = 0.6 and T1b = 1.6 s: with the same ΔM, M0, α and T1b the two
formulas agree exactly.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from isyb.errors import IsybError

PARTITION_COEFFICIENT = 0.9  # λ, ml/g
T1_BLOOD_3T = 1.65  # s
T1_GREY_MATTER_3T = 1.3  # s, for the M0 recovery correction
DEFAULT_EFFICIENCY = {"PCASL": 0.85, "CASL": 0.85, "PASL": 0.98}
BACKGROUND_PULSE_EFFICIENCY = 0.95
GE_T1_BLOOD = 1.6  # s
GE_T1_TISSUE = 1.2  # s
GE_SATURATION_TIME = 2.0  # s, saturation recovery time of GE's PD image
GE_EFFICIENCY = 0.6  # 0.8 labeling × 0.75 background suppression
FORMULAS = ("whitepaper", "ge")
VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf", "noRF")


class ASLInputError(IsybError, ValueError):
    """An ASL run or sidecar that does not allow an absolute CBF."""


@dataclass(frozen=True)
class GEScaling:
    """The GE scanner quantities of the PW image that BIDS does not store.

    ``scaling_factor`` is SF_PW (32 on GE's product 3D pCASL), ``nex`` the
    number of excitations (averages) of the PW image.
    """

    scaling_factor: float
    nex: float

    def __post_init__(self) -> None:
        for name in ("scaling_factor", "nex"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
                raise ASLInputError(f"GE {name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class ASLParameters:
    """What the formula needs, read from a BIDS ASL sidecar (seconds)."""

    labeling_type: str
    post_labeling_delay: float
    labeling_duration: float | None
    bolus_cutoff_delay: float | None
    efficiency: float
    m0_type: str
    m0_estimate: float | None
    m0_repetition_time: float | None
    slice_times: np.ndarray | None


def _required(metadata: Mapping[str, Any], key: str) -> Any:
    if key not in metadata or metadata[key] in (None, ""):
        raise ASLInputError(f"the ASL sidecar lacks {key}, which CBF needs")
    return metadata[key]


def _single(value: Any, key: str) -> float:
    values = np.atleast_1d(np.asarray(value, dtype=float))
    if values.size == 0 or not np.all(np.isfinite(values)):
        raise ASLInputError(f"{key} must be a number, got {value!r}")
    if not np.allclose(values, values[0]):
        raise ASLInputError(f"{key} has several values ({values.size}): multi-PLD or "
                            "multi-delay ASL is not handled")
    return float(values[0])


def _require_ge(ge: GEScaling | None) -> GEScaling:
    if ge is None:
        raise ASLInputError("the GE formula needs the PW scaling factor and NEX, which are "
                            "not BIDS fields: give GEScaling(scaling_factor, nex)")
    return ge


def _check_formula(formula: str) -> None:
    if formula not in FORMULAS:
        raise ASLInputError(f"unknown CBF formula {formula!r}: use {' or '.join(FORMULAS)}")


def read_parameters(metadata: Mapping[str, Any], *,
                    formula: str = "whitepaper") -> ASLParameters:
    """Check a BIDS ASL sidecar and collect the parameters of the CBF formula.

    ``formula="ge"`` (GE 3D pCASL) needs a pCASL run and fixes α at
    :data:`GE_EFFICIENCY`, ignoring the sidecar's efficiency and
    background-suppression fields.
    """
    _check_formula(formula)
    labeling = str(_required(metadata, "ArterialSpinLabelingType")).upper()
    if labeling not in DEFAULT_EFFICIENCY:
        raise ASLInputError(f"ArterialSpinLabelingType {labeling!r} is not CASL, PCASL or PASL")
    if formula == "ge" and labeling == "PASL":
        raise ASLInputError("the GE formula is for GE's 3D pCASL; this run is PASL")
    pld = _single(_required(metadata, "PostLabelingDelay"), "PostLabelingDelay")
    duration = cutoff = None
    if labeling in ("PCASL", "CASL"):
        duration = _single(_required(metadata, "LabelingDuration"), "LabelingDuration")
        if duration <= 0:
            raise ASLInputError("LabelingDuration must be positive")
    else:
        if not metadata.get("BolusCutOffFlag", False):
            raise ASLInputError("PASL without a bolus cut-off (BolusCutOffFlag false): the "
                                "bolus duration is unknown, so CBF cannot be computed")
        cutoff = _single(_required(metadata, "BolusCutOffDelayTime"), "BolusCutOffDelayTime")
    efficiency = float(metadata.get("LabelingEfficiency") or DEFAULT_EFFICIENCY[labeling])
    if formula == "ge":
        efficiency = GE_EFFICIENCY
    elif metadata.get("BackgroundSuppression"):
        pulses = metadata.get("BackgroundSuppressionNumberPulses")
        if pulses is None:
            raise ASLInputError("BackgroundSuppression is true but "
                                "BackgroundSuppressionNumberPulses is missing: the labeling "
                                "efficiency would be biased by an unknown factor")
        efficiency *= BACKGROUND_PULSE_EFFICIENCY ** int(pulses)
    m0_type = str(_required(metadata, "M0Type"))
    if m0_type == "Absent":
        raise ASLInputError("M0Type is Absent: absolute CBF needs an M0")
    if m0_type not in ("Included", "Separate", "Estimate"):
        raise ASLInputError(f"unknown M0Type {m0_type!r}")
    estimate = float(_required(metadata, "M0Estimate")) if m0_type == "Estimate" else None
    tr = metadata.get("RepetitionTimePreparation")
    m0_tr = _single(tr, "RepetitionTimePreparation") if tr is not None else None
    slice_times = None
    if str(metadata.get("MRAcquisitionType", "")).upper() == "2D" and metadata.get(
            "SliceTiming") is not None:
        slice_times = np.asarray(metadata["SliceTiming"], dtype=float)
    return ASLParameters(labeling, pld, duration, cutoff, efficiency, m0_type, estimate,
                         m0_tr, slice_times)


def m0_recovery_factor(repetition_time: float | None, t1: float = T1_GREY_MATTER_3T) -> float:
    """1 - e^(-TR/T1) for an M0 acquired with a short TR (0 < TR < 5 s), else 1."""
    if repetition_time is None or not 0 < repetition_time < 5.0:
        return 1.0
    return 1.0 - math.exp(-repetition_time / t1)


def split_series(series: np.ndarray, volume_types: Sequence[str]) -> dict[str, np.ndarray]:
    """Mean image of each volume type of a 4-D ASL series (``aslcontext.tsv`` order)."""
    if series.ndim != 4:
        raise ASLInputError(f"an ASL run is 4-D, got shape {series.shape}")
    if len(volume_types) != series.shape[3]:
        raise ASLInputError(f"aslcontext.tsv lists {len(volume_types)} volumes, the image has "
                            f"{series.shape[3]}")
    unknown = sorted(set(volume_types) - set(VOLUME_TYPES))
    if unknown:
        raise ASLInputError(f"unknown volume_type(s) in aslcontext.tsv: {', '.join(unknown)}")
    kinds = np.asarray(volume_types)
    return {kind: series[..., kinds == kind].astype(np.float64).mean(axis=-1)
            for kind in set(volume_types)}


def perfusion(means: Mapping[str, np.ndarray]) -> np.ndarray:
    """ΔM = control - label (means over the run), or the mean ``deltam``."""
    if "deltam" in means:
        return np.asarray(means["deltam"], dtype=np.float64)
    if "control" not in means or "label" not in means:
        raise ASLInputError("the run needs control and label volumes (or deltam) for CBF")
    return means["control"] - means["label"]


def _pld_map(shape: tuple[int, ...], params: ASLParameters) -> np.ndarray:
    """The PLD (s) per voxel: one value, or PLD + SliceTiming[k] along the third axis."""
    pld = np.full(shape, params.post_labeling_delay)
    if params.slice_times is not None:
        if params.slice_times.size != shape[2]:
            raise ASLInputError(f"SliceTiming has {params.slice_times.size} values for "
                                f"{shape[2]} slices")
        pld = pld + params.slice_times[None, None, :]
    return pld


def cbf_map(delta_m: np.ndarray, m0: np.ndarray | float, params: ASLParameters, *,
            mask: np.ndarray | None = None, t1_blood: float | None = None,
            partition: float = PARTITION_COEFFICIENT, formula: str = "whitepaper",
            ge: GEScaling | None = None) -> np.ndarray:
    """CBF (ml/100 g/min) per voxel by the white-paper or GE formula; 0 outside ``mask``.

    ``delta_m`` and ``m0`` share a grid (``m0`` may be a number, for
    ``M0Type: Estimate``). For ``formula="ge"`` they are GE's PW and PD
    images and ``ge`` gives their scaling. ``t1_blood`` defaults to the
    formula's own (1.65 s white paper, 1.6 s GE). The slice axis for
    per-slice PLDs is the third. Voxels where M0 is not positive are 0.
    """
    _check_formula(formula)
    delta_m = np.asarray(delta_m, dtype=np.float64)
    pld = _pld_map(delta_m.shape, params)
    m0 = np.broadcast_to(np.asarray(m0, dtype=np.float64), delta_m.shape)
    if formula == "ge":
        ge = _require_ge(ge)
        t1b = GE_T1_BLOOD if t1_blood is None else t1_blood
        saturation = 1.0 - math.exp(-GE_SATURATION_TIME / GE_T1_TISSUE)
        numerator = 6000.0 * partition * saturation * delta_m * np.exp(pld / t1b)
        denominator = (2.0 * params.efficiency * t1b * (1.0 - math.exp(
            -params.labeling_duration / t1b)) * ge.scaling_factor * ge.nex * m0)
    else:
        t1b = T1_BLOOD_3T if t1_blood is None else t1_blood
        if params.labeling_type == "PASL":
            denominator = 2.0 * params.efficiency * params.bolus_cutoff_delay * m0
        else:
            denominator = (2.0 * params.efficiency * t1b * m0
                           * (1.0 - math.exp(-params.labeling_duration / t1b)))
        numerator = 6000.0 * partition * delta_m * np.exp(pld / t1b)
    out = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=m0 > 0)
    if mask is not None:
        out[~np.asarray(mask, dtype=bool)] = 0.0
    return out


def asl_cbf(series: np.ndarray, volume_types: Sequence[str], metadata: Mapping[str, Any], *,
            m0_image: np.ndarray | None = None, mask: np.ndarray | None = None,
            formula: str = "whitepaper",
            ge: GEScaling | None = None) -> tuple[np.ndarray, dict]:
    """CBF map of one ASL run and a summary of what was used.

    ``series`` is the 4-D run, ``volume_types`` its ``aslcontext.tsv`` column,
    ``metadata`` its sidecar, ``m0_image`` the separate M0 (``M0Type:
    Separate``; a 4-D M0 is averaged). ``formula="ge"`` quantifies a GE 3D
    pCASL run (PW as ``deltam``, PD as ``m0scan``) with ``ge``'s scaling.
    """
    params = read_parameters(metadata, formula=formula)
    scaling = _require_ge(ge) if formula == "ge" else None
    means = split_series(np.asarray(series), volume_types)
    delta_m = perfusion(means)
    if params.m0_type == "Included":
        if "m0scan" not in means:
            raise ASLInputError("M0Type is Included but aslcontext.tsv has no m0scan volume")
        m0: np.ndarray | float = means["m0scan"]
    elif params.m0_type == "Separate":
        if m0_image is None:
            raise ASLInputError("M0Type is Separate: the run's m0scan image is needed")
        m0 = np.asarray(m0_image, dtype=np.float64)
        m0 = m0.mean(axis=-1) if m0.ndim == 4 else m0
        if m0.shape != delta_m.shape:
            raise ASLInputError(f"the M0 image grid {m0.shape} differs from the ASL grid "
                                f"{delta_m.shape}")
    else:
        m0 = float(params.m0_estimate)
    if scaling is not None:  # the PD's saturation recovery is a term of the GE formula
        recovery = 1.0 - math.exp(-GE_SATURATION_TIME / GE_T1_TISSUE)
        cbf = cbf_map(delta_m, m0, params, mask=mask, formula="ge", ge=scaling)
    else:
        recovery = m0_recovery_factor(params.m0_repetition_time)
        cbf = cbf_map(delta_m, np.asarray(m0) / recovery, params, mask=mask)
    summary = {"formula": formula, "labeling_type": params.labeling_type,
               "post_labeling_delay_s": params.post_labeling_delay,
               "labeling_duration_s": params.labeling_duration,
               "labeling_efficiency": params.efficiency, "m0_type": params.m0_type,
               "m0_recovery_factor": recovery,
               "t1_blood_s": GE_T1_BLOOD if formula == "ge" else T1_BLOOD_3T,
               "partition_coefficient": PARTITION_COEFFICIENT,
               "pairs": int(min(list(volume_types).count("control"),
                                list(volume_types).count("label")))}
    if scaling is not None:
        summary.update(ge_scaling_factor=scaling.scaling_factor, ge_nex=scaling.nex,
                       saturation_time_s=GE_SATURATION_TIME, t1_tissue_s=GE_T1_TISSUE)
    return cbf, summary
