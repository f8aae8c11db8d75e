"""One noise scale per group: the SD rule never pools runs of different noise sources (issue 14)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isyb.qc.dataset import group_tables
from isyb.qc.report import write_group_report
from isyb.qc.rules import ExclusionRules, exclusion_reasons, min_runs_to_exclude

RULES = ExclusionRules(sd_metrics=("isyb_snr",))


def _table(air: list[float], brain: list[float]) -> pd.DataFrame:
    values = air + brain
    sources = ["air"] * len(air) + ["brain"] * len(brain)
    names = [f"sub-{i:02d}_T1w" for i in range(1, len(values) + 1)]
    return pd.DataFrame({"bids_name": names, "participant_id": [n[:6] for n in names],
                         "noise_source": sources, "isyb_snr": values})


def test_a_run_is_never_compared_with_runs_of_another_noise_source() -> None:
    rng = np.random.default_rng(0)
    air = list(10.0 + 0.1 * rng.standard_normal(20))
    table = _table(air, [40.0])
    # pooled, the brain-noise run is 4.36 SDs out (the most 21 runs allow) and would go
    values = table["isyb_snr"].to_numpy()
    assert abs(40.0 - values.mean()) / values.std(ddof=1) > 3.0
    assert exclusion_reasons(table, "T1w", RULES).empty
    # without the column, the same numbers are pooled (the old behaviour)
    pooled = exclusion_reasons(table.drop(columns="noise_source"), "T1w", RULES)
    assert pooled["bids_name"].tolist() == ["sub-21_T1w"]


def test_an_outlier_within_its_own_noise_source_is_still_found() -> None:
    rng = np.random.default_rng(1)
    air = [*(10.0 + 0.1 * rng.standard_normal(20)), 13.0]
    brain = list(40.0 + 0.1 * rng.standard_normal(5))
    reasons = exclusion_reasons(_table(air, brain), "T1w", RULES)
    assert reasons["bids_name"].tolist() == ["sub-21_T1w"]
    row = reasons.iloc[0]
    assert row["noise_source"] == "air"
    # mean and SD are the air runs' own
    assert row["group_mean"] == pytest.approx(float(np.mean(air)))
    assert row["group_sd"] == pytest.approx(float(np.std(air, ddof=1)))


@pytest.mark.parametrize(("k", "expected"), [(3.0, 11), (2.0, 6), (2.5, 9)])
def test_smallest_group_in_which_the_sd_rule_can_fire(k: float, expected: int) -> None:
    assert min_runs_to_exclude(k) == expected
    # the bound is attained by one run at 1 and the others at 0 (Shiffler 1988)
    for n in (expected - 1, expected):
        x = np.zeros(n)
        x[0] = 1.0
        z = (x[0] - x.mean()) / x.std(ddof=1)
        assert z == pytest.approx((n - 1) / math.sqrt(n))
        assert (z > k) == (n == expected)


def test_group_report_says_how_sources_are_compared_and_warns_small_groups(
        tmp_path: Path) -> None:
    table = _table([10.0, 11.0, 12.0, 10.5], [40.0, 41.0, 39.0])
    report = tmp_path / "group_qc.html"
    reasons = exclusion_reasons(table, "T1w", RULES)
    write_group_report(report, {"T1w": table}, reasons, [], RULES)
    text = report.read_text()
    assert "same noise_source (air: 4, brain: 3)" in text
    assert "at least 11 runs" in text
    assert "Warning" in text and "air (4 runs)" in text


def test_group_tables_record_each_runs_noise_source() -> None:
    records = [{"bids_name": f"sub-0{i}_T1w", "participant_id": f"sub-0{i}", "modality": "T1w",
                "status": "ok", "noise_source": source, "metrics": {"isyb_snr": 10.0 + i}}
               for i, source in enumerate(("air", "brain", "air"), start=1)]
    table = group_tables(records)["T1w"]
    assert table["noise_source"].tolist() == ["air", "brain", "air"]
