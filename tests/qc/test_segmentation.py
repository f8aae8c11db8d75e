"""N4 + Atropos tissue segmentation (isyb.head.tissue.atropos_tissues) against known labels."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.head import tissue
from isyb.head.register import dice
from isyb.synthetic.phantom import Label, make_phantom


@pytest.fixture(scope="module")
def biased_phantom():
    """A coarse (3 mm) phantom with a smooth multiplicative bias field of +-30 %."""
    return make_phantom(voxel_size=3.0, noise_sd=3.0, bias=0.3, seed=3)


@pytest.fixture(scope="module")
def segmentation(biased_phantom):
    brain = biased_phantom.mask(Label.GM, Label.WM, Label.CSF)
    return tissue.atropos_tissues(biased_phantom.image, brain, biased_phantom.voxel_size)


@pytest.mark.parametrize(("ours", "truth"), [(tissue.CSF, Label.CSF), (tissue.GM, Label.GM),
                                             (tissue.WM, Label.WM)])
def test_atropos_after_n4_recovers_each_tissue(biased_phantom, segmentation, ours, truth) -> None:
    assert dice(segmentation.labels == ours, biased_phantom.labels == truth) >= 0.85


def test_posteriors_are_probabilities_inside_the_brain_only(biased_phantom, segmentation) -> None:
    brain = biased_phantom.mask(Label.GM, Label.WM, Label.CSF)
    post = segmentation.posteriors
    assert post.shape == (3, *brain.shape)
    assert not post[:, ~brain].any()
    np.testing.assert_allclose(post[:, brain].sum(axis=0), 1.0, atol=1e-3)
    fractions = segmentation.fractions()
    assert sum(fractions.values()) == pytest.approx(1.0)
    # the fractions are the tissues' shares of the brain, as in the phantom
    true_wm = float((biased_phantom.labels == Label.WM).sum() / brain.sum())
    assert fractions["wm"] == pytest.approx(true_wm, abs=0.05)


def test_n4_flattens_the_bias_field(biased_phantom, segmentation) -> None:
    wm = biased_phantom.labels == Label.WM
    before = biased_phantom.image[wm]
    after = segmentation.corrected[wm]
    # the relative spread of WM (5.3 % with the field) falls towards the noise (3 / 110 = 2.7 %)
    assert after.std() / after.mean() < 0.7 * before.std() / before.mean()


def test_segment_tissues_keeps_its_signature_and_offers_the_mixture(biased_phantom) -> None:
    brain = biased_phantom.mask(Label.GM, Label.WM, Label.CSF)
    labels = tissue.segment_tissues(biased_phantom.image, brain, biased_phantom.voxel_size,
                                    method="mixture")
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1, 2, 3}
    with pytest.raises(tissue.InputError, match="method"):
        tissue.segment_tissues(biased_phantom.image, brain, biased_phantom.voxel_size,
                               method="fast")  # type: ignore[arg-type]
