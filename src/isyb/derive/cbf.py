"""Cerebral blood flow (CBF, ml/100 g/min) from single-PLD ASL, as in the ASL white paper.

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
"""

from __future__ import annotations

import math
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
VOLUME_TYPES = ("control", "label", "m0scan", "deltam", "cbf", "noRF")


class ASLInputError(IsybError, ValueError):
    """An ASL run or sidecar that does not allow an absolute CBF."""


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


def read_parameters(metadata: Mapping[str, Any]) -> ASLParameters:
    """Check a BIDS ASL sidecar and collect the parameters of the white-paper formula."""
    labeling = str(_required(metadata, "ArterialSpinLabelingType")).upper()
    if labeling not in DEFAULT_EFFICIENCY:
        raise ASLInputError(f"ArterialSpinLabelingType {labeling!r} is not CASL, PCASL or PASL")
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
    if metadata.get("BackgroundSuppression"):
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


def cbf_map(delta_m: np.ndarray, m0: np.ndarray | float, params: ASLParameters, *,
            mask: np.ndarray | None = None, t1_blood: float = T1_BLOOD_3T,
            partition: float = PARTITION_COEFFICIENT) -> np.ndarray:
    """CBF (ml/100 g/min) per voxel by the white-paper formula; 0 outside ``mask``.

    ``delta_m`` and ``m0`` share a grid (``m0`` may be a number, for
    ``M0Type: Estimate``). The slice axis for per-slice PLDs is the third.
    Voxels where M0 is not positive are 0.
    """
    delta_m = np.asarray(delta_m, dtype=np.float64)
    pld = np.full(delta_m.shape, params.post_labeling_delay)
    if params.slice_times is not None:
        if params.slice_times.size != delta_m.shape[2]:
            raise ASLInputError(f"SliceTiming has {params.slice_times.size} values for "
                                f"{delta_m.shape[2]} slices")
        pld = pld + params.slice_times[None, None, :]
    m0 = np.broadcast_to(np.asarray(m0, dtype=np.float64), delta_m.shape)
    if params.labeling_type == "PASL":
        denominator = 2.0 * params.efficiency * params.bolus_cutoff_delay * m0
    else:
        denominator = (2.0 * params.efficiency * t1_blood * m0
                       * (1.0 - math.exp(-params.labeling_duration / t1_blood)))
    numerator = 6000.0 * partition * delta_m * np.exp(pld / t1_blood)
    out = np.divide(numerator, denominator, out=np.zeros_like(numerator), where=m0 > 0)
    if mask is not None:
        out[~np.asarray(mask, dtype=bool)] = 0.0
    return out


def asl_cbf(series: np.ndarray, volume_types: Sequence[str], metadata: Mapping[str, Any], *,
            m0_image: np.ndarray | None = None,
            mask: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """CBF map of one ASL run and a summary of what was used.

    ``series`` is the 4-D run, ``volume_types`` its ``aslcontext.tsv`` column,
    ``metadata`` its sidecar, ``m0_image`` the separate M0 (``M0Type:
    Separate``; a 4-D M0 is averaged).
    """
    params = read_parameters(metadata)
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
    recovery = m0_recovery_factor(params.m0_repetition_time)
    m0 = np.asarray(m0) / recovery
    cbf = cbf_map(delta_m, m0, params, mask=mask)
    summary = {"labeling_type": params.labeling_type, "post_labeling_delay_s":
               params.post_labeling_delay, "labeling_duration_s": params.labeling_duration,
               "labeling_efficiency": params.efficiency, "m0_type": params.m0_type,
               "m0_recovery_factor": recovery, "t1_blood_s": T1_BLOOD_3T,
               "partition_coefficient": PARTITION_COEFFICIENT,
               "pairs": int(min(list(volume_types).count("control"),
                                list(volume_types).count("label")))}
    return cbf, summary
