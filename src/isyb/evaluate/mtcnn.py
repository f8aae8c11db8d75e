"""MTCNN face detector (a CNN) on grey renders, with the weights of ``facenet-pytorch``.

MTCNN is a cascade of three small convolutional networks (P-Net on a 12x12
sliding window over an image pyramid, R-Net on 24x24 crops, O-Net on 48x48
crops), each rejecting windows and regressing their boxes: K. Zhang, Z. Zhang,
Z. Li and Y. Qiao, "Joint face detection and alignment using multitask cascaded
convolutional networks", IEEE Signal Processing Letters 23(10):1499, 2016.

The trained weights ship inside the ``facenet-pytorch`` wheel
(``facenet_pytorch/data/{pnet,rnet,onet}.pt``, state dicts; install it with
:data:`INSTALL`, without its dependencies: its pins would replace torch). The
package itself is **not imported**: its detection code
imports ``torchvision``, whose PyPI wheels are built against CUDA torch and do
not load with the CPU torch isyb pins. So the three networks (same layer
names, so the state dicts load as they are) and the cascade (pyramid, box
regression, non-maximum suppression) are written here, following the paper and
the parameters of facenet-pytorch 2.6 (thresholds 0.6/0.7/0.7, pyramid factor
0.709, inputs scaled to ``(x - 127.5) / 128``, area resampling).

The networks are small and the renders about 250 pixels square, so the
cascade runs on one torch thread (:func:`detect`): with two, on a loaded
2-core machine, the threads' fork/join cost about 10 times the CPU of the
convolutions, and the boxes and probabilities are the same bit for bit. The
grey image's three equal channels are resampled once and then repeated
(the same numbers: area resampling works channel by channel).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

#: Score thresholds of the three stages (P-Net, R-Net, O-Net), as in facenet-pytorch.
THRESHOLDS = (0.6, 0.7, 0.7)
#: Scale step of the image pyramid.
PYRAMID_FACTOR = 0.709
#: Intersection-over-union above which the weaker of two boxes is dropped, per stage.
NMS_IOU = (0.5, 0.7, 0.7)

#: How to install the weights: without dependencies, which pin torch < 2.3 and torchvision.
INSTALL = "pip install --no-deps 'facenet-pytorch>=2.6,<2.7'"

Detection = tuple[int, int, int, int, float]


def weights_dir() -> Path | None:
    """The folder of facenet-pytorch's MTCNN weights, or None when it is not installed.

    Found from the package's import spec, without importing it (see the module
    docstring).
    """
    spec = importlib.util.find_spec("facenet_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    names = ("pnet.pt", "rnet.pt", "onet.pt")
    return folder if all((folder / n).is_file() for n in names) else None


def available() -> bool:
    """Whether the MTCNN weights are installed (:data:`INSTALL`)."""
    return weights_dir() is not None


@lru_cache(maxsize=1)
def _networks():
    from isyb.executor import load_torch

    torch = load_torch()
    from torch import nn

    def conv(name: str, c_in: int, c_out: int, k: int) -> list[tuple[str, nn.Module]]:
        return [(f"conv{name}", nn.Conv2d(c_in, c_out, k)), (f"prelu{name}", nn.PReLU(c_out))]

    class PNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for n, m in [*conv("1", 3, 10, 3), ("pool1", nn.MaxPool2d(2, 2, ceil_mode=True)),
                         *conv("2", 10, 16, 3), *conv("3", 16, 32, 3),
                         ("conv4_1", nn.Conv2d(32, 2, 1)), ("conv4_2", nn.Conv2d(32, 4, 1))]:
                self.add_module(n, m)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for n in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "conv3", "prelu3"):
                x = getattr(self, n)(x)
            return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)

    class RNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for n, m in [*conv("1", 3, 28, 3), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                         *conv("2", 28, 48, 3), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                         *conv("3", 48, 64, 2), ("dense4", nn.Linear(576, 128)),
                         ("prelu4", nn.PReLU(128)), ("dense5_1", nn.Linear(128, 2)),
                         ("dense5_2", nn.Linear(128, 4))]:
                self.add_module(n, m)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for n in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2", "conv3", "prelu3"):
                x = getattr(self, n)(x)
            # the Caffe original flattens (w, h, c); the weights expect that order
            x = self.prelu4(self.dense4(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
            return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)

    class ONet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for n, m in [*conv("1", 3, 32, 3), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
                         *conv("2", 32, 64, 3), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
                         *conv("3", 64, 64, 3), ("pool3", nn.MaxPool2d(2, 2, ceil_mode=True)),
                         *conv("4", 64, 128, 2), ("dense5", nn.Linear(1152, 256)),
                         ("prelu5", nn.PReLU(256)), ("dense6_1", nn.Linear(256, 2)),
                         ("dense6_2", nn.Linear(256, 4)), ("dense6_3", nn.Linear(256, 10))]:
                self.add_module(n, m)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            for n in ("conv1", "prelu1", "pool1", "conv2", "prelu2", "pool2", "conv3", "prelu3",
                      "pool3", "conv4", "prelu4"):
                x = getattr(self, n)(x)
            x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)))
            # boxes, five landmarks, face probability (the landmarks are not used here)
            return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)

    folder = weights_dir()
    if folder is None:
        raise RuntimeError(f"MTCNN needs the facenet-pytorch weights: {INSTALL}")
    nets = []
    for cls, name in ((PNet, "pnet"), (RNet, "rnet"), (ONet, "onet")):
        net = cls()
        state = torch.load(folder / f"{name}.pt", map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        nets.append(net.eval())
    return tuple(nets)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, *, by_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression: indices of the boxes kept, best score first.

    ``boxes`` is (n, 4) ``x1, y1, x2, y2`` (inclusive pixel corners, so a box is
    ``x2 - x1 + 1`` wide). A box is dropped when its overlap with a kept, better
    box exceeds ``iou``; overlap is intersection over union, or over the smaller
    box with ``by_min`` (the O-Net stage of MTCNN). Of equal scores (a flat
    background gives many), the later box comes first, as in facenet-pytorch.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(boxes[i, 2], boxes[rest, 2])
                       - np.maximum(boxes[i, 0], boxes[rest, 0]) + 1)
        h = np.maximum(0.0, np.minimum(boxes[i, 3], boxes[rest, 3])
                       - np.maximum(boxes[i, 1], boxes[rest, 1]) + 1)
        inter = w * h
        denom = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / denom <= iou]
    return np.asarray(keep, dtype=int)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes made square about their centre, side = the longer side."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w * 0.5 - side * 0.5
    out[:, 1] = boxes[:, 1] + h * 0.5 - side * 0.5
    out[:, 2:4] = out[:, :2] + side[:, None]
    return out


def _regress(boxes: np.ndarray, reg: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Apply the networks' box offsets (fractions of the box size) to ``x1, y1, x2, y2``.

    The size is ``x2 - x1 + 1`` (inclusive corners), except after P-Net, where
    the original MATLAB code and facenet-pytorch take ``x2 - x1``.
    """
    w = boxes[:, 2] - boxes[:, 0] + inclusive
    h = boxes[:, 3] - boxes[:, 1] + inclusive
    out = boxes.copy()
    out[:, :4] = boxes[:, :4] + reg * np.stack([w, h, w, h], axis=1)
    return out


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the thread count."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _rgb(grey):
    """A (n, 1, h, w) grey tensor as the networks' (n, 3, h, w) input, scaled to ±1."""
    return ((grey - 127.5) * 0.0078125).expand(-1, 3, -1, -1)


def _crops(image, boxes: np.ndarray, size: int):
    """The boxes cut from ``image`` (1, 1, H, W), clipped to it, resized to ``size``."""
    import torch
    from torch.nn.functional import interpolate

    _, _, h, w = image.shape
    out = []
    for x1, y1, x2, y2 in np.trunc(boxes[:, :4]).astype(int):
        x1, y1, x2, y2 = max(x1, 1), max(y1, 1), min(x2, w), min(y2, h)
        crop = image[:, :, y1 - 1: y2, x1 - 1: x2]
        out.append(interpolate(crop, size=(size, size), mode="area"))
    return _rgb(torch.cat(out))


def _valid(boxes: np.ndarray, w: int, h: int) -> np.ndarray:
    x1, y1 = np.maximum(np.trunc(boxes[:, 0]), 1), np.maximum(np.trunc(boxes[:, 1]), 1)
    x2, y2 = np.minimum(np.trunc(boxes[:, 2]), w), np.minimum(np.trunc(boxes[:, 3]), h)
    return (x2 >= x1) & (y2 >= y1)


def detect(image: np.ndarray, min_size: float = 20.0) -> list[Detection]:
    """MTCNN faces on a 2-D grey uint8 image: ``(x, y, w, h, probability)`` per face.

    Boxes are in pixels of ``image`` (column, row, width, height); ``min_size``
    is the smallest face (pixels) the pyramid looks for. The grey image is fed
    to the networks as three equal colour channels. Raises RuntimeError without
    the weights (:func:`available`). Runs on one torch thread (module docstring).
    """
    import torch
    from torch.nn.functional import interpolate

    pnet, rnet, onet = _networks()
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"MTCNN needs a 2-D grey image, got shape {image.shape}")
    h, w = image.shape
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))
    tensor = tensor[None, None]
    scale = 12.0 / float(min_size)
    found = []
    with torch.inference_mode(), one_thread():
        while min(h, w) * scale >= 12:
            level = interpolate(tensor, size=(int(h * scale + 1), int(w * scale + 1)),
                                mode="area")
            reg, prob = pnet(_rgb(level))
            score = prob[0, 1].numpy()
            rows, cols = np.nonzero(score >= THRESHOLDS[0])
            if rows.size:
                # float32 like the networks: the floor of an exact multiple must not
                # depend on the precision (facenet-pytorch computes this in float32)
                corner = np.stack([cols, rows], axis=1).astype(np.float32) * np.float32(2)
                q1 = np.floor((corner + np.float32(1)) / np.float32(scale))
                q2 = np.floor((corner + np.float32(12)) / np.float32(scale))
                offsets = reg[0].numpy()[:, rows, cols].T
                boxes = np.hstack([q1, q2, score[rows, cols, None], offsets])
                found.append(boxes[nms(boxes[:, :4], boxes[:, 4], NMS_IOU[0])])
            scale *= PYRAMID_FACTOR
        if not found:
            return []
        boxes = np.vstack(found)
        boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
        boxes = _square(_regress(boxes[:, :5], boxes[:, 5:9], inclusive=False))
        for stage, (net, size) in enumerate(((rnet, 24), (onet, 48)), start=1):
            boxes = boxes[_valid(boxes, w, h)]
            if not len(boxes):
                return []
            out = net(_crops(tensor, boxes, size))
            reg, score = out[0], out[-1][:, 1].numpy()
            keep = score > THRESHOLDS[stage]
            boxes = np.hstack([boxes[keep, :4], score[keep, None]])
            offsets = reg.numpy()[keep]
            if stage == 1:
                pick = nms(boxes[:, :4], boxes[:, 4], NMS_IOU[1])
                boxes = _square(_regress(boxes[pick], offsets[pick]))
            else:
                boxes = _regress(boxes, offsets)
                boxes = boxes[nms(boxes[:, :4], boxes[:, 4], NMS_IOU[2], by_min=True)]
    corner = np.rint(boxes[:, :2]).astype(int)
    size = np.rint(boxes[:, 2:4] - boxes[:, :2]).astype(int)
    return [(int(x), int(y), int(w), int(h), float(p))
            for (x, y), (w, h), p in zip(corner, size, boxes[:, 4], strict=True)]
