"""The face-detector ensemble (isyb.evaluate.ensemble) and its MTCNN (isyb.evaluate.mtcnn).

MTCNN is cross-checked against facenet-pytorch's own cascade (``detect_face``)
on the same render with the same weights. That code imports torchvision, whose
PyPI wheels do not load with CPU torch, so the test gives it a stand-in
``torchvision`` whose ``batched_nms`` is facenet-pytorch's own numpy NMS
(``batched_nms_numpy``, same file): everything else (pyramid, networks, box
regression, stages) is facenet-pytorch's.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from isyb.evaluate import ensemble, mtcnn
from isyb.io import load_volume
from isyb.synthetic.phantom import make_phantom, to_nifti
from isyb.viz.render import AMBIENT, LIGHT_ELEVATION_DEG, render_views, shade_depth

needs_weights = pytest.mark.skipif(not mtcnn.available(),
                                   reason=f"facenet-pytorch weights not installed: {mtcnn.INSTALL}")


def test_default_views_cover_yaw_pitch_and_two_lights() -> None:
    views = ensemble.default_views()
    assert len(views) >= 9
    assert len({v.name for v in views}) == len(views)
    assert {v.yaw for v in views} == {-15.0, 0.0, 15.0}
    assert {v.pitch for v in views} == {-10.0, 0.0, 10.0}
    assert {v.light for v in views} == {0.0, 30.0}


def test_the_light_elevation_shades_a_plane_by_lambert() -> None:
    plane = np.full((8, 8), 50.0)
    assert np.all(shade_depth(plane, light_elevation_deg=0.0) == 255)
    expected = round((AMBIENT + (1 - AMBIENT) * np.cos(np.deg2rad(LIGHT_ELEVATION_DEG))) * 255)
    assert np.all(shade_depth(plane) == expected)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [2, 2, 5, 5]], float)
    scores = np.array([0.8, 0.9, 0.5, 0.7])
    # 0 and 1 overlap with IoU 81/119 = 0.68; box 3 lies inside both (IoU 16/100)
    assert mtcnn.nms(boxes, scores, 0.5).tolist() == [1, 3, 2]
    assert mtcnn.nms(boxes, scores, 0.7).tolist() == [1, 0, 3, 2]
    # over the smaller box, box 3 is entirely covered by box 1
    assert mtcnn.nms(boxes, scores, 0.7, by_min=True).tolist() == [1, 2]


def test_without_mtcnn_the_ensemble_says_so(monkeypatch, caplog) -> None:
    monkeypatch.setattr(mtcnn, "available", lambda: False)
    # an in-process CLI run earlier in this worker may have stopped isyb's propagation
    monkeypatch.setattr(logging.getLogger("isyb"), "propagate", True)
    views = ensemble.default_views()[:2]
    blank = [np.zeros((120, 100), np.uint8)] * 2
    with caplog.at_level(logging.WARNING, logger="isyb.evaluate.ensemble"):
        result = ensemble.detect_views(blank, views)
    assert result.detectors == ("haar",)
    assert "mtcnn" in result.missing and "MTCNN" in caplog.text
    record = json.loads(json.dumps(result.to_json()))
    assert record["detectors_missing"]["mtcnn"] and record["detected"] is False
    assert record["views"] == [v.name for v in views]


@needs_weights
def test_mtcnn_finds_the_phantoms_face_and_the_record_names_every_view() -> None:
    phantom = make_phantom(voxel_size=3.0)
    volume = load_volume(to_nifti(phantom, "RAS"))
    views = (ensemble.View(0.0, 0.0, 30.0),)
    result = ensemble.ensemble_detect(volume.data, volume.zooms, views=views)
    record = json.loads(json.dumps(result.to_json()))
    assert record["detectors"] == ["haar", "mtcnn"] and record["detectors_missing"] == {}
    assert list(record["hits"]["mtcnn"]) == ["yaw+0_pitch+0_light30"]
    # the phantom has a nose, eyes and lips: the CNN sees a face (p 0.999)
    (box,) = record["hits"]["mtcnn"]["yaw+0_pitch+0_light30"]
    assert box[4] > 0.9 and record["detected"]


@needs_weights
def test_mtcnn_finds_nothing_on_a_blank_or_noise_image() -> None:
    rng = np.random.default_rng(0)
    assert mtcnn.detect(np.full((200, 200), 128, np.uint8), 80) == []
    assert mtcnn.detect(rng.integers(0, 255, (200, 200), dtype=np.uint8), 80) == []


def _facenet_detect_face():
    """facenet-pytorch's ``detect_face``, imported with a stand-in torchvision (see top)."""

    folder = mtcnn.weights_dir()
    stub = {name: types.ModuleType(name) for name in
            ("torchvision", "torchvision.ops", "torchvision.ops.boxes",
             "torchvision.transforms", "torchvision.transforms.functional")}
    stub["torchvision.transforms"].functional = stub["torchvision.transforms.functional"]
    saved = {name: sys.modules.get(name) for name in stub}
    sys.modules.update(stub)
    try:
        spec_path = folder.parent / "models" / "utils" / "detect_face.py"
        import importlib.util

        spec = importlib.util.spec_from_file_location("_facenet_detect_face", spec_path)
        module = importlib.util.module_from_spec(spec)
        stub["torchvision.ops.boxes"].batched_nms = (
            lambda b, s, i, t: module.batched_nms_numpy(b, s, i, t, "Union"))
        spec.loader.exec_module(module)
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module.detect_face


@needs_weights
@pytest.mark.realdata
def test_mtcnn_matches_facenet_pytorch_on_a_real_head(data_root: Path) -> None:
    import torch

    volume = load_volume(data_root / "heads" / "myconnectome_T1w_1p6mm.nii.gz")
    image = render_views(volume.data, volume.zooms, [(0.0, 0.0, 30.0)])[0]
    ours = mtcnn.detect(image, 80)
    assert len(ours) == 1 and ours[0][4] > 0.99  # the face of a full-face head
    assert 130 <= ours[0][2] <= 200  # a real face's box, mm (1 mm pixels)

    pnet, rnet, onet = mtcnn._networks()
    detect_face = _facenet_detect_face()
    rgb = np.repeat(image[:, :, None], 3, axis=2)
    with torch.inference_mode():
        boxes, _ = detect_face(rgb, 80, pnet, rnet, onet, list(mtcnn.THRESHOLDS),
                               mtcnn.PYRAMID_FACTOR, "cpu")
    theirs = np.asarray(boxes[0])
    assert theirs.shape[0] == 1
    x1, y1, x2, y2, p = theirs[0]
    assert np.allclose(ours[0][:4], (x1, y1, x2 - x1, y2 - y1), atol=1.0)
    assert ours[0][4] == pytest.approx(p, abs=1e-4)


def test_views_with_a_face_count_each_view_once() -> None:
    views = ensemble.default_views()[:3]
    hits = {"haar": {views[0].name: [[1, 2, 90, 90]], views[1].name: [], views[2].name: []},
            "mtcnn": {views[0].name: [[1, 2, 90, 90, 0.99]], views[1].name: [[3, 4, 95, 95, 0.8]],
                      views[2].name: []}}
    result = ensemble.EnsembleResult(views=views, hits=hits)
    assert result.views_with_face("haar") == 1 and result.views_with_face("mtcnn") == 2
    assert result.views_with_any_face() == 2 and result.to_json()["views_with_any_face"] == 2
