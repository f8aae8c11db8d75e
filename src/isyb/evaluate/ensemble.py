"""A stronger face judge: several face detectors over many views of a surface render.

Every view is a shaded surface render (:func:`isyb.viz.render.render_views`) at
1 mm per pixel: yaw -15, 0 and +15 degrees times pitch -10, 0 and +10 degrees
under the portrait light (30 degrees above the viewer), plus the three yaws at
pitch 0 under a second light at the viewer (0 degrees, no cast shadows): 12
views. Each view goes to each detector:

- ``haar``: OpenCV's Viola-Jones cascade (:func:`isyb.viz.faces.detect_faces`),
  always available;
- ``mtcnn``: the MTCNN convolutional cascade (:mod:`isyb.evaluate.mtcnn`), with
  the weights of ``facenet-pytorch`` (:data:`isyb.evaluate.mtcnn.INSTALL`). Without them the
  ensemble runs without it, logs a warning, and the record says so.

Both look for faces of at least ``MIN_FACE_MM`` (80 mm; real adult faces give
boxes of 130-170 mm). A face counts for MTCNN when its final-stage probability
exceeds its threshold (0.7, facenet-pytorch's default); the record keeps the
probability. The result is an :class:`EnsembleResult`: per detector and view,
the boxes found; ``detected`` is true when any detector finds a face in any view.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from isyb.evaluate import mtcnn
from isyb.head.morphology import skin_threshold
from isyb.viz.faces import MIN_FACE_MM, RENDER_PIXEL_MM, detect_faces
from isyb.viz.render import Zooms, render_views

log = logging.getLogger(__name__)

#: Yaws and pitches (degrees) of the views under the portrait light.
YAWS = (-15.0, 0.0, 15.0)
PITCHES = (-10.0, 0.0, 10.0)
#: Elevations (degrees above the viewing direction) of the two lights.
PORTRAIT_LIGHT_DEG = 30.0
FRONT_LIGHT_DEG = 0.0
DETECTORS = ("haar", "mtcnn")
#: The yaws (degrees) of :func:`isyb.viz.faces.face_detected`'s renders (pitch 0, portrait light).
STOCK_YAWS = (-15.0, 0.0, 15.0)


@dataclass(frozen=True)
class View:
    """One render: yaw and pitch of the head and elevation of the light (degrees)."""

    yaw: float
    pitch: float
    light: float

    @property
    def name(self) -> str:
        """``yaw-15_pitch+0_light30``."""
        return f"yaw{self.yaw:+.0f}_pitch{self.pitch:+.0f}_light{self.light:.0f}"


def default_views() -> tuple[View, ...]:
    """The 12 views of the module docstring."""
    portrait = [View(y, p, PORTRAIT_LIGHT_DEG) for p in PITCHES for y in YAWS]
    return (*portrait, *(View(y, 0.0, FRONT_LIGHT_DEG) for y in YAWS))


@dataclass(frozen=True)
class EnsembleResult:
    """What each detector found on each view.

    ``hits[detector][view.name]`` is a list of boxes ``[x, y, w, h]`` in render
    pixels (mm), with the probability appended for MTCNN. ``missing`` maps a
    detector that could not run to the reason.
    """

    views: tuple[View, ...]
    hits: dict[str, dict[str, list[list[float]]]]
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def detectors(self) -> tuple[str, ...]:
        """The detectors that ran."""
        return tuple(self.hits)

    @property
    def detected(self) -> bool:
        """Whether any detector found a face in any view."""
        return any(self.views_with_face(d) for d in self.hits)

    def views_with_face(self, detector: str) -> int:
        """In how many views ``detector`` found a face."""
        return sum(bool(boxes) for boxes in self.hits[detector].values())

    def views_with_any_face(self) -> int:
        """In how many views at least one detector found a face."""
        return sum(any(self.hits[d][v.name] for d in self.hits) for v in self.views)

    def stock_detected(self) -> bool:
        """What :func:`isyb.viz.faces.face_detected` says of the same head, without rendering it.

        That check is the Haar cascade on renders at :data:`STOCK_YAWS`, pitch 0,
        under the portrait light: three of these views, rendered and judged the
        same way, so its verdict is whether ``haar`` found a face in one of them.
        Raises ValueError when the ensemble ran without those views.
        """
        stock = [View(yaw, 0.0, PORTRAIT_LIGHT_DEG).name for yaw in STOCK_YAWS]
        haar = self.hits["haar"]
        if any(name not in haar for name in stock):
            raise ValueError(f"the stock detector's views {stock} were not all rendered")
        return any(haar[name] for name in stock)

    def to_json(self) -> dict:
        """A JSON-ready dict: views, detectors run and missing, per-detector counts and boxes."""
        return {
            "views": [v.name for v in self.views],
            "detectors": list(self.detectors),
            "detectors_missing": dict(self.missing),
            "detected": self.detected,
            "views_with_face": {d: self.views_with_face(d) for d in self.detectors},
            "views_with_any_face": self.views_with_any_face(),
            "hits": self.hits,
        }


def detect_views(images: list[np.ndarray], views: tuple[View, ...],
                 pixel_mm: float = RENDER_PIXEL_MM) -> EnsembleResult:
    """Run every available detector on renders ``images`` (one per view, ``pixel_mm`` mm/px)."""
    min_size = MIN_FACE_MM / pixel_mm
    hits: dict[str, dict[str, list[list[float]]]] = {
        "haar": {v.name: [list(map(float, b)) for b in detect_faces(im, min_size=min_size)]
                 for v, im in zip(views, images, strict=True)}}
    missing = {}
    if mtcnn.available():
        hits["mtcnn"] = {v.name: [list(map(float, b)) for b in mtcnn.detect(im, min_size)]
                         for v, im in zip(views, images, strict=True)}
    else:
        missing["mtcnn"] = f"facenet-pytorch weights not installed ({mtcnn.INSTALL})"
        log.warning("face ensemble without MTCNN: %s", missing["mtcnn"])
    return EnsembleResult(views=tuple(views), hits=hits, missing=missing)


def ensemble_detect(data: np.ndarray, zooms: Zooms, *, views: tuple[View, ...] | None = None,
                    threshold: float | None = None) -> EnsembleResult:
    """Render a RAS head (voxel size ``zooms``, mm) in every view and run every detector.

    ``threshold`` is the skin threshold (default :func:`skin_threshold`).
    """
    views = default_views() if views is None else tuple(views)
    thr = skin_threshold(data) if threshold is None else float(threshold)
    images = render_views(data, zooms, [(v.yaw, v.pitch, v.light) for v in views],
                          threshold=thr, pixel_mm=RENDER_PIXEL_MM)
    return detect_views(images, views)
