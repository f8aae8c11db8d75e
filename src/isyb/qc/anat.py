"""Image quality metrics of structural head scans (T1w, T2w), after MRIQC.

Every metric is a plain function of numpy arrays (and voxel sizes in mm
where it needs them); :func:`anat_metrics` builds the masks and calls them
all. Arrays are in RAS voxel order, as :func:`isyb.io.load_volume` gives them
(axis 0 left->Right, axis 1 posterior->Anterior, axis 2 inferior->Superior).

Definitions follow MRIQC's ``mriqc/qc/anatomical.py`` (the formulas) and
``mriqc/interfaces/anatomical.py`` (which statistics it feeds them: medians,
SDs, MADs), as read in the nipreps/mriqc repository (Esteban et al., PLoS
ONE 12(9):e0184661, 2017). The code here is isyb's own. Where the numbers
can differ from MRIQC's, the function says how and why. Differences that
hold for all of them:

* **No bias-field (N4) correction, no rescaling.** MRIQC computes its
  metrics on the N4-corrected image, rescaled so that the median of WM is
  1000. Every metric here is a ratio, so the rescaling changes nothing. A
  strong bias field widens the tissue distributions, which raises ``cjv``
  and lowers ``cnr`` here more than in MRIQC. Negative values are clipped
  to 0, as in MRIQC.
* **Segmentation.** MRIQC uses FSL FAST and takes, per tissue, the voxels
  whose partial-volume fraction exceeds 0.85, eroded once (18-connectivity)
  when every voxel side is under 1.9 mm. isyb fits a Gaussian mixture to the
  brain intensities, with a light spatial regularisation
  (:func:`segment_tissues`), and erodes each tissue label the same way
  (:func:`tissue_masks`).
* **Air mask.** MRIQC's air ("hat") mask is the air above the
  nasion-cerebellum plane (from a registration to MNI space) without the
  artefacts it detects (Mortamet et al. 2009), and its FBER and EFC use all
  voxels outside the head. A defaced image puts a block of exact zeros or of
  synthetic values next to the face, and MRIQC's background statistics
  change with it (MRIQC issue #1182: the MAD of air becomes 0, ``snrd``
  falls back, ``fber`` becomes -1). isyb's :func:`air_mask` keeps only the
  air that no defacing method touches, and FBER uses it too; EFC leaves out
  solid blocks of zeros (:func:`empty_mask`), as MRIQC leaves out its
  rotation mask.
* **No measurable background.** Most processed scans (FreeSurfer-conformed,
  template-space, many public samples) have their background set to 0;
  MRIQC then reports 0, -1 or a MAD-based value. isyb estimates the noise
  inside the brain instead and says so (:func:`anat_metrics`,
  ``AnatMasks.noise_source``).

Other metrics of MRIQC (``snr_csf``/``snr_wm``, ``qi_1``, ``qi_2``,
``inu_*``, ``icvs_*``, ``rpve_*``, ``tpm_overlap_*``, ``summary_*``) are not
computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi
from scipy.special import xlogy

from isyb.errors import IsybError

__all__ = [
    "CSF",
    "DIETRICH_FACTOR",
    "GM",
    "WM",
    "AnatMasks",
    "Mixture",
    "NoBackgroundError",
    "QCInputError",
    "air_mask",
    "anat_masks",
    "anat_metrics",
    "brain_noise_sd",
    "cjv",
    "cnr",
    "efc",
    "empty_mask",
    "erode18",
    "fber",
    "fit_mixture",
    "fwhm_afni",
    "hat_region",
    "robust_sd",
    "segment_tissues",
    "snr",
    "snr_dietrich",
    "tissue_masks",
    "wm2max",
]

#: Tissue labels returned by :func:`segment_tissues` (0 is outside the brain).
CSF, GM, WM = 1, 2, 3

#: sqrt((4 - pi) / 2) = 1 / sqrt(2 / (4 - pi)) = 0.6551: the SD of a Rayleigh
#: distribution in units of the Gaussian noise SD of each channel (Dietrich et
#: al., JMRI 26(2):375, 2007, eq. A.12). MRIQC's ``DIETRICH_FACTOR``.
DIETRICH_FACTOR = math.sqrt((4.0 - math.pi) / 2.0)

#: sqrt(8 ln 2): Gaussian sigma to FWHM, rounded as in AFNI's mri_fwhm.c.
SIGMA_TO_FWHM = 2.35482

#: 1 / Phi^-1(3/4): scales the median absolute deviation to the SD of a
#: Gaussian (statsmodels' ``mad``, which MRIQC uses).
MAD_TO_SD = 1.0 / 0.6744897501960817

#: Fewest voxels a mask may hold for its statistics to be reported.
MIN_MASK_VOXELS = 100

Contrast = Literal["T1w", "T2w"]


class QCInputError(IsybError, ValueError):
    """The image cannot give a meaningful metric (empty mask, constant air, NaNs...)."""


class NoBackgroundError(QCInputError):
    """The image has no air to measure the noise in (suppressed, cut off or stripped)."""


# ---------------------------------------------------------------------------
# Small helpers


def _values(image: np.ndarray, mask: np.ndarray, name: str,
            minimum: int = MIN_MASK_VOXELS) -> np.ndarray:
    """``image[mask]`` as float64; :class:`QCInputError` if the mask is too small."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape:
        raise QCInputError(f"the {name} mask has shape {mask.shape}, the image {image.shape}")
    count = int(mask.sum())
    if count < minimum:
        raise QCInputError(f"the {name} mask holds {count} voxels; at least {minimum} are "
                           "needed for its statistics")
    return np.asarray(image[mask], dtype=np.float64)


def _positive(value: float, what: str) -> float:
    if not np.isfinite(value) or value <= 0:
        raise QCInputError(f"{what} is {value:g}: the metric is undefined")
    return float(value)


def _air_sd(image: np.ndarray, air: np.ndarray | float) -> float:
    """SD of the air voxels (population SD), or ``air`` itself when it is a number."""
    if isinstance(air, np.ndarray):
        return _positive(float(_values(image, air, "air").std()), "the SD of the air")
    return _positive(float(air), "the SD of the air")


def robust_sd(values: np.ndarray) -> float:
    """Normalised median absolute deviation: ``median(|x - median(x)|) / 0.6745``.

    Estimates the SD of a Gaussian from its bulk; it is statsmodels'
    ``mad`` (centre = median), which MRIQC uses for ``cjv`` and ``snrd``.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    return float(np.median(np.abs(values - np.median(values))) * MAD_TO_SD)


def _box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...]:
    """Bounding box (slices) of a non-empty mask, grown by ``pad`` voxels."""
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], \
        np.nonzero(mask.any(axis=(0, 1)))[0]
    return tuple(slice(max(int(i[0]) - pad, 0), min(int(i[-1]) + 1 + pad, n))
                 for i, n in zip(idx, mask.shape, strict=True))


# ---------------------------------------------------------------------------
# Metrics


def snr(image: np.ndarray, signal: np.ndarray, air: np.ndarray | float) -> float:
    """Background SNR as the ISYB data descriptor defines it: ``mean(signal) / SD(air)``.

    ``signal`` is the GM mask for ``snr`` (unitless). ``air`` is the air mask,
    or the SD of the air itself where it is known otherwise (see
    :func:`anat_metrics`). SD is the population SD (``ddof=0``) of the air
    voxels, with no Rayleigh correction: for pure
    magnitude noise of channel SD sigma, SD(air) = 0.6551 sigma, so this value
    is 1.5264 times the true SNR of the tissue (see :func:`snr_dietrich`).
    Source: Magnotta & Friedman, J Digit Imaging 19(2):140, 2006 (SNR as
    tissue mean over the SD of air), the data descriptor's QC section.

    Difference from MRIQC: MRIQC's ``snr_gm`` is a *foreground* SNR,
    ``median(GM) / (SD(GM) sqrt(n / (n - 1)))``, which does not look at the
    air at all; MRIQC's background SNR is ``snrd_gm``. The two are different
    quantities, so isyb's ``snr`` is not comparable with MRIQC's ``snr_gm``.
    """
    mu = float(_values(image, signal, "signal").mean())
    return mu / _air_sd(image, air)


def snr_dietrich(image: np.ndarray, signal: np.ndarray, air: np.ndarray | float) -> float:
    """Dietrich's background SNR (MRIQC ``snrd_*``): ``0.6551 * median(signal) / SD(air)``.

    Written as ``median(signal) / (sqrt(2 / (4 - pi)) * SD(air))``: the air
    of a magnitude image is Rayleigh distributed, and its SD is
    ``sqrt((4 - pi) / 2) = 0.6551`` times the noise SD of each channel, so the
    factor turns SD(air) back into the noise SD (Dietrich et al., JMRI
    26(2):375, 2007, eq. A.12). For single-channel Rician noise this is the
    true SNR of the tissue. Unitless. ``air`` as in :func:`snr`.

    Differences from MRIQC (``snr_dietrich(mu_fg, mad_air, sigma_air)``,
    called with the median of the tissue): MRIQC divides by the normalised
    MAD of the air when it exceeds 1.0 (in its WM = 1000 units) and by the SD
    otherwise; isyb always uses the SD. The MAD of air is 0 whenever more
    than half of the air is exactly 0 (clipped or quantised backgrounds,
    which is most of the real scans we test on, and defaced images), the
    fall-back threshold depends on the intensity scale, and Dietrich's
    correction factor is derived for the SD, not for the MAD (for Rayleigh
    noise the normalised MAD is 0.664 sigma, the SD 0.655 sigma).
    """
    mu = float(np.median(_values(image, signal, "signal")))
    return DIETRICH_FACTOR * mu / _air_sd(image, air)


def cnr(image: np.ndarray, gm: np.ndarray, wm: np.ndarray, air: np.ndarray | float) -> float:
    """Contrast-to-noise ratio (MRIQC ``cnr``), unitless.

    ``|median(WM) - median(GM)| / sqrt(SD(air)^2 + SD(GM)^2 + SD(WM)^2)``,
    population SDs. Source: MRIQC ``cnr`` after Magnotta & Friedman 2006;
    MRIQC passes the tissue medians, as here. Same formula as MRIQC; the
    masks differ (see the module notes and :func:`air_mask`). ``air`` as in
    :func:`snr`.
    """
    g = _values(image, gm, "GM")
    w = _values(image, wm, "WM")
    noise = math.sqrt(_air_sd(image, air) ** 2 + float(g.var()) + float(w.var()))
    return abs(float(np.median(w)) - float(np.median(g))) / _positive(noise, "the noise term")


def cjv(image: np.ndarray, gm: np.ndarray, wm: np.ndarray) -> float:
    """Coefficient of joint variation of GM and WM (MRIQC ``cjv``), unitless.

    ``(sigma_WM + sigma_GM) / |mu_WM - mu_GM|`` (Ganzetti et al., Front
    Neuroinform 10:10, 2016). As in MRIQC's interface, mu is the median and
    sigma the normalised MAD (:func:`robust_sd`) of each tissue. Lower is
    better; a bias field raises it (isyb does not correct the bias field
    first, MRIQC does).
    """
    g = _values(image, gm, "GM")
    w = _values(image, wm, "WM")
    contrast = abs(float(np.median(w)) - float(np.median(g)))
    return (robust_sd(w) + robust_sd(g)) / _positive(contrast, "the GM/WM contrast")


def fber(image: np.ndarray, head: np.ndarray, air: np.ndarray | float) -> float:
    """Foreground-background energy ratio: ``mean(|head|^2) / mean(|air|^2)``, unitless.

    ``air`` is the air mask, or the mean air energy itself where it is known
    otherwise (see :func:`anat_metrics`).

    Source: Shehzad et al., QAP (Front Neurosci conf. abstract, 2015) and
    MRIQC's documented formula ``E[|F|^2] / E[|B|^2]``.

    Differences from MRIQC: current MRIQC code takes *medians* of the
    squared values, over all voxels outside its head mask (minus the
    rotation mask), and returns -1 when the median background energy is
    below 1e-3. isyb takes means (the documented expectation, and the QAP
    original), over :func:`air_mask` only: the median of the background is
    0 on most clipped, quantised or defaced images, so a median ratio is
    undefined there, and the air next to the face is what defacing changes.
    """
    fg = _values(image, head, "head")
    if isinstance(air, np.ndarray):
        bg = _values(image, air, "air")
        energy = float(np.mean(bg * bg))
    else:
        energy = float(air)
    return float(np.mean(fg * fg)) / _positive(energy, "the mean air energy")


def efc(image: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Entropy focus criterion (Atkinson et al., IEEE TMI 16(6):903, 1997), as in MRIQC.

    With ``x`` the N voxel values in ``mask`` (all voxels if None),
    ``B = sqrt(sum x^2)``, ``E = -sum (x/B) ln(x/B)`` and
    ``E_max = -N (1/sqrt(N)) ln(1/sqrt(N))`` (the entropy of N equal values),
    ``EFC = E / E_max``: 1 for a constant image, lower when the energy
    concentrates in few voxels (sharp, ghost-free images score lower).
    Unitless. Negative values are clipped to 0 and 0 ln 0 is 0.

    Same formula as MRIQC ``efc(img, framemask)``, which adds 1e-16 inside
    the logarithm instead of defining 0 ln 0 = 0 (the same to 1e-14).
    :func:`anat_metrics` excludes the :func:`empty_mask` voxels, as MRIQC
    excludes its rotation mask; MRIQC uses the N4-corrected image.
    """
    x = np.asarray(image, dtype=np.float64)
    x = x.ravel() if mask is None else _values(x, mask, "EFC", minimum=2)
    x = np.maximum(x, 0.0)
    n = x.size
    energy = math.sqrt(float(np.dot(x, x)))
    if energy == 0.0:
        raise QCInputError("the image is all zeros: EFC is undefined")
    p = x / energy
    entropy = -float(xlogy(p, p).sum())
    e_max = -n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    return entropy / e_max


def wm2max(image: np.ndarray, wm: np.ndarray) -> float:
    """White-matter-to-max ratio (MRIQC ``wm2max``): ``median(WM) / P99.95(image)``.

    The 99.95th percentile is over every voxel of the image; values well
    under about 0.6 point at a long bright tail (vessels, fat). Unitless.
    Same as MRIQC (whose docstring says "mean" and "95 %", but whose code
    passes the WM median and takes the 99.95th percentile, as here).
    """
    mu = float(np.median(_values(image, wm, "WM")))
    top = _positive(float(np.percentile(np.asarray(image, dtype=np.float64), 99.95)),
                    "the 99.95th percentile of the image")
    return mu / top


def fwhm_afni(image: np.ndarray, mask: np.ndarray,
              zooms: np.ndarray | tuple[float, ...]) -> tuple[float, float, float]:
    """Smoothness along each array axis, in mm: AFNI 3dFWHMx "classic" (first differences).

    With V the sample variance (``ddof=1``) of the voxels in ``mask`` and V_a
    the sample variance of the first differences ``x[i+1] - x[i]`` along
    axis a, over the pairs whose two voxels are both in the mask::

        FWHM_a = 2.35482 * sqrt(-1 / (4 ln(1 - V_a / (2 V)))) * voxel_a

    This is exact for a stationary field with a Gaussian autocorrelation: the
    lag-1 correlation is ``1 - V_a / (2 V) = exp(-d^2 / (4 s^2))``. Source:
    AFNI ``mri_estimate_FWHM_1dif`` (mri_fwhm.c, after B. D. Ward's 3dFWHM;
    Forman et al., MRM 33(5):636, 1995), which 3dFWHMx runs without
    ``-acf``.

    Differences from MRIQC (``3dFWHMx -combine -detrend`` on the image in
    RAS, inside the brain mask): MRIQC divides AFNI's mm by the voxel size
    and reports ``fwhm_x/y/z`` in **voxels**; isyb reports **mm**. Detrending
    acts along time, so for a single volume there is nothing to detrend.
    Raises :class:`QCInputError` where AFNI would print -1 (the variance
    ratio outside (0, 2): no data, or anti-correlated neighbours).
    """
    zooms = np.asarray(zooms, dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if image.ndim != 3 or mask.shape != image.shape:
        raise QCInputError("FWHM needs a 3-D image and a mask of the same shape")
    if not mask.any():
        raise QCInputError("the FWHM mask is empty")
    box = _box(mask)
    x = np.asarray(image[box], dtype=np.float64)
    m = mask[box]
    values = x[m]
    if values.size < 9:
        raise QCInputError("the FWHM mask holds fewer than 9 voxels")
    variance = float(values.var(ddof=1))
    if variance <= 0:
        raise QCInputError("the image is constant inside the FWHM mask")
    out = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        pair = m[tuple(lo)] & m[tuple(hi)]
        diffs = (x[tuple(hi)] - x[tuple(lo)])[pair]
        if diffs.size < 6:
            raise QCInputError(f"the FWHM mask has fewer than 6 neighbour pairs along axis {axis}")
        arg = 1.0 - 0.5 * float(diffs.var(ddof=1)) / variance
        if not 0.0 < arg < 1.0:
            raise QCInputError(f"FWHM along axis {axis} is undefined (lag-1 correlation "
                               f"{arg:.3f} outside (0, 1))")
        out.append(SIGMA_TO_FWHM * math.sqrt(-1.0 / (4.0 * math.log(arg))) * float(zooms[axis]))
    return out[0], out[1], out[2]


def brain_noise_sd(image: np.ndarray, mask: np.ndarray) -> float:
    """Noise SD estimated inside ``mask`` from the finest 3-D Haar wavelet band (image units).

    The image is cut into 2x2x2 blocks; each block lying wholly inside the
    mask gives one diagonal (HHH) Haar coefficient
    ``sum_ijk (-1)^(i+j+k) x_ijk / sqrt(8)``, which is 0 for any image that
    is linear within the block and has the noise SD for white noise. The
    estimate is ``median(|HHH|) / 0.6745`` (Donoho & Johnstone, Biometrika
    81(3):425, 1994; scikit-image's ``estimate_sigma`` does the same on the
    whole image with PyWavelets). The median keeps tissue edges from
    counting. Inside tissue, magnitude noise at SNR > 3 is nearly Gaussian
    with the channel SD, so this is the sigma of :func:`snr_dietrich`.

    isyb uses it only where the air holds no noise (see
    :func:`anat_metrics`); MRIQC has no such fall-back. Anatomical texture
    raises it a little, smoothing by the scanner or by resampling lowers it.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.shape or not mask.any():
        raise QCInputError("the noise mask is empty or does not match the image")
    box = _box(mask)
    x = np.asarray(image[box], dtype=np.float64)
    m = mask[box]
    n = [s - s % 2 for s in x.shape]
    if min(n) < 2:
        raise QCInputError("the noise mask is too thin for 2x2x2 blocks")
    x, m = x[: n[0], : n[1], : n[2]], m[: n[0], : n[1], : n[2]]
    detail = np.zeros([s // 2 for s in n])
    inside = np.ones(detail.shape, dtype=bool)
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                sign = 1.0 if (i + j + k) % 2 == 0 else -1.0
                detail += sign * x[i::2, j::2, k::2]
                inside &= m[i::2, j::2, k::2]
    coefficients = detail[inside] / math.sqrt(8.0)
    if coefficients.size < MIN_MASK_VOXELS:
        raise QCInputError(f"only {coefficients.size} 2x2x2 blocks inside the noise mask")
    return _positive(float(np.median(np.abs(coefficients))) * MAD_TO_SD,
                     "the noise SD estimated in the brain")


# ---------------------------------------------------------------------------
# Segmentation


@dataclass(frozen=True)
class Mixture:
    """A 1-D Gaussian mixture: weights, means and SDs of each class, by increasing mean."""

    weights: np.ndarray
    means: np.ndarray
    sds: np.ndarray

    def posteriors(self, values: np.ndarray) -> np.ndarray:
        """Class probabilities (n, k) of each value, float32."""
        x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
        log_p = (np.log(self.weights) - np.log(self.sds) - 0.5 * ((x - self.means) / self.sds) ** 2)
        log_p -= log_p.max(axis=1, keepdims=True)
        p = np.exp(log_p)
        p /= p.sum(axis=1, keepdims=True)
        return p.astype(np.float32)


def fit_mixture(values: np.ndarray, n_classes: int = 3, *, bins: int = 512,
                min_sd_fraction: float = 0.02, max_iter: int = 1000,
                tol: float = 1e-9) -> Mixture:
    """Maximum-likelihood Gaussian mixture of 1-D intensities (EM on a fine histogram).

    The values are clipped to their 0.05th-99.95th percentiles and binned
    into ``bins`` bins; EM (Dempster, Laird & Rubin 1977) runs on the bin
    centres weighted by their counts from two starts, and the fit with the
    higher likelihood wins: means at the 10th, 50th and 90th percentiles (for
    3 classes; evenly spaced percentiles otherwise), and means evenly spaced
    over the range (at 1/6, 1/2, 5/6 of it). The second start matters when
    one tissue dominates: with 80 % white matter, the percentile start puts
    two classes in the white matter and EM stays there. Both starts have equal
    weights and SDs of a sixth of the range. Each SD is kept at least
    ``min_sd_fraction`` of the range, so that a class cannot collapse onto a
    spike of identical values (FreeSurfer's ``T1.mgz`` sets most of the white
    matter to exactly 110). Deterministic; the binning changes the fit by
    far less than a bin width. Same model as scikit-learn's
    ``GaussianMixture(covariance_type="full")`` in 1-D, at a fraction of the
    time on millions of voxels.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = np.percentile(values, [0.05, 99.95])
    if not hi > lo:
        raise QCInputError("the intensities to segment are (almost) constant")
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    x = 0.5 * (edges[:-1] + edges[1:])
    w = counts / counts.sum()
    cdf = np.cumsum(w)
    quantiles = [0.1, 0.5, 0.9] if n_classes == 3 else np.linspace(0.1, 0.9, n_classes)
    span = hi - lo
    starts = (np.array([x[min(int(np.searchsorted(cdf, q)), bins - 1)] for q in quantiles]),
              lo + span * (np.arange(n_classes) + 0.5) / n_classes)
    fits = [_em(x, w, means, span, min_sd_fraction, max_iter, tol) for means in starts]
    _, weights, means, var = max(fits, key=lambda fit: fit[0])
    order = np.argsort(means)
    return Mixture(weights=weights[order], means=means[order], sds=np.sqrt(var[order]))


def _em(x: np.ndarray, w: np.ndarray, means: np.ndarray, span: float, min_sd_fraction: float,
        max_iter: int, tol: float) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """EM of a 1-D Gaussian mixture on weighted points: (log-likelihood, weights, means, var)."""
    n_classes = means.size
    min_var = (min_sd_fraction * span) ** 2
    var = np.full(n_classes, (span / 6.0) ** 2)
    weights = np.full(n_classes, 1.0 / n_classes)
    previous = likelihood = -np.inf
    for _ in range(max_iter):
        log_p = (np.log(weights) - 0.5 * np.log(2 * np.pi * var)
                 - 0.5 * (x[:, None] - means) ** 2 / var)
        top = log_p.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(log_p - top).sum(axis=1))
        resp = np.exp(log_p - log_norm[:, None])
        likelihood = float(w @ log_norm)
        nk = np.maximum(w @ resp, 1e-12)
        weights = nk / nk.sum()
        means = (w * x) @ resp / nk
        var = np.maximum(((w[:, None] * resp) * (x[:, None] - means) ** 2).sum(axis=0) / nk,
                         min_var)
        if likelihood - previous < tol:
            break
        previous = likelihood
    return likelihood, weights, means, var


def _tissue_probabilities(data: np.ndarray, brain: np.ndarray, zooms: np.ndarray,
                          contrast: Contrast,
                          smooth_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """Brain bounding box and the smoothed (CSF, GM, WM) probabilities in it (3, ...)."""
    if contrast not in ("T1w", "T2w"):
        raise QCInputError(f"contrast must be 'T1w' or 'T2w', got {contrast!r}")
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != data.shape:
        raise QCInputError(f"the brain mask has shape {brain.shape}, the image {data.shape}")
    if int(brain.sum()) < 1000:
        raise QCInputError(f"the brain mask holds {int(brain.sum())} voxels; at least 1000 "
                           "are needed to segment the tissues")
    box = _box(brain, pad=2)
    b = brain[box]
    values = np.asarray(data[box][b], dtype=np.float64)
    post = fit_mixture(values).posteriors(values)
    if contrast == "T2w":  # CSF brightest, WM darkest
        post = post[:, ::-1]
    sigma = smooth_mm / zooms
    prob = np.zeros((3, *b.shape), dtype=np.float32)
    for k in range(3):
        prob[k][b] = post[:, k]
        if smooth_mm > 0:
            prob[k] = ndi.gaussian_filter(prob[k], sigma, mode="constant", truncate=3.0)
    prob[:, ~b] = 0.0
    return box, prob


def segment_tissues(data: np.ndarray, brain_mask: np.ndarray,
                    zooms: np.ndarray | tuple[float, ...], *, contrast: Contrast = "T1w",
                    smooth_mm: float = 1.0) -> np.ndarray:
    """Label the brain voxels CSF (1), GM (2) or WM (3); 0 outside ``brain_mask``.

    Method: a 3-class Gaussian mixture is fitted to the brain intensities
    (:func:`fit_mixture`; one mean, SD and weight per class); each brain
    voxel gets its three class probabilities; each probability map is
    smoothed with a Gaussian of SD ``smooth_mm`` (a cheap stand-in for the
    Markov random field of FSL FAST or ANTs Atropos: an isolated noisy voxel
    takes the class of its neighbourhood); the label is the most probable
    class. Classes are named by their mean: CSF < GM < WM for T1w, the
    reverse for T2w. Deterministic (no random initialisation).

    Why not FAST or Atropos: FAST needs FSL; ANTsPy's Atropos would fit the
    same three intensity classes with a true Markov random field, at the
    cost of an image round trip through ITK and more parameters, while the
    metrics only need tissue cores (:func:`tissue_masks`), not exact
    boundaries. No bias-field correction is done first (MRIQC runs N4), so a
    strong field shifts the labels.
    """
    zooms = np.asarray(zooms, dtype=float)
    labels, _ = _labels_and_cores(np.asarray(data), brain_mask, zooms, contrast, smooth_mm,
                                  cores=False)
    return labels


def _labels_and_cores(data: np.ndarray, brain_mask: np.ndarray, zooms: np.ndarray,
                      contrast: Contrast, smooth_mm: float,
                      cores: bool) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    box, prob = _tissue_probabilities(data, brain_mask, zooms, contrast, smooth_mm)
    brain = np.asarray(brain_mask, dtype=bool)
    sub = (np.argmax(prob, axis=0) + 1).astype(np.uint8)
    del prob
    sub[~brain[box]] = 0
    labels = np.zeros(data.shape, dtype=np.uint8)
    labels[box] = sub
    out: dict[int, np.ndarray] = {}
    if cores:
        erode = bool(np.all(zooms < 1.9))
        for label in (GM, WM):
            core_box = sub == label
            if erode:
                eroded = erode18(core_box)
                if int(eroded.sum()) >= MIN_MASK_VOXELS:
                    core_box = eroded
            core = np.zeros(data.shape, dtype=bool)
            core[box] = core_box
            out[label] = core
    return labels, out


def tissue_masks(data: np.ndarray, brain_mask: np.ndarray,
                 zooms: np.ndarray | tuple[float, ...], *, contrast: Contrast = "T1w",
                 smooth_mm: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (as :func:`segment_tissues`) and the GM and WM cores that the statistics use.

    A core is the tissue's label eroded once with the 18-connected element
    when every voxel side is under 1.9 mm, which drops the partial-volume
    voxels at tissue boundaries. MRIQC erodes the same way, after keeping
    the voxels whose FAST partial-volume fraction exceeds 0.85; isyb's
    labels have no partial-volume fractions. A core that the erosion would
    leave with fewer than 100 voxels (thin cortex, coarse voxels) is kept
    uneroded. Returns ``(labels, gm_core, wm_core)``.
    """
    zooms = np.asarray(zooms, dtype=float)
    labels, cores = _labels_and_cores(np.asarray(data), brain_mask, zooms, contrast,
                                      smooth_mm, cores=True)
    return labels, cores[GM], cores[WM]


# ---------------------------------------------------------------------------
# Morphology with separable filters (fast on 256^3 grids)


def _min_filter(mask: np.ndarray, size: tuple[int, int, int], outside: int) -> np.ndarray:
    return ndi.minimum_filter(mask.view(np.uint8), size=size, mode="constant",
                              cval=outside).view(bool)


def _max_filter(mask: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    return ndi.maximum_filter(mask.view(np.uint8), size=size, mode="constant",
                              cval=0).view(bool)


def erode18(mask: np.ndarray) -> np.ndarray:
    """One erosion with the 18-connected 3x3x3 element (MRIQC's tissue erosion).

    The 18-neighbourhood is the union of the three 3x3 squares through the
    centre, so the erosion is the intersection of three separable planar
    erosions (same result as ``binary_erosion`` with
    ``generate_binary_structure(3, 2)``, several times faster).
    """
    mask = np.ascontiguousarray(mask, dtype=bool)
    out = _min_filter(mask, (3, 3, 1), 0)
    out &= _min_filter(mask, (3, 1, 3), 0)
    out &= _min_filter(mask, (1, 3, 3), 0)
    return out


# ---------------------------------------------------------------------------
# Air


def empty_mask(data: np.ndarray, *, block: int = 3) -> np.ndarray:
    """Voxels in solid blocks of values <= 0: padding, rotation frames, zeroed faces.

    A voxel is "empty" when it lies in some ``block`` x ``block`` x ``block``
    cube whose voxels are all <= 0 (a morphological opening of
    ``data <= 0`` with that cube; the FOV border counts as empty). Recorded
    magnitude noise does not do that: even where 12 % of the air voxels are
    0 (Rayleigh noise of sigma one unit, rounded to integers), 27 zeros in a
    cube happen with probability 0.12^27 ~ 1e-25. Such blocks come from
    zero-filled FOV extensions, resampling frames, defacing that zeroes the
    face, or background suppression. MRIQC's rotation mask is the same idea
    (opening of ``data <= 0`` with the 18-connected element).
    """
    zero = np.ascontiguousarray(np.asarray(data) <= 0)
    if not zero.any():
        return zero
    size = (block,) * 3
    return _max_filter(_min_filter(zero, size, 1), size)


def hat_region(brain: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
               plane_margin_mm: float = 10.0, front_fraction: float = 0.25) -> np.ndarray:
    """The region above the nasion-cerebellum plane and behind the front of the brain.

    From the brain mask (RAS; mm along the array axes): ``L`` is the brain's
    anterior-posterior length; the *front point* is the lowest brain voxel
    within 0.15 L of the frontal pole (the orbital surface of the frontal
    lobe, just above the nasion); the *back point* the lowest brain voxel
    within 0.15 L of the occipital pole (the bottom of the cerebellum). The
    region is every voxel more than ``plane_margin_mm`` above the plane
    through these two points (perpendicular to the sagittal plane) and more
    than ``front_fraction * L`` behind the frontal pole: the air above and
    behind the head, without the forehead, the face, the neck and the lower
    part of the ears, which is where face masking acts (isyb's face region
    lies in front of a plane tangent to the front half of the brain, tilted
    30 degrees down; pydeface, mri_deface and quickshear act in front of and
    below the face). MRIQC's "hat" is the same idea: the air above the
    nasion-cerebellum plane, placed by registration to MNI space rather than
    from the brain mask. Returns a read-only broadcast view.
    """
    zooms = np.asarray(zooms, dtype=float)
    brain = np.asarray(brain, dtype=bool)
    if not brain.any():
        raise QCInputError("the brain mask is empty")
    ys, zs = np.nonzero(brain.any(axis=0))
    y_mm, z_mm = ys * zooms[1], zs * zooms[2]
    y_front, y_back = float(y_mm.max()), float(y_mm.min())
    length = y_front - y_back
    if length <= 0:
        raise QCInputError("the brain mask has no anterior-posterior extent")
    z_front = float(z_mm[y_mm >= y_front - 0.15 * length].min())
    z_back = float(z_mm[y_mm <= y_back + 0.15 * length].min())
    y_axis = np.arange(brain.shape[1]) * zooms[1]
    z_axis = np.arange(brain.shape[2]) * zooms[2]
    plane = z_back + (z_front - z_back) / length * (y_axis - y_back)
    above = z_axis[None, :] > plane[:, None] + plane_margin_mm
    behind = (y_axis < y_front - front_fraction * length)[:, None]
    return np.broadcast_to((above & behind)[None, :, :], brain.shape)


def air_mask(data: np.ndarray, head: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
             brain: np.ndarray, empty: np.ndarray | None = None, border_mm: float = 5.0,
             skin_gap_mm: float = 5.0, plane_margin_mm: float = 10.0,
             front_fraction: float = 0.25, min_live_fraction: float = 0.05,
             artifact_z: float = 10.0, min_voxels: int = 1000) -> np.ndarray:
    """Air voxels that measure the background of the scan and that no defacing touches.

    Start from the voxels outside ``head`` (every voxel that may be tissue:
    :func:`anat_masks` passes the solid head of
    :func:`isyb.deface.obscure.head_mask`, every voxel above the skin
    threshold, and the brain) and keep those that are:

    1. in :func:`hat_region`: above the nasion-cerebellum plane (plus
       ``plane_margin_mm``) and behind the front quarter of the brain, and
       connected to the FOV border within that region. Air in front of and
       below the face, where defacing acts, is never used, and neither is a
       dark cavity (skull, sinus) that a removed face opened to the outside:
       this is what makes the background metrics of a scan and of its defaced
       copies agree, whatever the defacing tool wrote (zeros, noise, blurred
       tissue);
    2. more than ``skin_gap_mm`` (and 2 voxels) from the head along every
       axis (a box around each head voxel): the partial-volume shell of the
       skin is not background;
    3. more than ``border_mm`` (and 2 voxels) from the FOV border, where
       wrap-around and interpolation edges sit;
    4. not in :func:`empty_mask` (solid blocks of zeros from padding or
       zeroing). If fewer than ``min_live_fraction`` of the voxels that steps
       1-3 kept are left, the background was suppressed (set to 0 beyond a
       thin halo around the skin, as in FreeSurfer-conformed, template-space
       and many processed images): it holds no noise to measure, and
       :class:`NoBackgroundError` is raised;
    5. not artefact: a voxel brighter than ``median + artifact_z * MAD_n``
       of the positive air values, in a cluster that survives an opening with
       the 6-connected element (ghosts, wrap-around, flow artefacts; MRIQC's
       step after Mortamet et al., MRM 62(2):365, 2009, with the same z = 10).

    Raises :class:`NoBackgroundError` (a :class:`QCInputError`) for a
    suppressed background, or when fewer than ``min_voxels`` remain (a
    skull-stripped image, a FOV cut at the skin).
    """
    zooms = np.asarray(zooms, dtype=float)
    data = np.asarray(data)
    head = np.ascontiguousarray(head, dtype=bool)
    if head.shape != data.shape:
        raise QCInputError(f"the head mask has shape {head.shape}, the image {data.shape}")
    cand = ~head & hat_region(brain, zooms, plane_margin_mm=plane_margin_mm,
                              front_fraction=front_fraction)
    # Only air connected to the FOV border *within the hat* is outside: a face
    # that defacing removed opens a path from the border into the dark skull
    # or the sinuses, but that path runs through the face, outside the hat.
    pieces, _ = ndi.label(cand)
    border = np.unique(np.concatenate([np.take(pieces, i, axis=a).ravel()
                                       for a in range(3) for i in (0, -1)]))
    cand = np.isin(pieces, border[border > 0])
    del pieces
    for axis, n in enumerate(data.shape):
        k = max(2, math.ceil(border_mm / zooms[axis]))
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, min(k, n))
        cand[tuple(index)] = False
        index[axis] = slice(max(n - k, 0), n)
        cand[tuple(index)] = False
    gap = np.maximum(np.ceil(skin_gap_mm / zooms), 2).astype(int)
    cand &= ~_max_filter(head, tuple(int(2 * g + 1) for g in gap))  # type: ignore[arg-type]
    if empty is None:
        empty = empty_mask(data)
    n_cand = int(cand.sum())
    cand &= ~np.asarray(empty, dtype=bool)
    n_live = int(cand.sum())
    if n_live < min_voxels or n_live < min_live_fraction * n_cand:
        raise NoBackgroundError(
            f"no measurable background: of {n_cand} air voxels above the nasion-cerebellum "
            f"plane, {n_live} are not in solid blocks of zeros (need {min_voxels} and "
            f"{min_live_fraction:.0%}); the background was suppressed or cut off")
    values = np.asarray(data[cand], dtype=np.float64)
    positive = values[values > 0]
    if positive.size >= MIN_MASK_VOXELS:
        location = float(np.median(positive))
        spread = robust_sd(positive)
        if spread > 0:
            bright = cand & (data > location + artifact_z * spread)
            if bright.any():
                bright = ndi.binary_opening(bright,
                                            structure=ndi.generate_binary_structure(3, 1))
                cand &= ~bright
    count = int(cand.sum())
    if count < min_voxels:
        raise NoBackgroundError(
            f"only {count} usable air voxels (need {min_voxels}): the image has too little "
            "background above the nasion-cerebellum plane (skull-stripped, or a FOV cut at "
            "the skin)")
    return cand


# ---------------------------------------------------------------------------
# All together


@dataclass
class AnatMasks:
    """The masks behind :func:`anat_metrics` (RAS boolean arrays on the image grid).

    ``labels`` is uint8 (0 outside the brain, :data:`CSF`, :data:`GM`,
    :data:`WM`); ``gm`` and ``wm`` are the tissue cores the statistics use
    (:func:`tissue_masks`); ``head`` the solid head; ``air`` the
    :func:`air_mask`; ``empty`` the :func:`empty_mask` voxels left out of EFC.
    ``noise_source`` is ``"air"``, or ``"brain"`` when the image has no
    measurable background (``air`` is then all False and ``note`` says why;
    see :func:`anat_metrics`).
    """

    brain: np.ndarray
    head: np.ndarray
    air: np.ndarray
    empty: np.ndarray
    labels: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    noise_source: Literal["air", "brain"] = "air"
    note: str = ""

    @property
    def air_empty_fraction(self) -> float:
        """Fraction of the air voxels that are empty (> 0.5: a suppressed background)."""
        return float((self.air & self.empty).sum() / max(int(self.air.sum()), 1))


def _check_image(data: np.ndarray) -> np.ndarray:
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise QCInputError(f"anatomical QC needs a 3-D image, got {data.ndim}-D "
                           f"shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise QCInputError(f"anatomical QC needs real numbers, got {data.dtype}")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise QCInputError(f"the image has {bad} NaN or infinite voxels")
    out = np.maximum(data.astype(np.float32, copy=False), np.float32(0.0))
    if not np.any(out > 0):
        raise QCInputError("the image has no positive values")
    return out


def anat_masks(data: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
               brain: np.ndarray | None = None, contrast: Contrast = "T1w",
               smooth_mm: float = 1.0) -> AnatMasks:
    """Brain, head, air, empty and tissue masks of a head image (RAS, ``zooms`` in mm).

    ``brain`` defaults to :func:`isyb.brain.extract_brain` (deepbet). The
    head is :func:`isyb.deface.obscure.head_mask` at
    :func:`isyb.render.skin_threshold`, joined with the brain.
    """
    from isyb.deface.obscure import head_mask
    from isyb.render import skin_threshold

    image = _check_image(data)
    zooms = np.asarray(zooms, dtype=float)
    if zooms.shape != (3,) or np.any(zooms <= 0):
        raise QCInputError(f"voxel sizes must be three positive numbers, got {zooms}")
    if brain is None:
        from isyb.brain import extract_brain

        brain = extract_brain(image, zooms)
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != image.shape:
        raise QCInputError(f"the brain mask has shape {brain.shape}, the image {image.shape}")
    if not brain.any():
        raise QCInputError("the brain mask is empty")
    labels, gm, wm = tissue_masks(image, brain, zooms, contrast=contrast, smooth_mm=smooth_mm)
    threshold = skin_threshold(image)
    head = head_mask(image, threshold) | brain | (image > threshold)
    empty = empty_mask(image)
    try:
        air = air_mask(image, head, zooms, brain=brain, empty=empty)
    except NoBackgroundError as exc:
        return AnatMasks(brain=brain, head=head, air=np.zeros_like(brain), empty=empty,
                         labels=labels, gm=gm, wm=wm, noise_source="brain", note=str(exc))
    return AnatMasks(brain=brain, head=head, air=air, empty=empty, labels=labels, gm=gm, wm=wm)


def anat_metrics(data: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
                 brain: np.ndarray | None = None, contrast: Contrast = "T1w",
                 masks: AnatMasks | None = None) -> dict[str, float]:
    """All anatomical metrics of a RAS head image, as floats.

    Keys: ``snr`` (:func:`snr` of GM), ``snrd_gm`` (:func:`snr_dietrich` of
    GM), ``cnr``, ``fber``, ``efc`` (over all voxels except
    :func:`empty_mask`), ``fwhm_x``, ``fwhm_y``, ``fwhm_z`` (mm, along the RAS
    axes, inside the brain mask), ``fwhm_avg`` (their arithmetic mean, mm;
    MRIQC's ``fwhm_avg`` is the mean in voxels, AFNI's ``-combine`` value the
    geometric mean), ``cjv`` and ``wm2max``. ``masks`` reuses the output of
    :func:`anat_masks`. Raises :class:`QCInputError` (a ValueError) naming the
    problem instead of returning NaN or -1.

    Images without a measurable background (``masks.noise_source ==
    "brain"``: the air was set to 0 by the scanner or by processing, as in
    FreeSurfer-conformed or template-space images, or cut off by the FOV)
    have no SD of air. For them the noise SD sigma is estimated inside the
    brain (:func:`brain_noise_sd`) and the air is taken to be the Rayleigh
    background that noise would give: SD(air) = 0.6551 sigma for ``snr``,
    ``snrd_gm`` and ``cnr``, and mean energy 2 sigma^2 for ``fber``. Such
    values are comparable with each other but not with those of scans with a
    real background; report ``masks.noise_source`` next to them. MRIQC has
    no such fall-back (it gives 0, -1 or a MAD-based value there).
    """
    image = _check_image(data)
    zooms = np.asarray(zooms, dtype=float)
    if masks is None:
        masks = anat_masks(image, zooms, brain=brain, contrast=contrast)
    fx, fy, fz = fwhm_afni(image, masks.brain, zooms)
    air_sd: np.ndarray | float = masks.air
    air_energy: np.ndarray | float = masks.air
    if masks.noise_source == "brain":
        sigma = brain_noise_sd(image, masks.brain)
        air_sd = DIETRICH_FACTOR * sigma  # SD of Rayleigh air with channel SD sigma
        air_energy = 2.0 * sigma * sigma  # its mean energy E[|air|^2]
    result = {
        "snr": snr(image, masks.gm, air_sd),
        "snrd_gm": snr_dietrich(image, masks.gm, air_sd),
        "cnr": cnr(image, masks.gm, masks.wm, air_sd),
        "fber": fber(image, masks.head, air_energy),
        "efc": efc(image, ~masks.empty),
        "fwhm_x": fx,
        "fwhm_y": fy,
        "fwhm_z": fz,
        "fwhm_avg": (fx + fy + fz) / 3.0,
        "cjv": cjv(image, masks.gm, masks.wm),
        "wm2max": wm2max(image, masks.wm),
    }
    for key, value in result.items():
        if not np.isfinite(value):
            raise QCInputError(f"{key} came out as {value}")
    return {key: float(value) for key, value in result.items()}
