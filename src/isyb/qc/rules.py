"""Exclusion rules of the data descriptor, applied to a group table of QC metrics.

Two rules, as in the ISYB data descriptor:

1. **SD rule.** A run is excluded when a metric lies strictly beyond
   ``sd_threshold`` standard deviations of the group mean:
   ``|x - mean| > k * SD``. Mean and SD are computed **once**, over every run
   of the same modality that has a value (SD with ``ddof=1``, the sample SD),
   and are not recomputed after removing the outliers. This is what "values
   beyond ±3 SD of the group mean" says; an iterative (re-estimated) SD
   would exclude more runs in a skewed distribution, and a run's fate would
   depend on the order of removals. A metric with fewer than
   :data:`MIN_RUNS_FOR_SD` values, or with SD = 0, triggers nothing.
   Runs whose noise was measured differently are never pooled: when the
   table has a ``noise_source`` column (T1w/T2w: ``air`` or ``brain``, see
   :func:`isyb.qc.anat.anat_metrics`), mean and SD are computed within each
   source, and each run is compared with the runs of its own source only.
   With n runs the largest possible ``|z|`` is ``(n - 1) / sqrt(n)``
   (Shiffler, Am Stat 42(1):79, 1988), so below :func:`min_runs_to_exclude`
   runs (11 for k = 3) the rule cannot exclude anything.
2. **FD rule** (BOLD only). A run is excluded when its mean framewise
   displacement ``fd_mean`` is strictly above ``fd_threshold`` mm, unless its
   motion could not be measured (``motion_reliable`` = 0, see
   :func:`isyb.qc.bold.motion_reliability`): such a run is listed by
   :func:`unreliable_motion`, not excluded on a number that is noise.

Both rules look at the same, unfiltered group: the FD rule does not change
the mean and SD that the SD rule uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Metrics the descriptor screened with the SD rule, per modality
#: (its Figs. 1-2: SNR, FBER, CNR, EFC, FWHM for T1w; SNR, FBER, EFC, FWHM,
#: mean FD, standardized DVARS, GCOR for resting-state BOLD). For T1w/T2w
#: these are isyb's own SNR, FBER and CNR (the descriptor's definitions, see
#: :func:`isyb.qc.anat.anat_metrics`), defined on every scan; ``fwhm_avg``
#: is in voxels, as MRIQC's.
SD_METRICS: dict[str, tuple[str, ...]] = {
    "T1w": ("isyb_snr", "isyb_fber", "isyb_cnr", "efc", "fwhm_avg"),
    "T2w": ("isyb_snr", "isyb_fber", "isyb_cnr", "efc", "fwhm_avg"),
    "bold": ("snr", "fber", "efc", "fwhm_avg", "fd_mean", "dvars_std", "gcor"),
}

#: Fewest runs with a value for the SD rule to apply to a metric.
MIN_RUNS_FOR_SD = 3

REASON_COLUMNS = ["bids_name", "participant_id", "modality", "rule", "metric", "value",
                  "group_mean", "group_sd", "z", "threshold", "noise_source"]


def min_runs_to_exclude(k: float) -> int:
    """Smallest group size n at which one run can lie beyond ``k`` sample SDs of the mean.

    The largest ``|z|`` any run of n can reach (with ``ddof=1``) is
    ``(n - 1) / sqrt(n)`` (Shiffler 1988), so this is the smallest n with
    ``(n - 1) / sqrt(n) > k``: 11 for k = 3, 6 for k = 2.
    """
    n = 2
    while (n - 1) / math.sqrt(n) <= k:
        n += 1
    return n


def noise_groups(table: pd.DataFrame) -> dict[str, np.ndarray]:
    """Row positions of each noise source (``{"": all rows}`` without a ``noise_source`` column)."""
    if "noise_source" not in table:
        return {"": np.arange(len(table))}
    sources = table["noise_source"].fillna("").astype(str).to_numpy()
    return {source: np.flatnonzero(sources == source) for source in sorted(set(sources))}
EXCLUSION_COLUMNS = ["bids_name", "participant_id", "modality", "rules", "metrics", "values",
                     "reasons"]


@dataclass(frozen=True)
class ExclusionRules:
    """Rule settings. ``sd_threshold`` or ``fd_threshold`` = None turns that rule off.

    ``sd_metrics`` replaces :data:`SD_METRICS` for every modality (only the
    metrics a modality has are used); an empty tuple turns the SD rule off.
    """

    sd_threshold: float | None = 3.0
    fd_threshold: float | None = 0.2
    sd_metrics: tuple[str, ...] | None = None

    def metrics_for(self, modality: str, available: Sequence[str]) -> list[str]:
        """The SD-rule metrics of ``modality`` that the table has."""
        wanted = self.sd_metrics if self.sd_metrics is not None else SD_METRICS.get(modality, ())
        return [m for m in wanted if m in available]


def exclusion_reasons(table: pd.DataFrame, modality: str, rules: ExclusionRules) -> pd.DataFrame:
    """Every (run, rule, metric) that excludes a run: one row each (:data:`REASON_COLUMNS`).

    ``table`` has one row per run with ``bids_name``, ``participant_id`` and
    metric columns (a group TSV). ``z`` is ``(value - mean) / SD`` for the SD
    rule and empty for the FD rule; ``threshold`` is the rule's bound in the
    metric's units (``mean ± k SD``) or in mm.
    """
    rows: list[dict] = []
    if rules.sd_threshold is not None:
        k = float(rules.sd_threshold)
        for metric in rules.metrics_for(modality, list(table.columns)):
            for source, positions in noise_groups(table).items():
                part = table.iloc[positions]
                values = pd.to_numeric(part[metric], errors="coerce").to_numpy(dtype=float)
                valid = np.isfinite(values)
                if valid.sum() < MIN_RUNS_FOR_SD:
                    continue
                mean = float(values[valid].mean())
                sd = float(values[valid].std(ddof=1))
                if sd == 0.0:
                    continue
                z = (values - mean) / sd
                for i in np.flatnonzero(valid & (np.abs(values - mean) > k * sd)):
                    rows.append(_reason(part.iloc[i], modality, "sd", metric, values[i], mean,
                                        sd, z[i], f"{mean - k * sd:.6g}..{mean + k * sd:.6g}",
                                        source))
    if rules.fd_threshold is not None and modality == "bold" and "fd_mean" in table:
        fd = pd.to_numeric(table["fd_mean"], errors="coerce").to_numpy(dtype=float)
        measured = ~_unreliable(table)
        for i in np.flatnonzero(np.isfinite(fd) & (fd > rules.fd_threshold) & measured):
            rows.append(_reason(table.iloc[i], modality, "fd", "fd_mean", fd[i], None, None, None,
                                f">{rules.fd_threshold:g}"))
    return pd.DataFrame(rows, columns=REASON_COLUMNS)


def _unreliable(table: pd.DataFrame) -> np.ndarray:
    if "motion_reliable" not in table:
        return np.zeros(len(table), dtype=bool)
    flag = pd.to_numeric(table["motion_reliable"], errors="coerce").to_numpy(dtype=float)
    return flag == 0


def unreliable_motion(table: pd.DataFrame) -> list[str]:
    """``bids_name`` of the runs whose motion could not be measured (``motion_reliable`` = 0)."""
    return [str(name) for name in table["bids_name"].to_numpy()[_unreliable(table)]]


def _reason(row: pd.Series, modality: str, rule: str, metric: str, value: float,
            mean: float | None, sd: float | None, z: float | None, threshold: str,
            noise_source: str = "") -> dict:
    return {"bids_name": row["bids_name"], "participant_id": row["participant_id"],
            "modality": modality, "rule": rule, "metric": metric, "value": float(value),
            "group_mean": mean, "group_sd": sd, "z": z, "threshold": threshold,
            "noise_source": noise_source}


def exclusions(reasons: pd.DataFrame) -> pd.DataFrame:
    """One row per excluded run (:data:`EXCLUSION_COLUMNS`), from :func:`exclusion_reasons`.

    ``rules``, ``metrics`` and ``values`` list every reason of the run in
    the same order, separated by ``;``. ``reasons`` says them in words, for
    example ``snr = 4.1 outside 5.4..18.6 (mean 12, SD 2.2, z = -3.59)`` or
    ``fd_mean = 0.31 mm > 0.2 mm``.
    """
    rows = []
    for (name, participant, modality), group in reasons.groupby(
            ["bids_name", "participant_id", "modality"], sort=True):
        rows.append({
            "bids_name": name, "participant_id": participant, "modality": modality,
            "rules": ";".join(group["rule"]),
            "metrics": ";".join(group["metric"]),
            "values": ";".join(f"{v:.6g}" for v in group["value"]),
            "reasons": "; ".join(_words(r) for r in group.itertuples()),
        })
    return pd.DataFrame(rows, columns=EXCLUSION_COLUMNS)


def _words(reason) -> str:
    if reason.rule == "fd":
        return f"fd_mean = {reason.value:.3g} mm {reason.threshold.replace('>', '> ')} mm"
    among = f" of the noise_source={reason.noise_source} runs" if reason.noise_source else ""
    return (f"{reason.metric} = {reason.value:.4g} outside {reason.threshold} "
            f"(mean {reason.group_mean:.4g}, SD {reason.group_sd:.4g}{among}, "
            f"z = {reason.z:+.2f})")
