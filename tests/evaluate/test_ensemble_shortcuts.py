"""The study's detector shortcuts give what the long way gives (issue 13 item 6).

- The stock detector's verdict on a defaced head is read from the ensemble's
  renders (:meth:`isyb.evaluate.ensemble.EnsembleResult.stock_detected`)
  instead of rendering the head again: the boxes must be those of
  :func:`isyb.viz.faces.face_detected`, view for view.
- MTCNN runs on one torch thread: its boxes and probabilities must be those of
  a two-thread run, bit for bit, and the caller's thread count is restored.
"""

from __future__ import annotations

import contextlib
import inspect

import numpy as np
import pytest

from isyb.evaluate import ensemble, mtcnn
from isyb.io import load_volume
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.viz.faces import face_detected
from isyb.viz.render import LIGHT_ELEVATION_DEG, render_views

needs_weights = pytest.mark.skipif(not mtcnn.available(),
                                   reason=f"facenet-pytorch weights not installed: {mtcnn.INSTALL}")


def _heads() -> dict[str, tuple[np.ndarray, tuple[float, ...]]]:
    """A phantom with its face, and the same head with the face's front cut away.

    The cascade finds the first in all three stock views, the second in one of
    them (yaw -15): the comparison covers views with and without a face.
    """
    phantom = make_phantom(voxel_size=2.0)
    volume = load_volume(to_nifti(phantom, "RAS"))
    cut = volume.data.copy()
    cut[:, int(cut.shape[1] * 0.8):, : int(cut.shape[2] * 0.6)] = 0  # front, below the brows
    return {"face": (volume.data, volume.zooms), "cut": (cut, volume.zooms)}


def test_the_stock_views_are_the_stock_detectors_own() -> None:
    assert inspect.signature(face_detected).parameters["yaws"].default == ensemble.STOCK_YAWS
    assert ensemble.PORTRAIT_LIGHT_DEG == LIGHT_ELEVATION_DEG  # face_detected's shading


@pytest.mark.parametrize("head", ["face", "cut"])
def test_stock_verdict_from_the_ensemble_equals_face_detected(head: str,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(mtcnn, "available", lambda: False)  # Haar is what is compared
    data, zooms = _heads()[head]
    result = ensemble.ensemble_detect(data, zooms)
    stock = face_detected(data, zooms)
    for yaw in ensemble.STOCK_YAWS:
        name = ensemble.View(yaw, 0.0, ensemble.PORTRAIT_LIGHT_DEG).name
        assert result.hits["haar"][name] == [list(map(float, box)) for box in stock["yaws"][yaw]]
    assert result.stock_detected() == stock["detected"]
    if head == "face":
        assert stock["detected"]  # a face to agree on, not only an empty render
    else:
        assert not all(stock["yaws"].values())  # and views without one


def test_stock_verdict_needs_the_stock_views() -> None:
    views = (ensemble.View(0.0, 10.0, 30.0),)
    result = ensemble.detect_views([np.zeros((120, 100), np.uint8)], views)
    with pytest.raises(ValueError, match="stock detector"):
        result.stock_detected()


@needs_weights
def test_mtcnn_on_one_thread_gives_the_two_thread_boxes_bit_for_bit(monkeypatch) -> None:
    import torch

    data, zooms = _heads()["face"]
    images = render_views(data, zooms, [(yaw, 0.0, 30.0) for yaw in (-15.0, 0.0, 15.0)])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        fast = [mtcnn.detect(image, 80) for image in images]
        assert torch.get_num_threads() == 2  # restored after detect
        monkeypatch.setattr(mtcnn, "one_thread", contextlib.nullcontext)  # keeps 2
        slow = [mtcnn.detect(image, 80) for image in images]
    finally:
        torch.set_num_threads(threads)
    assert any(fast) and fast == slow

