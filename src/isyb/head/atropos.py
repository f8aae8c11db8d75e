"""ANTs Atropos' tissue segmentation at MRIQC's settings, written in numpy.

:func:`atropos_posteriors` is Atropos' algorithm (Avants et al.,
Neuroinformatics 9(4):381, 2011; ANTs ``antsAtroposSegmentationImageFilter.hxx``)
for what isyb and MRIQC 24 ask of it: one intensity image, a mask, K-means
initialisation at given means (``-i KMeans[3,m1xm2xm3]``), Gaussian
likelihoods, the "Socrates" posterior with no spatial priors, a Potts MRF of
smoothing ``beta`` on the 3x3x3 neighbourhood (``-m [beta,1x1x1]``), one
asynchronous ICM sweep per iteration and Atropos' stopping rule
(``-c [iterations,threshold]``). Step by step, as Atropos:

1. K-means (Lloyd's algorithm, to a fixed point or 200 iterations, as ITK's
   ``KdTreeBasedKmeansEstimator`` with a change threshold of 0) of the masked
   intensities from the given means; each voxel takes the nearest centroid's
   label (labels by increasing centroid). Each class gets the mean and the
   variance (``n - 1``) of its voxels.
2. Each iteration: the Gaussian likelihood ``L_k`` of each voxel under each
   class, at least 1e-10; the MRF prior ``M_k = exp(beta S_k) / sum_j exp(beta
   S_j)``, where ``S_k`` sums ``1 / d`` over the 26 neighbours labelled ``k``
   (``d`` the neighbour's distance in mm; voxels outside the mask count for no
   class), at least 1e-10. The unnormalised posterior is ``L_k M_k`` (with
   weight 0 on the absent spatial priors, Socrates' ``prior^w (L M)^(1-w)`` is
   ``L M``; the mixing proportions do not enter it).

   a. ICM: the voxels are visited code by code, each voxel taking the label of
      its largest posterior given its neighbours' current labels; the sum of
      the normalised largest posteriors, divided by the number of voxels, is
      the iteration's "posterior probability".
   b. The normalised posteriors of every voxel with the labels after ICM;
      each voxel takes the most probable label.
   c. Each class's mean and variance weighted by its posteriors (ITK's
      ``WeightedCovarianceSampleFilter``: ``sum w (x - m)^2 / (sum w - sum w^2 /
      sum w)``).

   Atropos stops after ``iterations`` iterations, or as soon as the posterior
   probability grows by less than ``threshold`` (with 0, as soon as it falls).
3. The output posteriors are step 2b once more with the last parameters and
   labels.

Differences from ANTs: Atropos colours the voxels with up to 14 ICM codes
by a greedy scan and visits the codes in a random order each sweep (its
random generator is seeded from the clock, so two runs of ANTs on the same
image differ, on 0-4 voxels per million of the real heads); here the 8 codes
are the parities of the three voxel indices (no two neighbours in a 3x3x3
neighbourhood share one) in a fixed order, so the result is deterministic.
Atropos computes in float32 where this computes in float64. On the seven
full-brain real heads (``benchmarks/README.md``) the two give the same label
to 99.987-99.9999 % of the brain voxels (per-class Dice >= 0.9997) and
tissue fractions within 1.1e-4 (within 5e-6 on the 1 mm heads).

Why hand-written: ANTs Atropos took 20-29 CPU s on the 1.6-2.3 million
voxel brains of the 1 mm real heads (11 CPU s on pycortex-S1 even with the
MRF off): about 5 s in its K-means set-up and the rest in per-voxel ITK
neighbourhood iterators (13 % of its ``perf`` samples in malloc, free and
memmove), mostly on one thread. This runs the same algorithm in 1.9-2.4 CPU
s on those heads. ANTs Atropos stays reachable
(``isyb.head.tissue.atropos_tissues(..., engine="ants")``), and the tests
compare the two on a phantom and on colin27.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from isyb.errors import InputError

#: Smallest likelihood and MRF prior Atropos lets a class have
#: (``CalculateLocalPosteriorProbability``'s ``probabilityEpsilon``).
EPSILON = 1e-10

#: Lloyd iterations ITK's K-means may take in Atropos' initialisation.
KMEANS_ITERATIONS = 200


def kmeans_1d(values: np.ndarray, means: np.ndarray | list[float],
              max_iter: int = KMEANS_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's K-means of 1-D values from ``means``: (label of each value, centroids).

    Exact, not binned: in 1-D each cluster is a run of the sorted values, cut
    at the midpoints between sorted centroids, so each iteration is a
    ``searchsorted`` and a difference of cumulative sums. Stops when no
    centroid moves or after ``max_iter`` iterations (ITK's
    ``KdTreeBasedKmeansEstimator`` as Atropos runs it). A centroid that loses
    all its values stays where it is. Labels are 0..k-1 by increasing
    centroid; a value exactly between two centroids goes to the lower one.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    ordered = np.sort(x)
    sums = np.concatenate([[0.0], np.cumsum(ordered)])
    centroids = np.sort(np.asarray(means, dtype=np.float64))
    for _ in range(max_iter):
        cuts = np.searchsorted(ordered, 0.5 * (centroids[:-1] + centroids[1:]), side="right")
        edges = np.concatenate([[0], cuts, [x.size]])
        counts = np.diff(edges)
        totals = sums[edges[1:]] - sums[edges[:-1]]
        moved = np.where(counts > 0, totals / np.maximum(counts, 1), centroids)
        moved = np.sort(moved)
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    bounds = 0.5 * (centroids[:-1] + centroids[1:])
    return np.searchsorted(bounds, x, side="left").astype(np.int64), centroids


def _neighbour_groups(spacing: np.ndarray, strides: tuple[int, ...]
                      ) -> list[tuple[float, list[int]]]:
    """The 26 neighbours of a voxel as (1 / distance in mm, [flat offsets]) groups."""
    groups: dict[float, list[int]] = {}
    for step in itertools.product((-1, 0, 1), repeat=3):
        if step == (0, 0, 0):
            continue
        distance = math.sqrt(sum((s * z) ** 2 for s, z in zip(step, spacing, strict=True)))
        offset = sum(s * n for s, n in zip(step, strides, strict=True))
        groups.setdefault(round(1.0 / distance, 12), []).append(offset)
    return sorted(groups.items())


class _Field:
    """The label field of the masked voxels, padded by one voxel, for neighbour sums.

    Each voxel holds its label as one byte of a uint32 (class k sets byte k;
    0 outside the mask), so the labels of a set of neighbours add up to one
    count per class in one integer addition (at most 26 < 256 per byte).
    """

    def __init__(self, mask: np.ndarray, spacing: np.ndarray, n_classes: int) -> None:
        padded = np.pad(mask, 1)
        self.codes = np.zeros(padded.size, dtype=np.uint32)
        self.index = np.flatnonzero(padded)
        strides = tuple(int(s) // padded.itemsize for s in padded.strides)
        self.groups = _neighbour_groups(spacing, strides)
        self.bits = (np.uint32(1) << (8 * np.arange(n_classes, dtype=np.uint32))).astype(np.uint32)
        self.n_classes = n_classes
        position = np.unravel_index(self.index, padded.shape)
        self.parity = (position[0] % 2) * 4 + (position[1] % 2) * 2 + position[2] % 2

    def set(self, which: np.ndarray | slice, labels: np.ndarray) -> None:
        """Give the masked voxels ``which`` (positions in :attr:`index`) ``labels``."""
        self.codes[self.index[which]] = self.bits[labels]

    def sums(self, which: np.ndarray | slice) -> np.ndarray:
        """``S_k``: sum of 1 / distance over each voxel's neighbours labelled k, (k, n)."""
        index = self.index[which]
        out = np.zeros((self.n_classes, index.size))
        for weight, offsets in self.groups:
            total = self.codes[index + offsets[0]]
            for offset in offsets[1:]:
                total += self.codes[index + offset]
            for k in range(self.n_classes):
                out[k] += weight * ((total >> np.uint32(8 * k)) & np.uint32(255))
        return out


def _gaussians(x: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Gaussian density of each value under each class, at least :data:`EPSILON`, (k, n)."""
    z = (x[None, :] - means[:, None]) ** 2 / variances[:, None]
    density = np.exp(-0.5 * z) / np.sqrt(2.0 * math.pi * variances)[:, None]
    return np.maximum(density, EPSILON)


def _posteriors(likelihood: np.ndarray, sums: np.ndarray, beta: float) -> np.ndarray:
    """Unnormalised posteriors ``L_k M_k`` from likelihoods and neighbour sums, (k, n)."""
    if beta <= 0:
        return likelihood
    energy = beta * sums
    energy -= energy.max(axis=0)
    prior = np.exp(energy)
    prior /= prior.sum(axis=0)
    return likelihood * np.maximum(prior, EPSILON)


def _weighted_fit(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each class's mean and variance weighted by ``weights`` (k, n), as ITK's
    ``WeightedCovarianceSampleFilter``."""
    total = weights.sum(axis=1)
    if np.any(total <= 0):
        raise InputError("a tissue class lost all its voxels: the image cannot be segmented "
                         "into three classes")
    means = weights @ x / total
    scatter = (weights * (x[None, :] - means[:, None]) ** 2).sum(axis=1)
    return means, scatter / (total - (weights * weights).sum(axis=1) / total)


def atropos_posteriors(image: np.ndarray, mask: np.ndarray,
                       spacing: np.ndarray | tuple[float, ...], init_means: np.ndarray,
                       *, beta: float = 0.01, iterations: int = 5,
                       threshold: float = 0.0) -> np.ndarray:
    """Atropos' posteriors (k, *image.shape), float32, 0 outside ``mask``.

    ``init_means`` are K-means' starting means (their number is the number of
    classes); classes are ordered by increasing mean. ``beta`` is the MRF
    smoothing factor, ``spacing`` the voxel size in mm (the MRF weighs each
    neighbour by 1 / its distance); ``iterations`` and ``threshold`` are
    Atropos' convergence ``[iterations,threshold]``. See the module docstring.
    """
    image = np.asarray(image)
    mask = np.asarray(mask, dtype=bool)
    n_classes = len(init_means)
    if mask.shape != image.shape or image.ndim != 3:
        raise InputError(f"the mask has shape {mask.shape}, the image {image.shape}")
    if int(mask.sum()) <= 10 * n_classes:
        raise InputError(f"the mask holds {int(mask.sum())} voxels: too few to segment")
    field = _Field(mask, np.asarray(spacing, dtype=float), n_classes)
    x = np.asarray(image, dtype=np.float64)[mask]
    labels, _ = kmeans_1d(x, init_means)
    field.set(slice(None), labels)
    weights = np.zeros((n_classes, x.size))
    weights[labels, np.arange(x.size)] = 1.0
    means, variances = _weighted_fit(x, weights)
    codes = [np.flatnonzero(field.parity == c) for c in range(8)]
    previous = -math.inf
    for _ in range(iterations):
        likelihood = _gaussians(x, means, variances)
        best = 0.0
        for which in codes:
            post = _posteriors(likelihood[:, which], field.sums(which), beta)
            field.set(which, np.argmax(post, axis=0))
            best += float((post.max(axis=0) / post.sum(axis=0)).sum())
        post = _posteriors(likelihood, field.sums(slice(None)), beta)
        post /= post.sum(axis=0)
        field.set(slice(None), np.argmax(post, axis=0))
        means, variances = _weighted_fit(x, post)
        current = best / x.size
        if current - previous < threshold:
            break
        previous = current
    post = _posteriors(_gaussians(x, means, variances), field.sums(slice(None)), beta)
    post /= post.sum(axis=0)
    out = np.zeros((n_classes, *image.shape), dtype=np.float32)
    out[:, mask] = post
    return out
