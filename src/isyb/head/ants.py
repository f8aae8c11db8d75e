"""The one ANTs bridge: isyb's RAS arrays to ANTs images, ANTs transform files to RAS matrices.

isyb's images are arrays with a voxel->world ``affine`` in RAS millimetres
(nibabel's convention). ANTs (ITK) places an image in LPS physical space by
its origin, spacing and direction cosines, and writes affine transforms as
ITK ``MatrixOffsetTransformBase`` parameters (a 3×3 matrix, a translation and
a centre) that map a *fixed* physical point to a *moving* one. A RAS point
``(x, y, z)`` is the LPS point ``(-x, -y, z)``: :data:`FLIP`, its own inverse.

Every function takes ``flip=False`` for callers that hand ANTs their own
working frame as physical space (:mod:`isyb.head.register`): then the affine
or the matrix is used as it is.

>>> import numpy as np
>>> affine = np.diag([2.0, 2.0, 2.0, 1.0]); affine[:3, 3] = [-90.0, -126.0, -72.0]
>>> geometry = ants_geometry(affine)
>>> geometry["origin"], geometry["spacing"]
((90.0, 126.0, -72.0), (2.0, 2.0, 2.0))
>>> geometry["direction"].diagonal().tolist()
[-1.0, -1.0, 1.0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import ants

#: RAS <-> LPS world flip (4×4, its own inverse).
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def ants_geometry(affine: np.ndarray, *, flip: bool = True) -> dict[str, object]:
    """``origin``, ``spacing`` and ``direction`` (``ants.from_numpy`` keywords) of a voxel->world
    ``affine`` in RAS mm (``flip=False``: already in ANTs' physical mm)."""
    physical = FLIP @ affine if flip else np.asarray(affine, dtype=float)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return {
        "origin": tuple(float(v) for v in physical[:3, 3]),
        "spacing": tuple(float(v) for v in zooms),
        "direction": physical[:3, :3] / zooms,
    }


def to_ants(data: np.ndarray, affine: np.ndarray, *, flip: bool = True) -> ants.ANTsImage:
    """A 3-D array (any dtype, stored as float32) as an ANTs image placed by its RAS ``affine``."""
    import ants

    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           **ants_geometry(affine, flip=flip))


def from_ants(image: ants.ANTsImage, *, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """An ANTs image as its array and voxel->world affine in RAS mm (the inverse of
    :func:`to_ants`)."""
    physical = np.eye(4)
    physical[:3, :3] = np.asarray(image.direction, dtype=float) @ np.diag(image.spacing)
    physical[:3, 3] = image.origin
    return image.numpy(), FLIP @ physical if flip else physical


def read_affine(path: str, *, flip: bool = True) -> np.ndarray:
    """An ANTs affine transform file as a 4×4 map of fixed to moving world mm (RAS; with
    ``flip=False`` ANTs' own physical mm).

    ITK's centred form ``y = A (x - c) + t + c`` becomes the homogeneous
    matrix ``[A | t + c - A c]``.
    """
    import ants

    transform = ants.read_transform(path)
    params = np.asarray(transform.parameters, dtype=float)
    center = np.asarray(transform.fixed_parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    physical = np.eye(4)
    physical[:3, :3] = matrix
    physical[:3, 3] = params[9:12] + center - matrix @ center
    return FLIP @ physical @ FLIP if flip else physical
