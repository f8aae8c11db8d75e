"""Three-tissue segmentation of a brain (CSF, GM, WM), shared by QC and derived metrics.

A Gaussian mixture of the brain intensities with a light spatial
regularisation (:func:`segment_tissues`), and the eroded tissue cores that
image-quality statistics use (:func:`tissue_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage as ndi

from isyb.errors import InputError
from isyb.head.morphology import bounding_box, erode18

Contrast = Literal["T1w", "T2w"]

#: Fewest voxels an eroded tissue core may hold before the erosion is undone.
MIN_CORE_VOXELS = 100

#: Tissue labels returned by :func:`segment_tissues` (0 is outside the brain).
CSF, GM, WM = 1, 2, 3


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
        raise InputError("the intensities to segment are (almost) constant")
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
        raise InputError(f"contrast must be 'T1w' or 'T2w', got {contrast!r}")
    brain = np.asarray(brain, dtype=bool)
    if brain.shape != data.shape:
        raise InputError(f"the brain mask has shape {brain.shape}, the image {data.shape}")
    if int(brain.sum()) < 1000:
        raise InputError(f"the brain mask holds {int(brain.sum())} voxels; at least 1000 "
                           "are needed to segment the tissues")
    box = bounding_box(brain, pad=2)
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
                if int(eroded.sum()) >= MIN_CORE_VOXELS:
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


