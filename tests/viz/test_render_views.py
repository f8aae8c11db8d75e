"""render_views: one ray cast per (yaw, pitch), the same pictures as one render per view."""

from __future__ import annotations

import numpy as np

from isyb.synthetic.phantom import make_phantom
from isyb.viz import render


def test_views_that_differ_by_their_light_share_one_cast(monkeypatch) -> None:
    phantom = make_phantom(voxel_size=4.0, seed=2)
    zooms = (4.0, 4.0, 4.0)
    views = [(0.0, 0.0, 30.0), (0.0, 0.0, 0.0), (15.0, 10.0, 30.0), (15.0, 10.0, 0.0)]
    casts = []
    cast = render._cast
    monkeypatch.setattr(render, "_cast", lambda *args: casts.append(args[1:3]) or cast(*args))
    images = render.render_views(phantom.image, zooms, views, pixel_mm=2.0)
    assert casts == [(0.0, 0.0), (15.0, 10.0)]
    for (yaw, pitch, light), image in zip(views, images, strict=True):
        depth = render.face_depth(phantom.image, zooms, yaw, pitch, pixel_mm=2.0)
        assert np.array_equal(image, render.shade_depth(depth, 2.0, light))
    assert not np.array_equal(images[0], images[1])  # the light does change the picture
