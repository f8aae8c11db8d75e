"""MRIQC 24.0.2's structural IQMs re-derived from its source, for the tests.

``mriqc/qc/anatomical.py`` (``summary_stats``, ``snr``, ``snr_dietrich``, ``cnr``,
``cjv``, ``fber``, ``efc``, ``wm2max``, ``volume_fraction``) and
``mriqc/interfaces/anatomical.py`` ``StructuralQC``, written out again with
statsmodels' ``DescrStatsW`` and ``mad`` and scipy's ``kurtosis`` as MRIQC calls them,
independently of :mod:`isyb.qc.mriqc` except for the harmonised image
(:func:`isyb.qc.mriqc.harmonize`, checked on its own in ``tests/qc/test_qc_mriqc_defs.py``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kurtosis
from statsmodels.robust.scale import mad
from statsmodels.stats.weightstats import DescrStatsW

from isyb.qc import mriqc
from isyb.qc.masks import AnatMasks


def mriqc_summary_stats(data: np.ndarray, pvms: dict[str, np.ndarray]) -> dict:
    """``mriqc.qc.anatomical.summary_stats`` (24.0.2) as written there."""
    out = {}
    for label, probmap in pvms.items():
        w = DescrStatsW(data=np.round(data.reshape(-1), 0),
                        weights=np.round(probmap.astype(np.float32).reshape(-1), 3))
        p05, median, p95 = w.quantile(np.array([0.05, 0.50, 0.95]), return_pandas=False)
        thresholded = data[probmap > (0.5 * probmap.max())]
        out[label] = {"mean": round(float(w.mean), 4), "median": round(float(median), 4),
                      "p95": round(float(p95), 4), "p05": round(float(p05), 4),
                      "k": round(float(kurtosis(thresholded)), 4),
                      "stdv": round(float(w.std), 4),
                      "mad": round(float(mad(thresholded, center=median)), 4),
                      "n": float(probmap.astype(np.float64).sum())}  # get_fdata: float64
    return out


def structuralqc_expected(masks: AnatMasks) -> dict[str, float]:
    """MRIQC's IQMs of ``masks`` (its posteriors as the partial-volume maps, its air mask
    as the background, its head and empty masks), by MRIQC's formulas."""
    post = masks.posteriors
    inu = mriqc.harmonize(masks.corrected, post[2])
    pvms = {"csf": post[0], "gm": post[1], "wm": post[2]}
    if masks.noise_source == "air":
        pvms["bg"] = masks.air.astype(np.uint8)
    st = mriqc_summary_stats(inu, pvms)
    out = {f"summary_{label}_{key}": float(value)
           for label, values in st.items() for key, value in values.items()}
    snrs = {t: st[t]["median"] / (st[t]["stdv"] * math.sqrt(st[t]["n"] / (st[t]["n"] - 1)))
            for t in ("csf", "wm", "gm")}
    out.update({f"snr_{t}": v for t, v in snrs.items()})
    out["snr_total"] = float(np.mean(list(snrs.values())))
    if "bg" in st:
        bg = st["bg"]
        dietrich = {t: (0.6551364 * st[t]["median"] / bg["mad"] if bg["mad"] > 1
                        else 0.6551364 * st[t]["median"] / bg["stdv"] if bg["stdv"] > 1e-3
                        else -1.0) for t in ("csf", "wm", "gm")}
        out.update({f"snrd_{t}": v for t, v in dietrich.items()})
        out["snrd_total"] = float(np.mean(list(dietrich.values())))
        out["cnr"] = abs(st["wm"]["median"] - st["gm"]["median"]) / math.sqrt(
            bg["stdv"] ** 2 + st["gm"]["stdv"] ** 2 + st["wm"]["stdv"] ** 2)
    out["cjv"] = (st["wm"]["mad"] + st["gm"]["mad"]) / abs(st["wm"]["median"]
                                                         - st["gm"]["median"])
    out["wm2max"] = st["wm"]["median"] / np.percentile(inu, 99.95)
    outside = ~masks.head & ~masks.empty
    fg, bg_energy = np.median(inu[masks.head] ** 2), np.median(inu[outside] ** 2)
    out["fber"] = -1.0 if bg_energy < 1e-3 else round(float(fg / bg_energy), 4)
    x = inu[~masks.empty]
    n = x.size
    b = np.sqrt((x ** 2).sum())
    e_max = n * (1 / np.sqrt(n)) * np.log(1 / np.sqrt(n))
    out["efc"] = round(float((1 / e_max) * np.sum((x / b) * np.log((x + 1e-16) / b))), 4)
    sums = [float(post[k].astype(np.float64).sum()) for k in range(3)]
    out.update({f"icvs_{t}": sums[k] / sum(sums) for k, t in enumerate(("csf", "gm", "wm"))})
    return out


def assert_mriqc_definitions(name: str, metrics: dict[str, float], masks: AnatMasks,
                             rel: float = 1e-4) -> None:
    """Every MRIQC-named metric of isyb's QC (``metrics``) equals MRIQC's formula on the
    same masks and statistics to ``rel`` (issue 14: 1e-4 relative)."""
    expected = structuralqc_expected(masks)
    for key, value in expected.items():
        if key in metrics:
            assert metrics[key] == pytest.approx(value, rel=rel, abs=1e-9), (
                name, key, metrics[key], value)
    assert {"cjv", "efc", "fber", "wm2max", "icvs_wm", "snr_gm"} <= set(metrics), name

