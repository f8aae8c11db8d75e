"""MRIQC 24's structural IQMs under MRIQC's names, with MRIQC's definitions and units.

Each function re-derives one formula of MRIQC 24.0.2 (nipreps/mriqc,
``mriqc/qc/anatomical.py`` for the formulas, ``mriqc/interfaces/anatomical.py``
``StructuralQC`` and ``Harmonize`` for what they are fed, and
``mriqc/workflows/shared.py`` ``synthstrip_wf`` with niworkflows'
``IntensityClip`` for the image they are computed on). The code is isyb's
own; given the same image, masks and partial-volume maps, every value equals
MRIQC's function to floating-point precision (the tests re-derive each
formula, and the cross-check against an installed MRIQC 24.0.2 is recorded in
``benchmarks/README.md``).

MRIQC's chain, which :func:`isyb.qc.anat.anat_metrics` follows:

1. clip the image to the 10th-99.9th percentiles of its (median-filtered)
   positive values and rescale it to 0..255 integers
   (:func:`isyb.qc.masks.intensity_clip`);
2. N4 bias-field correction weighted by the brain mask, then a 3-class
   Atropos segmentation inside it (:func:`isyb.head.tissue.atropos_tissues`);
3. rescale so that the median of the eroded white matter (posterior >= 0.9)
   is 1000 (:func:`harmonize`);
4. weighted summary statistics of each tissue and of the air
   (:func:`summary_stats`), and the IQMs from them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
from scipy.stats import kurtosis

from isyb.head.morphology import bounding_box, erode18
from isyb.qc.masks import MAD_TO_SD, AnatMasks, QCInputError

__all__ = [
    "MRIQC_DIETRICH_FACTOR",
    "cjv",
    "cnr",
    "efc",
    "fber",
    "fwhm_columns",
    "harmonize",
    "mriqc_metrics",
    "snr",
    "snr_dietrich",
    "summary_stats",
    "volume_fraction",
    "weighted_quantiles",
    "wm2max",
]

#: MRIQC's ``DIETRICH_FACTOR`` as written in ``mriqc/qc/anatomical.py`` (rounded
#: value of sqrt((4 - pi) / 2); the exact value differs by 4e-8 relative).
MRIQC_DIETRICH_FACTOR = 0.6551364

#: Decimals MRIQC 24 rounds ``summary_stats``, ``efc`` and ``fber`` to.
DECIMALS = 4


def harmonize(data: np.ndarray, wm_posterior: np.ndarray, *, threshold: float = 0.9,
              erode: bool = True) -> np.ndarray:
    """MRIQC's ``Harmonize``: scale so that the median of the white matter is 1000.

    The white matter is the voxels whose WM posterior is at least
    ``threshold``, eroded once with the 18-connected element (MRIQC's human
    default). The result is stored as float32, as MRIQC writes it to a
    NIfTI file with the N4 image's float32 header, and returned as float64.
    Source: ``mriqc/interfaces/anatomical.py`` ``Harmonize``.
    """
    wm = np.asarray(wm_posterior) >= threshold
    if erode:  # in the box of the white matter: the same erosion, a fraction of the grid
        box = bounding_box(wm, pad=1)
        eroded = np.zeros_like(wm)
        eroded[box] = erode18(wm[box])
        wm = eroded
    if not wm.any():
        raise QCInputError("no white matter with a posterior of at least "
                           f"{threshold} to harmonize the intensities on")
    median = float(np.median(np.asarray(data, dtype=np.float64)[wm]))
    if median <= 0:
        raise QCInputError("the median of the white matter is 0")
    scaled = np.asarray(data, dtype=np.float64) * (1000.0 / median)
    return scaled.astype(np.float32).astype(np.float64)


def weighted_quantiles(values: np.ndarray, weights: np.ndarray,
                       probs: tuple[float, ...]) -> list[float]:
    """Weighted quantiles as statsmodels' ``DescrStatsW.quantile`` (the SAS definition).

    Ties are pooled (one weight per distinct value, zero weights included);
    the quantile ``p`` is the smallest value whose cumulative weight reaches
    ``p * total``, or the mean of it and the next value when the cumulative
    weight hits the target exactly (within 1e-10).
    """
    distinct, inverse = np.unique(np.asarray(values, dtype=np.float64), return_inverse=True)
    pooled = np.bincount(inverse.ravel(), weights=np.asarray(weights, dtype=np.float64).ravel(),
                         minlength=distinct.size)
    return _pooled_quantiles(distinct, pooled, probs, lambda: distinct)


def _pooled_quantiles(distinct: np.ndarray, pooled: np.ndarray, probs: tuple[float, ...],
                      grid: Callable[[], np.ndarray]) -> list[float]:
    """Quantiles of ``distinct`` values with ``pooled`` weights (see
    :func:`weighted_quantiles`); where the cumulative weight hits a quantile exactly, the
    value after it is the next larger value of ``grid()`` (every value that counts as
    distinct, zero weights included; asked for only then)."""
    cumulative = np.cumsum(pooled)
    total = cumulative[-1]
    out = []
    for p in probs:
        target = p * total
        i = int(np.searchsorted(cumulative, target))
        value = float(distinct[i])
        if abs(target - cumulative[i]) < 1e-10:
            values = grid()
            larger = values[values > value]
            if larger.size:
                value = (value + float(larger.min())) / 2.0
        out.append(value)
    return out


def summary_stats(data: np.ndarray, pvms: dict[str, np.ndarray], *, rprec_data: int = 0,
                  rprec_prob: int = 3) -> dict[str, dict[str, float]]:
    """MRIQC 24's weighted summary statistics of each partial-volume map, in image units.

    For each label, with ``w`` the map rounded to ``rprec_prob`` decimals
    (as float32) and ``x`` the image rounded to ``rprec_data`` decimals, over
    the whole grid: ``mean`` and ``stdv`` are the weighted mean and
    population SD, ``median``, ``p05``, ``p95`` the weighted quantiles
    (:func:`weighted_quantiles`); ``k`` (Fisher's kurtosis, biased) and
    ``mad`` (``median(|x - median|) / 0.6745``, centred on the weighted
    median) are over the unrounded voxels whose map exceeds half its maximum;
    ``n`` is the sum of the unrounded map (a voxel count for a binary mask).
    All but ``n`` are rounded to 4 decimals. Source:
    ``mriqc/qc/anatomical.py`` ``summary_stats`` (statsmodels ``DescrStatsW``,
    ``robust.scale.mad``, scipy ``kurtosis``).

    Only voxels with a positive map enter the sums; every voxel of the grid
    still counts as a distinct value for the quantiles, as in ``DescrStatsW``
    (zero-weight values only matter where the cumulative weight hits a
    quantile exactly: the next value of the grid is then averaged in). Each
    map is read in the bounding box of its non-zero voxels, which holds every
    voxel that enters its statistics, so the brain's maps cost a fraction of
    the grid; the results are those of the whole grid.
    """
    image = np.asarray(data, dtype=np.float64)
    output: dict[str, dict[str, float]] = {}

    @functools.cache
    def rounded_grid() -> np.ndarray:
        return np.round(image, rprec_data)

    for label, probmap in pvms.items():
        prob = np.asarray(probmap)
        if prob.shape != image.shape:
            raise QCInputError(f"the {label} map has shape {prob.shape}, the image {image.shape}")
        box = bounding_box(prob != 0)
        weights = np.round(prob[box].astype(np.float32), rprec_prob).astype(np.float64)
        inside = weights > 0
        sub = image[box]
        x, w = np.round(sub[inside], rprec_data), weights[inside]
        total = float(w.sum())
        if total <= 0:
            raise QCInputError(f"the {label} map is empty: no summary statistics")
        mean = float(np.dot(w, x) / total)
        stdv = math.sqrt(float(np.dot(w, (x - mean) ** 2)) / total)
        distinct, inverse = np.unique(x, return_inverse=True)
        pooled = np.bincount(inverse, weights=w, minlength=distinct.size)
        p05, median, p95 = _pooled_quantiles(distinct, pooled, (0.05, 0.5, 0.95),
                                             rounded_grid)
        thresholded = sub[prob[box] > 0.5 * float(prob[box].max())]
        output[label] = {
            "mean": round(mean, DECIMALS),
            "median": round(median, DECIMALS),
            "p95": round(p95, DECIMALS),
            "p05": round(p05, DECIMALS),
            "k": round(float(kurtosis(thresholded)), DECIMALS),
            "stdv": round(stdv, DECIMALS),
            "mad": round(float(np.median(np.abs(thresholded - median))) * MAD_TO_SD, DECIMALS),
            "n": float(prob.sum(dtype=np.float64)),
        }
    return output


def snr(mu_fg: float, sigma_fg: float, n: float) -> float:
    """MRIQC ``snr``: ``mu_F / (sigma_F sqrt(n / (n - 1)))`` (unitless; MRIQC passes the median)."""
    return float(mu_fg / (sigma_fg * math.sqrt(n / (n - 1))))


def snr_dietrich(mu_fg: float, mad_air: float, sigma_air: float) -> float:
    """MRIQC ``snr_dietrich``: ``0.6551364 mu_F / MAD(air)`` when the MAD exceeds 1.

    Else ``0.6551364 mu_F / SD(air)`` when the SD exceeds 1e-3, else -1.
    The thresholds are in the harmonised units (WM median 1000). Source:
    ``mriqc/qc/anatomical.py`` ``snr_dietrich`` (Dietrich et al., JMRI
    26(2):375, 2007, eq. A.12).
    """
    if mad_air > 1.0:
        return float(MRIQC_DIETRICH_FACTOR * mu_fg / mad_air)
    return float(MRIQC_DIETRICH_FACTOR * mu_fg / sigma_air) if sigma_air > 1e-3 else -1.0


def cnr(mu_wm: float, mu_gm: float, sigma_air: float, sigma_wm: float,
        sigma_gm: float) -> float:
    """MRIQC ``cnr``: ``|mu_WM - mu_GM| / sqrt(sigma_air^2 + sigma_GM^2 + sigma_WM^2)``."""
    return float(abs(mu_wm - mu_gm) / math.sqrt(sigma_air ** 2 + sigma_gm ** 2 + sigma_wm ** 2))


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    """MRIQC ``cjv``: ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|`` (Ganzetti et al. 2016)."""
    return float((sigma_wm + sigma_gm) / abs(mu_wm - mu_gm))


def fber(image: np.ndarray, headmask: np.ndarray, rotmask: np.ndarray | None = None) -> float:
    """MRIQC 24 ``fber``: ``median(|head|^2) / median(|outside|^2)``, or -1.

    The background is every voxel outside ``headmask`` and outside
    ``rotmask``; -1 when its median energy is under 1e-3 (a zeroed or clipped
    background). Rounded to 4 decimals. Source: ``mriqc/qc/anatomical.py``
    ``fber`` (medians, although its docstring writes expectations).
    """
    image = np.asarray(image, dtype=np.float64)
    head = np.asarray(headmask, dtype=bool)
    fg_mu = float(np.median(np.abs(image[head]) ** 2))
    air = ~head
    if rotmask is not None:
        air &= ~np.asarray(rotmask, dtype=bool)
    bg_mu = float(np.median(np.abs(image[air]) ** 2))
    if bg_mu < 1.0e-3:
        return -1.0
    return round(fg_mu / bg_mu, DECIMALS)


def efc(image: np.ndarray, framemask: np.ndarray | None = None) -> float:
    """MRIQC 24 ``efc`` (Atkinson et al. 1997), rounded to 4 decimals.

    Over the voxels outside ``framemask``: ``(1 / E_max) sum (x/B) ln((x + 1e-16)/B)``
    with ``B = sqrt(sum x^2)`` and ``E_max = N (1/sqrt N) ln(1/sqrt N)``.
    """
    x = np.asarray(image, dtype=np.float64)
    x = x.ravel() if framemask is None else x[~np.asarray(framemask, dtype=bool)]
    n = x.size
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    b_max = math.sqrt(float(np.dot(x, x)))
    return round(float(np.sum((x / b_max) * np.log((x + 1e-16) / b_max)) / efc_max), DECIMALS)


def wm2max(image: np.ndarray, mu_wm: float) -> float:
    """MRIQC ``wm2max``: ``mu_WM / P99.95(image)`` over every voxel (MRIQC passes the median)."""
    return float(mu_wm / np.percentile(np.asarray(image, dtype=np.float64).ravel(), 99.95))


def volume_fraction(pvms: dict[str, np.ndarray]) -> dict[str, float]:
    """MRIQC ``volume_fraction`` (``icvs_*``): each tissue's summed posterior over all three's."""
    sums = {k: float(np.asarray(pvms[k], dtype=np.float64).sum()) for k in ("csf", "gm", "wm")}
    total = sum(sums.values())
    return {k: v / total for k, v in sums.items()}


def fwhm_columns(fwhm_mm: tuple[float, float, float] | np.ndarray,
                 zooms: np.ndarray | tuple[float, ...]) -> dict[str, float]:
    """MRIQC's ``fwhm_x/y/z/avg`` in **voxels** and isyb's ``fwhm_*_mm`` in mm.

    MRIQC divides AFNI's mm by the voxel size of each axis and averages the
    three (``mriqc/interfaces/anatomical.py`` ``StructuralQC``: ``fwhm_avg =
    mean(fwhm_mm / zooms)``); ``fwhm_avg_mm`` is the mean of the three mm
    values (the figure a data descriptor quotes in mm).
    """
    mm = np.asarray(fwhm_mm, dtype=np.float64)
    vox = mm / np.asarray(zooms, dtype=np.float64)[:3]
    out = {f"fwhm_{a}": float(v) for a, v in zip("xyz", vox, strict=True)}
    out["fwhm_avg"] = float(np.mean(vox))
    out.update({f"fwhm_{a}_mm": float(v) for a, v in zip("xyz", mm, strict=True)})
    out["fwhm_avg_mm"] = float(np.mean(mm))
    return out


def mriqc_metrics(masks: AnatMasks) -> dict[str, float]:
    """MRIQC 24's structural IQMs (MRIQC names, definitions and units) from ``masks``.

    The image is ``masks.corrected`` (the N4-corrected clipped image)
    rescaled so that the median of the eroded WM (posterior >= 0.9) is 1000
    (:func:`harmonize`); the partial-volume maps are the Atropos
    posteriors, the background map the air mask, the head and rotation masks
    ``masks.head`` and ``masks.empty``. Keys: ``summary_{csf,gm,wm,bg}_{mean,
    stdv,median,mad,p05,p95,k,n}``, ``snr_{csf,gm,wm,total}``, ``snrd_{csf,gm,
    wm,total}``, ``cnr``, ``cjv``, ``fber``, ``efc``, ``wm2max`` and
    ``icvs_{csf,gm,wm}``, each as ``mriqc/interfaces/anatomical.py``
    ``StructuralQC`` computes it.

    Without a measurable background (``masks.noise_source == "brain"``) the
    air map is empty, and MRIQC's background statistics are undefined; the
    ``summary_bg_*``, ``snrd_*`` and ``cnr`` keys are then left out rather
    than filled with MRIQC's NaN or -1 (the ``isyb_*`` metrics of
    :func:`anat_metrics` cover such scans).
    """
    post = masks.posteriors
    inu = harmonize(masks.corrected, post[2])
    pvms: dict[str, np.ndarray] = {"csf": post[0], "gm": post[1], "wm": post[2]}
    if masks.noise_source == "air":
        pvms["bg"] = masks.air
    stats = summary_stats(inu, pvms)
    out: dict[str, float] = {}
    for label, values in stats.items():
        out.update({f"summary_{label}_{key}": float(v) for key, v in values.items()})
    snrs = {t: snr(stats[t]["median"], stats[t]["stdv"], stats[t]["n"])
            for t in ("csf", "wm", "gm")}
    out.update({f"snr_{t}": v for t, v in snrs.items()})
    out["snr_total"] = float(np.mean(list(snrs.values())))
    if "bg" in stats:
        bg = stats["bg"]
        snrd = {t: snr_dietrich(stats[t]["median"], bg["mad"], bg["stdv"])
                for t in ("csf", "wm", "gm")}
        out.update({f"snrd_{t}": v for t, v in snrd.items()})
        out["snrd_total"] = float(np.mean(list(snrd.values())))
        out["cnr"] = cnr(stats["wm"]["median"], stats["gm"]["median"], bg["stdv"],
                               stats["wm"]["stdv"], stats["gm"]["stdv"])
    out["fber"] = fber(inu, masks.head, masks.empty)
    out["efc"] = efc(inu, masks.empty)
    out["wm2max"] = wm2max(inu, stats["wm"]["median"])
    out["cjv"] = cjv(stats["wm"]["median"], stats["gm"]["median"], stats["wm"]["mad"],
                           stats["gm"]["mad"])
    out.update({f"icvs_{k}": v for k, v in volume_fraction(pvms).items()})
    return out
