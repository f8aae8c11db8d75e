"""Seams (issue 15 item 1): the depth-step measure, and no step on the defaced phantom."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.deface.engine import DefaceOptions, align, deface_volume
from isyb.io import volume_from_image
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.viz.seams import border_step_mm, front_depth


def _slab(front_mm: np.ndarray) -> np.ndarray:
    """A 1 mm volume (x, y, z) = (40, 60, 40) filled from y = 0 up to ``front_mm[x, z]``."""
    y = np.arange(60)[None, :, None]
    return np.where(y <= front_mm[:, None, :], 100.0, 0.0).astype(np.float32)


def test_front_depth_finds_the_surface_to_a_fraction_of_a_voxel() -> None:
    x = np.arange(40, dtype=float)[:, None]
    front = np.broadcast_to(30.0 + 0.25 * x, (40, 40))
    depth, _ = front_depth(_slab(np.floor(front)), np.ones(3), threshold=50.0)
    assert np.allclose(depth, np.floor(front) + 0.5, atol=0.3)


@pytest.mark.parametrize("step", [0.0, 2.0, 4.0])
def test_border_step_measures_a_made_step_and_ignores_a_slope(step: float) -> None:
    x = np.arange(40, dtype=float)[:, None]
    front = 30.0 + 0.5 * x + np.where(x >= 20, step, 0.0)
    front = np.broadcast_to(front, (40, 40))
    data = _slab(front)
    region = np.zeros(data.shape, dtype=bool)
    region[20:] = True
    measured = border_step_mm(data, np.ones(3), region, threshold=50.0)
    assert measured == pytest.approx(step, abs=1.0)
    # a step the original already had is not the defacing's seam
    assert border_step_mm(data, np.ones(3), region, original=data, threshold=50.0) < 1.0
    # only the pairs with a column on ``edge`` count with it
    edge = np.zeros(data.shape, dtype=bool)
    edge[:20] = True
    assert border_step_mm(data, np.ones(3), region, threshold=50.0,
                          edge=edge) == pytest.approx(measured)
    assert border_step_mm(data, np.ones(3), region, threshold=50.0, edge=~edge & ~region) == 0.0


@pytest.fixture(scope="module")
def phantom_case(default_template):
    phantom = make_phantom(voxel_size=1.5, seed=3)
    volume = volume_from_image(to_nifti(phantom, "RAS", dtype=np.float32))
    return volume, align(volume, default_template, brain=phantom.brain_mask)


@pytest.mark.parametrize("method", ["blur", "noise"])
def test_no_step_over_a_millimetre_across_the_border_on_the_phantom(phantom_case,
                                                                   default_template,
                                                                   method: str) -> None:
    volume, alignment = phantom_case
    result = deface_volume(volume, default_template, DefaceOptions(method=method),
                           alignment=alignment)
    assert border_step_mm(result.data, volume.zooms, result.region, volume.data) <= 1.0
