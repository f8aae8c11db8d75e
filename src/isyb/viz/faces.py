"""Face detectability: can a stock face detector find a face on a surface render?

The head is rendered from the front at a few yaw angles
(:func:`isyb.viz.render.render_faces`). Each render goes to OpenCV's stock
Viola-Jones frontal face detector, the Haar cascade
``haarcascade_frontalface_alt2.xml``, which ships with
``opencv-python-headless`` 4.x in ``cv2.data.haarcascades``. A face should be
found on an original scan that has the face in its field of view, and none after
defacing.

What this measures: whether something face-shaped is left, at the scale a
Viola-Jones detector sees a face (a 20x20 pixel window over a 130-170 mm face,
so about 7-8 mm per pixel). It does not measure identity. A face that is only
blurred keeps its eye sockets, nose and mouth at that scale and is still found.
On the three full-face test scans, a face box-blurred with a 15 or 20 mm kernel
was still found on all of them; 30-40 mm was found on some, and 50 mm over the
whole front of the face on none. Use re-identification to judge blurred faces.
A face cut by the field of view (no nose or no mouth) is not found either, so
"no face detected" proves nothing for cropped scans.

Sources: P. Viola and M. Jones, "Rapid object detection using a boosted cascade
of simple features", CVPR 2001; R. Lienhart and J. Maydt, "An extended set of
Haar-like features for rapid object detection", ICIP 2002 (the ``alt2`` cascade).

It lives in :mod:`isyb.viz` (beside the renders) so that the release gate
(:mod:`isyb.app.gate`) can scan a release's pictures and renders with it;
:mod:`isyb.evaluate` uses it from here.
"""

from __future__ import annotations

import base64
import binascii
import re
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from isyb.head.morphology import skin_threshold
from isyb.viz.render import Zooms, render_faces

CASCADE = "haarcascade_frontalface_alt2.xml"
#: Height (pixels) the render is resized to before detection.
DETECT_HEIGHT = 480
#: Scale step of the detector's image pyramid.
SCALE_FACTOR = 1.05
#: A face needs more than this many overlapping raw detections.
MIN_NEIGHBORS = 20
#: Smallest face box, as a fraction of the image height, when the scale is unknown.
MIN_SIZE_FRACTION = 0.2
#: Smallest face box (mm) on renders of known scale (:func:`face_detected`).
MIN_FACE_MM = 80.0
#: Pixel size (mm) of the renders :func:`face_detected` makes.
RENDER_PIXEL_MM = 1.0
#: Overlapping raw detections a face needs in a picture of unknown scale
#: (:func:`picture_faces`). Measured on QC figures (:func:`isyb.viz.render.qc_figure`)
#: and front renders saved as PNG: the faces of two demo phantoms and three real
#: full-face scans were all found with 40 (pycortex-S1's QC figure not with 60);
#: a defaced demo phantom's forehead texture scored between 30 and 40 (found with
#: 30, not 40), and the already-defaced ds000240 scan none.
PICTURE_MIN_NEIGHBORS = 40

Box = tuple[int, int, int, int]


@lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    """OpenCV's stock frontal face cascade, loaded once per process."""
    path = str(cv2.data.haarcascades) + CASCADE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load the OpenCV face cascade {path}")
    return cascade


def _as_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    values = np.nan_to_num(image.astype(np.float64), nan=0.0)
    top = float(values.max())
    values = values / top * 255.0 if top > 0 else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def detect_faces(image: np.ndarray, min_size: float | None = None, *,
                 min_neighbors: int = MIN_NEIGHBORS) -> list[Box]:
    """Faces found by OpenCV's Haar cascade on a grey render, as ``(x, y, w, h)`` boxes.

    Boxes are in pixels of ``image`` (column, row, width, height). ``image`` is 2-D,
    of any numeric dtype (scaled to 0..255 when it is not uint8). ``min_size`` is the
    smallest face box in pixels of ``image``; it defaults to ``MIN_SIZE_FRACTION``
    (20 %) of the image height. The image is resized to ``DETECT_HEIGHT`` (480)
    pixels tall, portrait size, and its histogram is equalized, so the result does
    not depend on the render's size, voxel size or brightness.

    Detector parameters, tuned on renders of three real full-face scans and of
    defaced, face-zeroed and phantom heads (numbers are the raw hits of the
    best box on each):

    - ``scaleFactor=1.05``: a fine pyramid, so that a face is seen at many
      nearby scales. A real face collects many raw hits (44-128 at yaws of
      ±22.5° or less); non-faces collect at most 10.
    - ``minNeighbors=20``: a face needs more than 20 overlapping raw hits, about
      twice the most any non-face reached and half the fewest any real face
      reached at yaws of ±22.5° or less. ``min_neighbors`` overrides it
      (pictures: :data:`PICTURE_MIN_NEIGHBORS`).
    - ``minSize``: a face box (brows to mouth) is at least ``MIN_FACE_MM`` (80 mm)
      on renders of known scale. Real adult faces give boxes of 130-170 mm.
      Smaller boxes are texture: a skin marker on the forehead of the defaced
      control scored 18 hits with a 63 mm box.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"detect_faces needs a 2-D grey image, got shape {image.shape}")
    if min(image.shape) < 8:
        return []
    image = _as_uint8(image)
    scale = DETECT_HEIGHT / image.shape[0]
    width = max(1, round(image.shape[1] * scale))
    resized = cv2.resize(
        image,
        (width, DETECT_HEIGHT),
        interpolation=cv2.INTER_LINEAR if scale >= 1 else cv2.INTER_AREA,
    )
    equalized = cv2.equalizeHist(resized)
    side = MIN_SIZE_FRACTION * image.shape[0] if min_size is None else float(min_size)
    side_px = max(20, round(side * scale))  # the cascade's window is 20x20
    if side_px > min(equalized.shape):
        return []
    boxes = _cascade().detectMultiScale(
        equalized, scaleFactor=SCALE_FACTOR, minNeighbors=min_neighbors, minSize=(side_px, side_px)
    )
    found = np.rint(np.reshape(boxes, (-1, 4)) / scale).astype(int)
    return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


def face_detected(
    data: np.ndarray,
    zooms: Zooms,
    yaws: tuple[float, ...] = (-15.0, 0.0, 15.0),
    threshold: float | None = None,
) -> dict[str, Any]:
    """Render the head at each yaw and look for a face on each render.

    ``data`` is a RAS array with voxel size ``zooms`` (mm). ``yaws`` are in degrees
    (see :func:`isyb.viz.render.render_face`; positive turns the face toward the
    subject's left). ``threshold`` is the skin threshold; it defaults to
    :func:`isyb.head.morphology.skin_threshold` and is computed once for all views. Renders
    are at ``RENDER_PIXEL_MM`` (1 mm) per pixel, and a face box must be at least
    ``MIN_FACE_MM`` (80 mm) wide.

    Returns ``{"detected": bool, "yaws": {yaw: [(x, y, w, h), ...]}, "threshold":
    float}``. ``detected`` is true when a face is found at any yaw. Boxes are in
    render pixels (mm).
    """
    thr = skin_threshold(data) if threshold is None else float(threshold)
    renders = render_faces(data, zooms, tuple(yaws), threshold=thr, pixel_mm=RENDER_PIXEL_MM)
    min_size = MIN_FACE_MM / RENDER_PIXEL_MM
    per_yaw = {
        float(yaw): detect_faces(image, min_size=min_size)
        for yaw, image in zip(yaws, renders, strict=True)
    }
    return {"detected": any(per_yaw.values()), "yaws": per_yaw, "threshold": thr}


#: Raster pictures embedded as ``data:`` URIs in HTML or SVG text.
_DATA_URI = re.compile(rb"data:image/(?:png|jpe?g);base64,([A-Za-z0-9+/=\s]+)")


def embedded_pictures(text: bytes) -> list[bytes]:
    """The raster pictures (PNG, JPEG) embedded base64 in an HTML or SVG document."""
    found = []
    for match in _DATA_URI.finditer(text):
        try:
            found.append(base64.b64decode(b"".join(match.group(1).split()), validate=True))
        except binascii.Error:
            continue
    return found


def picture_faces(encoded: bytes) -> list[Box] | None:
    """Faces in a PNG or JPEG picture (its bytes): :func:`detect_faces` with its default
    smallest box (20 % of the picture's height) and ``PICTURE_MIN_NEIGHBORS``.

    Returns ``None`` when the bytes do not decode as a picture, so that a caller can
    treat an unreadable picture as unchecked rather than as clean.
    """
    image = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        return None
    return detect_faces(image, min_neighbors=PICTURE_MIN_NEIGHBORS)
