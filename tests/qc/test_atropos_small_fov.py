"""N4 + Atropos on a small block of a head (issue 14 item 3, h16's 14.2 ml of GM for 3.85)."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.head import tissue
from isyb.head.register import dice
from isyb.synthetic.phantom import Label, make_phantom


@pytest.fixture(scope="module")
def vertex_block():
    """A 36 x 36 x 28 mm block at the vertex of the phantom (no bias field): CSF, a 3 mm
    cortex and white matter."""
    return make_phantom(voxel_size=1.0, fov_mm=(36.0, 36.0, 28.0),
                        fov_center_mm=(0.0, 8.0, 74.0), seed=1)


def test_n4_fits_no_anatomy_on_a_small_block(vertex_block) -> None:
    brain = vertex_block.mask(Label.CSF, Label.GM, Label.WM)
    found = tissue.atropos_tissues(vertex_block.image, brain, (1.0, 1.0, 1.0))
    gm_ml = float((found.labels == tissue.GM).sum()) / 1000.0
    truth_ml = float((vertex_block.labels == Label.GM).sum()) / 1000.0  # 3.85 ml
    assert gm_ml == pytest.approx(truth_ml, rel=0.05)
    for ours, truth in ((tissue.CSF, Label.CSF), (tissue.GM, Label.GM), (tissue.WM, Label.WM)):
        assert dice(found.labels == ours, vertex_block.labels == truth) >= 0.85
    # the field N4 found is flat where there is none (a global scale aside)
    ratio = vertex_block.image[brain] / found.corrected[brain]
    assert np.percentile(ratio, 99) / np.percentile(ratio, 1) < 1.15


def test_the_domain_is_padded_only_where_it_is_short() -> None:
    rng = np.random.default_rng(0)
    image = (100.0 + rng.normal(0.0, 1.0, (20, 52, 12))).astype(np.float32)  # 60x156x72 mm
    weight = np.ones(image.shape, dtype=np.float32)
    field = tissue._n4_field(image, weight, np.array([3.0, 3.0, 6.0]))
    assert field.shape == image.shape
    assert np.percentile(field, 99) / np.percentile(field, 1) < 1.05
