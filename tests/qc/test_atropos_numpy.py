"""isyb's numpy Atropos (isyb.head.atropos) against ANTs Atropos and independent pieces."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from isyb.head import atropos, tissue
from isyb.head.morphology import bounding_box
from isyb.io import load_volume
from isyb.qc.masks import intensity_clip
from isyb.synthetic.phantom import Label, make_phantom


def _lloyd(values: np.ndarray, means: np.ndarray, max_iter: int = 200) -> np.ndarray:
    """Textbook Lloyd iterations on every value (no sorting, no cumulative sums)."""
    centroids = np.asarray(means, dtype=np.float64)
    for _ in range(max_iter):
        labels = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
        moved = np.array([values[labels == k].mean() if np.any(labels == k) else centroids[k]
                          for k in range(centroids.size)])
        if np.array_equal(moved, centroids):
            break
        centroids = moved
    return np.sort(centroids)


def test_kmeans_1d_is_lloyds_algorithm() -> None:
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.normal(m, s, n) for m, s, n in
                             ((40.0, 9.0, 3000), (90.0, 7.0, 5000), (120.0, 5.0, 4000))])
    labels, centroids = atropos.kmeans_1d(values, [30.0, 80.0, 130.0])
    np.testing.assert_allclose(centroids, _lloyd(values, np.array([30.0, 80.0, 130.0])),
                               rtol=1e-12)
    nearest = np.argmin(np.abs(values[:, None] - centroids[None, :]), axis=1)
    assert np.array_equal(labels, nearest)


def test_neighbour_sums_are_a_convolution_with_inverse_distances() -> None:
    """S_k of every masked voxel = the 26-neighbour 1/distance kernel applied to label == k,
    with anisotropic voxels and a mask that touches the edge of the array."""
    rng = np.random.default_rng(1)
    spacing = np.array([1.0, 1.5, 3.0])
    mask = rng.random((9, 8, 7)) < 0.7
    labels = rng.integers(0, 3, size=mask.shape)
    kernel = np.zeros((3, 3, 3))
    for step in itertools.product((-1, 0, 1), repeat=3):
        if step != (0, 0, 0):
            kernel[tuple(s + 1 for s in step)] = 1.0 / math.sqrt(float(((np.array(step) * spacing)
                                                                        ** 2).sum()))
    field = atropos._Field(mask, spacing, 3)
    field.set(slice(None), labels[mask])
    sums = field.sums(slice(None))
    for k in range(3):
        expected = ndi.correlate(((labels == k) & mask).astype(float), kernel, mode="constant")
        np.testing.assert_allclose(sums[k], expected[mask], rtol=1e-10)


def _agreement(ours: np.ndarray, theirs: np.ndarray, inside: np.ndarray) -> tuple[float, ...]:
    """(share of voxels with the same label, largest tissue-fraction difference, smallest Dice)."""
    a, b = np.argmax(ours, axis=0)[inside], np.argmax(theirs, axis=0)[inside]
    fractions = [p[:, inside].sum(axis=1, dtype=np.float64) / p[:, inside].sum(dtype=np.float64)
                 for p in (ours, theirs)]
    dice = [2.0 * float(((a == k) & (b == k)).sum()) / float((a == k).sum() + (b == k).sum())
            for k in range(3)]
    return float((a == b).mean()), float(np.abs(fractions[0] - fractions[1]).max()), min(dice)


def _both_engines(image: np.ndarray, inside: np.ndarray, zooms) -> tuple[np.ndarray, np.ndarray]:
    mixture = tissue.fit_mixture(image[inside])
    means = [float(f"{m:.6g}") for m in mixture.means]
    zooms = np.asarray(np.broadcast_to(zooms, 3), dtype=float)
    return tuple(tissue._segment(np.ascontiguousarray(image, dtype=np.float32), inside, zooms,
                                 means, mrf=0.01, iterations=5, engine=engine)
                 for engine in ("numpy", "ants"))


def test_numpy_atropos_agrees_with_ants_on_a_phantom() -> None:
    phantom = make_phantom(voxel_size=3.0, noise_sd=6.0, seed=3)
    brain = phantom.mask(Label.GM, Label.WM, Label.CSF)
    ours, theirs = _both_engines(phantom.image, brain, phantom.voxel_size)
    same, fraction, dice = _agreement(ours, theirs, brain)
    assert same >= 0.999 and fraction <= 0.002 and dice >= 0.998, (same, fraction, dice)
    assert float(np.abs(ours - theirs)[:, brain].mean()) < 1e-3


def test_numpy_atropos_agrees_with_ants_on_colin27(data_root: Path) -> None:
    """Colin27 in its reference brain mask, N4-corrected once, segmented by both engines
    (benchmarks/README.md has the other real heads)."""
    head = data_root / "heads" / "colin27_T1w.nii.gz"
    brain_file = data_root / "heads" / "colin27_brain.nii.gz"
    if not head.is_file() or not brain_file.is_file():
        pytest.skip(f"colin27 not found under {data_root / 'heads'}")
    volume = load_volume(head)
    brain = load_volume(brain_file).data > 0
    box = bounding_box(brain, pad=8)
    corrected = tissue.atropos_tissues(intensity_clip(volume.data), brain, volume.zooms,
                                       iterations=1).corrected
    ours, theirs = _both_engines(corrected[box], brain[box], volume.zooms)
    same, fraction, dice = _agreement(ours, theirs, brain[box])
    assert same >= 0.999 and fraction <= 0.001 and dice >= 0.999, (same, fraction, dice)
