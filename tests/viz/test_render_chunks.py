"""The ray caster's batch size (``isyb.viz.render._CHUNK``) changes only how many samples
are read in vain, never a depth: the same maps, NaNs included, for 1, 4 and 16."""

from __future__ import annotations

import numpy as np
import pytest

from isyb.synthetic.phantom import make_phantom
from isyb.viz import render


@pytest.mark.parametrize(("yaw", "pitch"), [(0.0, 0.0), (-15.0, 10.0), (30.0, -10.0)])
def test_depth_maps_do_not_depend_on_the_batch_size(monkeypatch, yaw, pitch) -> None:
    phantom = make_phantom(voxel_size=2.0, seed=1)
    noisy = phantom.image + np.random.default_rng(0).normal(0, 20, phantom.image.shape)
    scene = render._scene(noisy, (2.0, 2.0, 2.0), None)
    depths = {}
    for chunk in (1, 4, 16):
        monkeypatch.setattr(render, "_CHUNK", chunk)
        depths[chunk] = render._cast(scene, yaw, pitch, 2.0)
    assert np.isfinite(depths[1]).sum() > 1000
    for chunk in (4, 16):
        np.testing.assert_array_equal(depths[chunk], depths[1])
