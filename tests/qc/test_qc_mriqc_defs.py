"""MRIQC-named metrics have MRIQC 24.0.2's definitions and units (isyb.qc.mriqc, anat_metrics).

Each expected value is re-derived from MRIQC 24.0.2's source
(``mriqc/qc/anatomical.py`` and ``mriqc/interfaces/anatomical.py``
``StructuralQC``/``Harmonize``), with statsmodels' ``DescrStatsW`` and ``mad``
and scipy's ``kurtosis`` as MRIQC calls them (``tests/mriqc_reference.py``, which the
real-head QC tests also apply to every head of the data folder). The cross-check against
an installed MRIQC on the real heads is in benchmarks/README.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.weightstats import DescrStatsW

from isyb.head.morphology import erode18
from isyb.qc import anat, mriqc
from isyb.qc.masks import AnatMasks
from mriqc_reference import mriqc_summary_stats, structuralqc_expected


@pytest.fixture(scope="module")
def toy():
    """A small image with smooth tissue posteriors, an air mask and a head mask."""
    rng = np.random.default_rng(14)
    shape = (24, 26, 22)
    z = np.linspace(-2, 2, shape[2])[None, None, :]
    csf = np.clip(-z, 0, 1) * np.ones(shape)
    wm = np.clip(z, 0, 1) * np.ones(shape)
    gm = 1.0 - csf - wm
    brain = np.zeros(shape, dtype=bool)
    brain[4:20, 4:22, 3:19] = True
    post = np.stack([csf, gm, wm]) * brain
    image = (300 * post[0] + 650 * post[1] + 1000 * post[2]
             + rng.normal(0, 40, shape)) * brain
    air = np.zeros(shape, dtype=bool)
    air[:, :, 20:] = True
    image[~brain] = np.abs(rng.normal(0, 15, int((~brain).sum())))
    head = brain.copy()
    empty = np.zeros(shape, dtype=bool)
    empty[:2] = True
    image[empty] = 0.0
    return {"image": np.maximum(image, 0), "post": post.astype(np.float32), "air": air,
            "head": head, "empty": empty, "brain": brain}


def test_summary_stats_match_mriqc_24(toy) -> None:
    pvms = {"csf": toy["post"][0], "gm": toy["post"][1], "wm": toy["post"][2],
            "bg": toy["air"].astype(np.uint8)}
    ours = mriqc.summary_stats(toy["image"], pvms)
    theirs = mriqc_summary_stats(toy["image"], pvms)
    for label in pvms:
        for key, value in theirs[label].items():
            assert ours[label][key] == pytest.approx(value, rel=1e-9, abs=1e-9), (label, key)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_summary_stats_of_a_small_map_see_the_whole_grid(seed: int) -> None:
    """A binary map in one corner of an integer image: the quantiles hit the cumulative
    weight exactly, and the next value (averaged in) may lie outside the map's box."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (12, 11, 10)).astype(float)
    image[:4, :4, :4] = rng.integers(10, 16, (4, 4, 4))
    image[6, 6, 6] = 16.0  # a value between the map's and the rest's, outside the map
    wm = np.zeros(image.shape, dtype=np.float32)
    wm[:4, :4, :4] = rng.integers(0, 2, (4, 4, 4))
    ours = mriqc.summary_stats(image, {"wm": wm})["wm"]
    theirs = mriqc_summary_stats(image, {"wm": wm})["wm"]
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-9, abs=1e-9), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_quantiles_equal_descrstatsw_with_ties_and_exact_hits(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 12, 200).astype(float)  # many ties
    weights = rng.integers(0, 3, 200).astype(float)  # zero weights and exact hits
    probs = (0.05, 0.25, 0.5, 0.75, 0.95)
    expected = DescrStatsW(values, weights=weights).quantile(np.array(probs), return_pandas=False)
    np.testing.assert_allclose(mriqc.weighted_quantiles(values, weights, probs), expected)


def test_snr_dietrich_takes_the_mad_then_the_sd_then_minus_one() -> None:
    # mriqc/qc/anatomical.py snr_dietrich: MAD if > 1, else SD if > 1e-3, else -1
    assert mriqc.snr_dietrich(1000.0, 20.0, 5.0) == pytest.approx(0.6551364 * 1000 / 20)
    assert mriqc.snr_dietrich(1000.0, 0.5, 5.0) == pytest.approx(0.6551364 * 1000 / 5)
    assert mriqc.snr_dietrich(1000.0, 0.0, 0.0) == -1.0


def test_snr_cnr_cjv_wm2max_are_mriqcs_formulas() -> None:
    assert mriqc.snr(600.0, 50.0, 101.0) == pytest.approx(600 / (50 * math.sqrt(101 / 100)))
    assert mriqc.cnr(1000.0, 650.0, 10.0, 40.0, 50.0) == pytest.approx(
        350 / math.sqrt(100 + 1600 + 2500))
    assert mriqc.cjv(1000.0, 650.0, 40.0, 50.0) == pytest.approx(90 / 350)
    image = np.arange(10_000, dtype=float).reshape(10, 10, 100)
    assert mriqc.wm2max(image, 5000.0) == pytest.approx(5000 / np.percentile(image, 99.95))


def test_fber_is_a_ratio_of_median_energies_or_minus_one(toy) -> None:
    image, head, empty = toy["image"], toy["head"], toy["empty"]
    outside = ~head & ~empty
    expected = np.median(image[head] ** 2) / np.median(image[outside] ** 2)
    assert mriqc.fber(image, head, empty) == pytest.approx(round(expected, 4), rel=1e-12)
    zeroed = np.where(head, image, 0.0)
    assert mriqc.fber(zeroed, head, empty) == -1.0


def test_efc_is_mriqcs_formula_over_the_voxels_outside_the_frame(toy) -> None:
    image, frame = toy["image"], toy["empty"]
    x = image[~frame]
    n = x.size
    b = np.sqrt((x ** 2).sum())
    e_max = n * (1 / np.sqrt(n)) * np.log(1 / np.sqrt(n))
    expected = round(float((1 / e_max) * np.sum((x / b) * np.log((x + 1e-16) / b))), 4)
    assert mriqc.efc(image, frame) == expected
    # the same as isyb's own EFC to the rounding
    assert anat.efc(image, ~frame) == pytest.approx(expected, abs=6e-5)


def test_harmonize_puts_the_eroded_white_matter_median_at_1000(toy) -> None:
    out = mriqc.harmonize(toy["image"], toy["post"][2])
    wm = erode18(toy["post"][2] >= 0.9)
    assert np.median(out[wm]) == pytest.approx(1000.0, rel=1e-6)
    assert np.array_equal(out, out.astype(np.float32).astype(np.float64))


def test_fwhm_is_reported_in_voxels_and_in_mm() -> None:
    cols = mriqc.fwhm_columns((3.0, 4.0, 9.0), (1.5, 2.0, 3.0))
    assert cols["fwhm_x"] == 2.0 and cols["fwhm_y"] == 2.0 and cols["fwhm_z"] == 3.0
    assert cols["fwhm_avg"] == pytest.approx(7.0 / 3.0)  # MRIQC: mean of the voxel values
    assert cols["fwhm_avg_mm"] == pytest.approx(16.0 / 3.0)
    assert cols["fwhm_z_mm"] == 9.0


def _masks(toy, noise_source: str = "air") -> AnatMasks:
    labels = (np.argmax(toy["post"], axis=0) + 1).astype(np.uint8) * toy["brain"]
    air = toy["air"] if noise_source == "air" else np.zeros_like(toy["air"])
    return AnatMasks(brain=toy["brain"], head=toy["head"], air=air, empty=toy["empty"],
                     labels=labels, gm=labels == 2, wm=labels == 3, posteriors=toy["post"],
                     corrected=toy["image"].astype(np.float32),
                     noise_source=noise_source)  # type: ignore[arg-type]


def test_mriqc_metrics_follow_structuralqc(toy) -> None:
    """The chain of mriqc/interfaces/anatomical.py StructuralQC, re-derived
    (tests/mriqc_reference.py; the same check runs on every real head in tests/qc)."""
    masks = _masks(toy)
    found = mriqc.mriqc_metrics(masks)
    expected = structuralqc_expected(masks)
    assert set(found) == set(expected)
    for key, value in expected.items():
        assert found[key] == pytest.approx(value, rel=1e-9), key
    assert found["icvs_csf"] + found["icvs_gm"] + found["icvs_wm"] == pytest.approx(1.0)


def test_without_air_the_background_metrics_are_left_out(toy) -> None:
    found = mriqc.mriqc_metrics(_masks(toy, "brain"))
    assert not [k for k in found if k.startswith(("summary_bg_", "snrd_")) or k == "cnr"]
    assert {"cjv", "efc", "fber", "wm2max", "icvs_wm", "snr_gm"} <= set(found)
