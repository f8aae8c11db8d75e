"""A phantom EPI (BOLD) run with known rigid head motion, for motion and QC tests.

The head is :func:`isyb.synthetic.phantom.make_phantom` with a T2*-weighted-looking
contrast (:data:`EPI_INTENSITIES`), moved volume by volume by a known random walk.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from isyb.synthetic.phantom import Label, make_phantom

EPI_INTENSITIES = {Label.CSF: 150.0, Label.GM: 110.0, Label.WM: 80.0, Label.SKIN: 30.0,
                   Label.SKULL: 10.0, Label.MUSCLE: 40.0, Label.EYES: 120.0, Label.NOSE: 30.0,
                   Label.EARS: 30.0, Label.NECK: 40.0, Label.LIPS: 30.0}
"""T2*-weighted-looking contrast for :func:`phantom_bold`: CSF bright, GM over WM, dark scalp."""


def phantom_bold(shape: tuple[int, int, int], vox: tuple[float, float, float], n_vol: int,
                 *, max_trans: float = 2.0, max_rot_deg: float = 2.0, noise: float = 1.5,
                 order: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A phantom EPI run with known rigid motion; returns ``(series, params)``.

    ``series`` is float32 ``(*shape, n_vol)`` with voxel size ``vox`` (mm);
    ``params`` is ``(n_vol, 6)``: translations in mm, then rotations in radians
    (:func:`isyb.head.motion.params_to_matrix` order), the truth for motion tests.

    The phantom is built on a FOV six slices taller than ``shape``, smoothed,
    moved with ``scipy.ndimage.affine_transform`` and cropped, so that moving
    anatomy enters and leaves the slab as in a real scan. Motion is a random
    walk scaled to at most ``max_trans`` mm and ``max_rot_deg`` degrees per
    parameter, volume 0 unmoved; each volume also gets a global intensity
    change of up to 2 % and Gaussian noise of SD ``noise``.
    """
    from isyb.head.motion import params_to_matrix

    rng = np.random.default_rng(seed)
    pad = 6
    big = (shape[0], shape[1], shape[2] + 2 * pad)
    fov = tuple(n * v for n, v in zip(big, vox, strict=True))
    phantom = make_phantom(voxel_size=vox, fov_mm=fov,
                           fov_center_mm=(0.0, 0.0, 20.0), noise_sd=0.0,
                           intensities=EPI_INTENSITIES)
    image = ndi.gaussian_filter(phantom.image.astype(np.float64), 0.8)
    walk = np.cumsum(rng.normal(0.0, 1.0, (n_vol, 6)), axis=0)
    walk -= walk[0]
    walk /= np.abs(walk).max(axis=0) + 1e-12
    params = np.empty((n_vol, 6))
    params[:, :3] = walk[:, :3] * max_trans
    params[:, 3:] = np.deg2rad(walk[:, 3:] * max_rot_deg)
    zooms = np.asarray(vox, dtype=np.float64)
    centre = (np.asarray(big, dtype=np.float64) - 1.0) / 2.0
    series = np.empty((*shape, n_vol), dtype=np.float32)
    for t in range(n_vol):
        # volume_t(y) = reference(A^-1 y), in centred mm; A^-1 y = R^T (y - trans).
        inverse = np.linalg.inv(params_to_matrix(params[t]))
        lin = (inverse[:3, :3] * zooms[None, :]) / zooms[:, None]
        off = centre - lin @ centre + inverse[:3, 3] / zooms
        moved = ndi.affine_transform(image, lin, off, order=order, mode="nearest")
        gain = 1.0 + 0.02 * math.sin(t / 3.0)
        series[..., t] = gain * moved[:, :, pad:pad + shape[2]] + rng.normal(0.0, noise, shape)
    return series, params
