"""Image quality metrics of structural head scans (T1w, T2w), after MRIQC 24.

Every metric is a plain function of numpy arrays (and voxel sizes in mm
where it needs them); :func:`anat_metrics` builds the masks and calls them
all. Arrays are in RAS voxel order, as :func:`isyb.io.load_volume` gives them
(axis 0 left->Right, axis 1 posterior->Anterior, axis 2 inferior->Superior).

**MRIQC's names, MRIQC's definitions.** The columns named like MRIQC's IQMs
(``summary_*``, ``snr_*``, ``snrd_*``, ``cnr``, ``cjv``, ``fber``, ``efc``,
``wm2max``, ``icvs_*``, ``fwhm_*``) are computed by
:func:`isyb.qc.mriqc.mriqc_metrics` and :func:`isyb.qc.mriqc.fwhm_columns`
with MRIQC 24.0.2's formulas (:mod:`isyb.qc.mriqc`) on the image MRIQC
computes them on: the scan clipped to the 10th-99.9th percentiles of its
positive values and rescaled to 0..255
(:func:`isyb.qc.masks.intensity_clip`, niworkflows' ``IntensityClip``), N4
bias-field corrected, segmented by Atropos into CSF, GM and WM posteriors
(:func:`isyb.head.tissue.atropos_tissues`; MRIQC 24 uses Atropos, not FSL
FAST), and rescaled so that the median of the white matter is 1000. The
statistics are MRIQC 24's posterior-weighted ones, not eroded hard masks.
``fwhm_*`` are in voxels, as MRIQC's; ``fwhm_*_mm`` in mm. What still
differs: Atropos is initialised from isyb's intensity mixture instead of MNI
tissue priors; the brain mask is deepbet's, not SynthStrip's; the air
("hat") mask is isyb's :func:`isyb.qc.masks.air_mask`, which also leaves out
the air in front of and below the face; the "rotation" mask is
:func:`isyb.qc.masks.empty_mask`; the clip thresholds come from a cheaper
median filter. Without a measurable background the air statistics are
undefined, and ``summary_bg_*``, ``snrd_*`` and ``cnr`` are left out.

**isyb's own metrics, isyb's names.** ``isyb_snr`` (the data descriptor's
mean GM / SD of the air), ``isyb_snrd_gm``, ``isyb_cnr`` and ``isyb_fber``
are computed on the unprocessed image (negative values clipped to 0) with
the eroded GM/WM cores and the defacing-proof air mask, and fall back on the
noise measured inside the brain when the background was zeroed
(``noise_source``: ``"air"`` or ``"brain"``). Each function says how it
differs from the MRIQC metric of the similar name.

Sources: nipreps/mriqc 24.0.2 ``mriqc/qc/anatomical.py``,
``mriqc/interfaces/anatomical.py`` (``StructuralQC``, ``Harmonize``),
``mriqc/workflows/shared.py`` and ``mriqc/workflows/anatomical/base.py``;
Esteban et al., PLoS ONE 12(9):e0184661, 2017. The code here is isyb's own.
MRIQC's ``qi_1``, ``qi_2``, ``inu_*``, ``rpve_*`` and ``tpm_overlap_*`` are
not computed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import nibabel as nib
import numpy as np
from scipy.special import xlogy

from isyb.head.morphology import bounding_box
from isyb.io import Volume, load_volume, volume_from_image
from isyb.qc.masks import (
    MAD_TO_SD,
    MIN_MASK_VOXELS,
    AnatMasks,
    NoBackgroundError,
    QCInputError,
    anat_masks,
    check_image,
    robust_sd,
)
from isyb.qc.mriqc import fwhm_columns, mriqc_metrics

__all__ = [
    "DIETRICH_FACTOR",
    "AnatMasks",
    "AnatQC",
    "NoBackgroundError",
    "QCInputError",
    "anat_masks",
    "anat_metrics",
    "brain_noise_sd",
    "cnr",
    "efc",
    "fber",
    "fwhm_afni",
    "fwhm_columns",
    "mriqc_metrics",
    "qc_anat",
    "robust_sd",
    "snr",
    "snr_dietrich",
]

#: sqrt((4 - pi) / 2) = 1 / sqrt(2 / (4 - pi)) = 0.6551: the SD of a Rayleigh
#: distribution in units of the Gaussian noise SD of each channel (Dietrich et
#: al., JMRI 26(2):375, 2007, eq. A.12). MRIQC's ``DIETRICH_FACTOR``.
DIETRICH_FACTOR = math.sqrt((4.0 - math.pi) / 2.0)

#: sqrt(8 ln 2): Gaussian sigma to FWHM, rounded as in AFNI's mri_fwhm.c.
SIGMA_TO_FWHM = 2.35482


Contrast = Literal["T1w", "T2w"]


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
    box = bounding_box(mask)
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
    box = bounding_box(mask)
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
# All together


def anat_metrics(data: np.ndarray, zooms: np.ndarray | tuple[float, ...], *,
                 brain: np.ndarray | None = None, contrast: Contrast = "T1w",
                 masks: AnatMasks | None = None) -> dict[str, float]:
    """All anatomical metrics of a RAS head image, as floats.

    MRIQC's IQMs under MRIQC's names (:func:`mriqc_metrics`), the smoothness
    (:func:`fwhm_afni` of the image inside the brain mask, as
    :func:`fwhm_columns`: ``fwhm_*`` in voxels, ``fwhm_*_mm`` in mm), and
    isyb's own metrics, on the unprocessed image with the GM/WM cores and the
    air mask, under isyb's names: ``isyb_snr`` (:func:`snr`: the data
    descriptor's mean GM / SD of the air), ``isyb_snrd_gm``
    (:func:`snr_dietrich`), ``isyb_cnr`` (:func:`cnr`), ``isyb_fber``
    (:func:`fber`). ``masks`` reuses the output of :func:`anat_masks`.
    Raises :class:`QCInputError` (a ValueError) naming the problem instead of
    returning NaN.

    Images without a measurable background (``masks.noise_source ==
    "brain"``: the air was set to 0 by the scanner or by processing, as in
    FreeSurfer-conformed or template-space images, or cut off by the FOV)
    have no SD of air. For the ``isyb_*`` metrics the noise SD sigma is then
    estimated inside the brain (:func:`brain_noise_sd`) and the air is taken
    to be the Rayleigh background that noise would give: SD(air) = 0.6551
    sigma for ``isyb_snr``, ``isyb_snrd_gm`` and ``isyb_cnr``, and mean
    energy 2 sigma^2 for ``isyb_fber``. Such values are comparable with each
    other but not with those of scans with a real background: the group rule
    compares each noise source's runs among themselves. MRIQC has no such
    fall-back.
    """
    image = check_image(data)
    zooms = np.asarray(zooms, dtype=float)
    if masks is None:
        masks = anat_masks(image, zooms, brain=brain, contrast=contrast)
    air_sd: np.ndarray | float = masks.air
    air_energy: np.ndarray | float = masks.air
    if masks.noise_source == "brain":
        sigma = brain_noise_sd(image, masks.brain)
        air_sd = DIETRICH_FACTOR * sigma  # SD of Rayleigh air with channel SD sigma
        air_energy = 2.0 * sigma * sigma  # its mean energy E[|air|^2]
    result = mriqc_metrics(masks)
    result.update(fwhm_columns(fwhm_afni(image, masks.brain, zooms), zooms))
    result.update({
        "isyb_snr": snr(image, masks.gm, air_sd),
        "isyb_snrd_gm": snr_dietrich(image, masks.gm, air_sd),
        "isyb_cnr": cnr(image, masks.gm, masks.wm, air_sd),
        "isyb_fber": fber(image, masks.head, air_energy),
    })
    for key, value in result.items():
        if not np.isfinite(value):
            raise QCInputError(f"{key} came out as {value}")
    return {key: float(value) for key, value in result.items()}


@dataclass
class AnatQC:
    """What :func:`qc_anat` measured on one image.

    ``metrics`` are :func:`anat_metrics`' floats; ``masks`` the
    :class:`AnatMasks` behind them; ``volume`` the image in RAS order (for
    figures), ``contrast`` the contrast the tissues were segmented as.
    """

    metrics: dict[str, float]
    masks: AnatMasks
    volume: Volume
    contrast: Contrast

    def to_json(self) -> dict[str, float | str]:
        """The metrics, ``noise_source`` and, when there is one, ``note``: the record
        ``isyb qc anat`` prints."""
        record: dict[str, float | str] = {**self.metrics, "noise_source": self.masks.noise_source}
        if self.masks.note:
            record["note"] = self.masks.note
        return record


def qc_anat(image: str | os.PathLike | nib.spatialimages.SpatialImage, *,
            contrast: Contrast = "T1w") -> AnatQC:
    """Anatomical image quality metrics of a T1w or T2w head scan (file or in-memory image).

    ``image`` is a NIfTI/MGZ path or a 3-D nibabel image (as nilearn's
    ``check_niimg``); it is viewed in RAS order (:func:`isyb.io.load_volume`),
    the brain extracted and the tissues segmented (:func:`anat_masks`), and
    every metric of :func:`anat_metrics` computed. Raises
    :class:`QCInputError` (one line on the command line) for an image QC
    cannot use.
    """
    if isinstance(image, nib.spatialimages.SpatialImage):
        if len(image.shape) != 3 and image.shape[3:] != (1,):
            raise QCInputError(f"anatomical QC needs a 3-D image, got shape {image.shape}")
        volume = volume_from_image(image)
    elif isinstance(image, str | os.PathLike):
        volume = load_volume(image)
    else:
        raise TypeError(f"expected a path or a nibabel image, got {type(image).__name__}")
    masks = anat_masks(volume.data, volume.zooms, contrast=contrast)
    metrics = anat_metrics(volume.data, volume.zooms, contrast=contrast, masks=masks)
    return AnatQC(metrics=metrics, masks=masks, volume=volume, contrast=contrast)
