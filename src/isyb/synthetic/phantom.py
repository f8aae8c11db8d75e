"""A synthetic T1-weighted head phantom with exact tissue labels.

The phantom is built from approximate signed distance functions (SDFs, in mm,
negative inside) of ellipsoids, a round cone and an elliptic cylinder,
combined with smooth unions, all evaluated vectorised on the voxel grid. It is
meant for tests and demos of face masking: the face features (nose, lips,
eyelids over the eyes, ears) carry their own labels, and the brain sits well
inside the skull, at least 10 mm from any face feature.

World coordinates are scanner millimetres in RAS (x = Right, y = Anterior,
z = Superior). The world origin is the centre of the cranium ellipsoid, which
is roughly the centre of the brain; the FOV is placed around it by
``fov_center_mm``. The phantom arrays are stored in RAS voxel order
(axis 0 left->Right, axis 1 posterior->Anterior, axis 2 inferior->Superior);
:func:`to_nifti` writes them in any other voxel order.

Head size is set by three dimensions, all in mm, measured on the skin surface:

``length``
    Anterior-posterior length of the cranium, from the forehead (glabella) to
    the back of the head, without the nose. Default 190 mm.
``width``
    Maximum left-right breadth of the cranium, without the ears. Default 150 mm.
``height``
    From the vertex (top of the head) to the menton (lowest point of the
    chin). Default 225 mm.

Every landmark and shape is defined on a reference head of 190 x 150 x 225 mm
and scaled per axis by ``length/190``, ``width/150`` and ``height/225``; layer
thicknesses are fixed in mm (skin and subcutaneous fat 5 mm, skull 7 mm, CSF
3 mm, cortical grey matter 3 mm, eyelids 2.5 mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum

import nibabel as nib
import numpy as np

from isyb.synthetic.shapes import (
    Geometry,
    Sdf,
    bias_field,
    ellipsoid_bounds,
    grid_axes,
    sd_ellipse2,
    sd_ellipsoid,
    sd_quadrant,
    sd_round_cone,
    smax,
    smin,
    subtract_into,
    union_into,
)

__all__ = [
    "BRAIN_LABELS",
    "DEFAULT_INTENSITIES",
    "FACE_LABELS",
    "LENS_INTENSITY",
    "Label",
    "Phantom",
    "labels_to_nifti",
    "make_phantom",
    "to_nifti",
]


class Label(IntEnum):
    """Tissue labels of the phantom (values stored in ``Phantom.labels``)."""

    BACKGROUND = 0
    SKIN = 1  # scalp/face skin and subcutaneous fat, 5 mm; also the eyelids and neck skin
    SKULL = 2
    CSF = 3
    GM = 4
    WM = 5
    EYES = 6  # the two eyeballs
    NOSE = 7  # the whole nose in front of the face surface
    LIPS = 8  # upper and lower lip bulges in front of the face surface
    EARS = 9  # the two ear flaps beside the head surface
    NECK = 10  # neck soft tissue below the jaw (its skin layer is SKIN)
    MUSCLE = 11  # other soft tissue inside the face, jaw and skull base


BRAIN_LABELS = (Label.GM, Label.WM)
"""Labels that make up the brain (what a brain mask should cover)."""

FACE_LABELS = (Label.NOSE, Label.LIPS, Label.EYES)
"""Labels of the identifying face features that face masking must remove or hide."""

DEFAULT_INTENSITIES: dict[Label, float] = {
    Label.BACKGROUND: 0.0,
    Label.SKIN: 120.0,
    Label.SKULL: 15.0,
    Label.CSF: 30.0,
    Label.GM: 75.0,
    Label.WM: 110.0,
    Label.EYES: 30.0,
    Label.NOSE: 95.0,
    Label.LIPS: 80.0,
    Label.EARS: 95.0,
    Label.NECK: 65.0,
    Label.MUSCLE: 60.0,
}
"""Noise-free T1-weighted intensity of each label (arbitrary units)."""

LENS_INTENSITY = 90.0
"""Intensity of the eye lens (inside the EYES label; image only)."""

# Reference head: length 190 mm (y), width 150 mm (x), height 225 mm (z).
_REF_LENGTH, _REF_WIDTH, _REF_HEIGHT = 190.0, 150.0, 225.0
_SKIN_MM = 5.0
_SKULL_MM = 7.0
_CSF_MM = 3.0
_GM_MM = 3.0
_LID_MM = 2.5
_MIN_SCALE, _MAX_SCALE = 0.8, 1.25


@dataclass
class Phantom:
    """A synthetic head: exact labels, a T1-like image and their RAS affine.

    ``labels`` is uint8 (values of :class:`Label`) and ``image`` float32, both
    in RAS voxel order with the same shape. ``affine`` maps voxel indices to
    world mm (RAS). ``landmarks`` holds named points in world mm (the
    ``nose_tip`` is the most anterior point of the nose, ``eye_left`` and
    ``eye_right`` the eyeball centres, and so on). ``length``, ``width`` and
    ``height`` are the head dimensions in mm that built it.
    """

    labels: np.ndarray
    image: np.ndarray
    affine: np.ndarray
    landmarks: dict[str, np.ndarray] = field(default_factory=dict)
    length: float = _REF_LENGTH
    width: float = _REF_WIDTH
    height: float = _REF_HEIGHT

    @property
    def voxel_size(self) -> np.ndarray:
        """Voxel size in mm along the three array axes."""
        return nib.affines.voxel_sizes(self.affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape (x, y, z voxels)."""
        return self.labels.shape  # type: ignore[return-value]

    def mask(self, *labels: int) -> np.ndarray:
        """Boolean mask of the voxels whose label is one of ``labels``."""
        return np.isin(self.labels, np.asarray(labels, dtype=np.uint8))

    @property
    def brain_mask(self) -> np.ndarray:
        """Boolean mask of the brain (grey and white matter)."""
        return self.mask(*BRAIN_LABELS)

    @property
    def head_mask(self) -> np.ndarray:
        """Boolean mask of every non-background voxel."""
        return self.labels != Label.BACKGROUND

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """World mm (RAS) of voxel indices ``ijk`` (shape (..., 3))."""
        ijk = np.asarray(ijk, dtype=float)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def centroid(self, label: int) -> np.ndarray:
        """Centroid of one label in world mm (RAS)."""
        idx = np.argwhere(self.labels == label)
        if idx.size == 0:
            raise ValueError(f"label {label} is absent from the phantom")
        return self.world(idx.mean(axis=0))


# ---------------------------------------------------------------------------
# Evaluation on boxes of the grid, so that small shapes cost little.


# ---------------------------------------------------------------------------
# Geometry of the head


# ---------------------------------------------------------------------------


def make_phantom(*, voxel_size: float | Sequence[float] = 1.0, length: float = _REF_LENGTH,
                 width: float = _REF_WIDTH, height: float = _REF_HEIGHT,
                 fov_mm: Sequence[float] = (200.0, 232.0, 256.0),
                 fov_center_mm: Sequence[float] = (0.0, 8.0, -12.0), noise_sd: float = 3.0,
                 bias: float = 0.0, intensities: dict[Label, float] | None = None,
                 seed: int = 0) -> Phantom:
    """Build a synthetic T1-weighted head phantom with exact tissue labels.

    Parameters
    ----------
    voxel_size:
        Voxel size in mm, one value or one per axis (x, y, z).
    length, width, height:
        Head dimensions in mm (see the module docstring): forehead to back of
        the head, left-right breadth without ears, vertex to chin. Each must be
        within 0.8 to 1.25 times its default (190, 150, 225).
    fov_mm:
        Field of view in mm along x, y, z; the grid has ``round(fov/voxel)``
        voxels per axis.
    fov_center_mm:
        World position (mm, RAS) of the FOV centre; the world origin is the
        centre of the cranium. The default FOV (200 x 232 x 256 mm) holds the
        whole default head with the ears, the nose and about 15 mm of neck
        below the chin.
    noise_sd:
        Standard deviation of the Gaussian noise added to the real and the
        imaginary channel before taking the magnitude (Rician noise), in image
        intensity units. 0 gives the noise-free image.
    bias:
        Amplitude of a smooth multiplicative bias field (0.2 means intensities
        vary by up to +-20 % across the FOV). 0 (default) turns it off.
    intensities:
        Overrides of :data:`DEFAULT_INTENSITIES` (noise-free value per label).
    seed:
        Seed of the noise generator.

    Returns
    -------
    Phantom
        Labels (uint8), image (float32) and RAS affine, plus world-mm landmarks.
    """
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=float), (3,)).copy()
    fov = np.broadcast_to(np.asarray(fov_mm, dtype=float), (3,)).copy()
    center = np.asarray(fov_center_mm, dtype=float)
    if np.any(vs <= 0) or np.any(fov <= 0):
        raise ValueError("voxel_size and fov_mm must be positive")
    scales = {"width": width / _REF_WIDTH, "length": length / _REF_LENGTH,
              "height": height / _REF_HEIGHT}
    for name, s in scales.items():
        if not _MIN_SCALE <= s <= _MAX_SCALE:
            raise ValueError(f"{name} must be within {_MIN_SCALE}..{_MAX_SCALE} times its default")
    geo = Geometry(scales["width"], scales["length"], scales["height"])
    grid, affine = grid_axes(vs, fov, center)
    shape = (grid.xs.size, grid.ys.size, grid.zs.size)
    far = np.float32(1e4)
    big = 1e4

    # --- base head (cranium, face, jaw, neck, eyelids), without the features
    c_cran, r_cran = geo.cranium
    x, y, z = grid.coords((slice(None), slice(None), slice(None)))
    cranium = sd_ellipsoid(x, y, z, c_cran, r_cran).astype(np.float32)
    base = cranium.copy()
    for c, r, k in geo.base_ellipsoids():
        union_into(base, grid, lambda x, y, z, c=c, r=r: sd_ellipsoid(x, y, z, c, r),
                    *ellipsoid_bounds(c, r, k + 2.0), k)
    (ncx, ncy), (nrx, nry), ntop = geo.neck
    k_neck = 12.0

    def neck_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return np.maximum(sd_ellipse2(x, y, (ncx, ncy), (nrx, nry)), z - ntop)

    union_into(base, grid, neck_sdf, (ncx - nrx - 14, ncy - nry - 14, -big),
                (ncx + nrx + 14, ncy + nry + 14, ntop + 14), k_neck)
    for c, r in geo.sockets():
        subtract_into(base, grid, lambda x, y, z, c=c, r=r: sd_ellipsoid(x, y, z, c, r),
                       *ellipsoid_bounds(c, r, 1.0))
    r_eye = geo.eye_radius
    r_lid = r_eye + _LID_MM
    for c in geo.eyes():
        union_into(base, grid, lambda x, y, z, c=c: sd_ellipsoid(x, y, z, c, (r_lid,) * 3),
                    *ellipsoid_bounds(c, (r_lid,) * 3, 3.0), 1.5)

    # --- features (nose, lips, ears): their own SDF, blended onto the base head
    feat = np.full(shape, far, dtype=np.float32)
    feat_label = np.zeros(shape, dtype=np.uint8)
    k_feat = 4.0
    a, b, r1, r2, c_alae, r_alae = geo.nose

    def nose_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return smin(sd_round_cone(x, y, z, a, b, r1, r2),
                     sd_ellipsoid(x, y, z, c_alae, r_alae), 5.0)

    nose_lo = [min(a[i] - r1, b[i] - r2, c_alae[i] - r_alae[i]) - 8 for i in range(3)]
    nose_hi = [max(a[i] + r1, b[i] + r2, c_alae[i] + r_alae[i]) + 8 for i in range(3)]
    features: list[tuple[Label, Sdf, Sequence[float], Sequence[float]]] = [
        (Label.NOSE, nose_sdf, nose_lo, nose_hi)]
    (cu, ru), (cl, rl) = geo.lips()

    def lips_sdf(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return smin(sd_ellipsoid(x, y, z, cu, ru), sd_ellipsoid(x, y, z, cl, rl), 2.0)

    lips_lo = [min(cu[i] - ru[i], cl[i] - rl[i]) - 8 for i in range(3)]
    lips_hi = [max(cu[i] + ru[i], cl[i] + rl[i]) + 8 for i in range(3)]
    features.append((Label.LIPS, lips_sdf, lips_lo, lips_hi))
    for c, r in geo.ears():
        features.append((Label.EARS, lambda x, y, z, c=c, r=r: sd_ellipsoid(x, y, z, c, r),
                         *ellipsoid_bounds(c, r, 8.0)))
    head = base.copy()
    for lab, sdf, lo, hi in features:
        sl = grid.box(lo, hi)
        if sl is None:
            continue
        d = sdf(*grid.coords(sl)).astype(np.float32)
        closer = d < feat[sl]
        feat[sl] = np.where(closer, d, feat[sl])
        feat_label[sl] = np.where(closer, np.uint8(lab), feat_label[sl])
        head[sl] = smin(head[sl], d, k_feat)

    # --- labels, painted from the outside in
    labels = np.zeros(shape, dtype=np.uint8)
    in_base = base < 0
    labels[in_base] = Label.MUSCLE
    neck_zone = (sd_ellipse2(x, y, (ncx, ncy), (nrx, nry)) < 0) & (z < geo.neck_top_z)
    labels[in_base & neck_zone] = Label.NECK
    del neck_zone

    y_cut, z_cut = geo.icv_cut
    icv = smax(cranium + np.float32(_SKIN_MM + _SKULL_MM),
                -sd_quadrant(y - np.float32(y_cut), np.float32(z_cut) - z, 8.0), 8.0)
    del cranium
    labels[in_base & (icv < _SKULL_MM + 1.0)] = Label.SKULL
    labels[icv < 0] = Label.CSF
    labels[icv < -_CSF_MM] = Label.GM
    labels[icv < -(_CSF_MM + _GM_MM)] = Label.WM
    # interhemispheric fissure (CSF) above the corpus callosum
    fissure_half = max(1.0, float(vs[0]) * 0.75)
    sl_f = grid.box((-fissure_half, -big, 25.0 * geo.sz), (fissure_half, big, big))
    if sl_f is not None:
        sub = labels[sl_f]
        sub[np.isin(sub, (Label.GM, Label.WM))] = Label.CSF
    for c, r in geo.ventricles():
        sl = grid.box(*ellipsoid_bounds(c, r, 1.0))
        if sl is not None:
            inside = sd_ellipsoid(*grid.coords(sl), c, r) < 0
            sub = labels[sl]
            sub[inside & (sub == Label.WM)] = Label.CSF
    labels[in_base & (base > -_SKIN_MM) & (icv > 0)] = Label.SKIN
    del icv
    for c in geo.eyes():
        sl = grid.box(*ellipsoid_bounds(c, (r_eye,) * 3, 1.0))
        if sl is not None:
            sub = labels[sl]
            sub[sd_ellipsoid(*grid.coords(sl), c, (r_eye,) * 3) < 0] = Label.EYES
    # Voxels added by the smooth union take the feature's label near the
    # feature and the skin's label elsewhere, so that no stray feature voxels
    # speckle the head surface.
    for lab, _, lo, hi in features:
        sl = grid.box(lo, hi)
        if sl is None:
            continue
        added = (head[sl] < 0) & ~in_base[sl]
        sub = labels[sl]
        near = feat[sl] < k_feat * 0.25
        sub[added & ~near & (sub == Label.BACKGROUND)] = Label.SKIN
        sub[added & near & (feat_label[sl] == lab)] = lab
    del feat, feat_label, in_base, base

    # --- image
    lut = np.zeros(256, dtype=np.float32)
    values = dict(DEFAULT_INTENSITIES)
    if intensities:
        values.update({Label(k): float(v) for k, v in intensities.items()})
    for lab, v in values.items():
        lut[int(lab)] = v
    image = lut[labels]
    r_lens = (4.5 * geo.s_mean, 2.0 * geo.s_mean, 4.5 * geo.s_mean)
    for c in geo.eyes():
        c_lens = (c[0], c[1] + r_eye - 2.5 * geo.s_mean, c[2])
        sl = grid.box(*ellipsoid_bounds(c_lens, r_lens, 1.0))
        if sl is not None:
            sub = image[sl]
            inside = (sd_ellipsoid(*grid.coords(sl), c_lens, r_lens) < 0) & (
                labels[sl] == Label.EYES)
            sub[inside] = LENS_INTENSITY
    if bias:
        image *= bias_field(grid, float(bias))
    if noise_sd > 0:
        rng = np.random.default_rng(seed)
        sd = np.float32(noise_sd)
        re = image + sd * rng.standard_normal(shape, dtype=np.float32)
        im = sd * rng.standard_normal(shape, dtype=np.float32)
        image = np.sqrt(re * re + im * im)

    nose_tip_y = b[1] + r2
    landmarks = {
        "origin": np.zeros(3),
        "vertex": np.array([0.0, 0.0, r_cran[2]]),
        "glabella": np.array([0.0, r_cran[1], 0.0]),
        "opisthocranion": np.array([0.0, -r_cran[1], 0.0]),
        "nasion": np.array(geo.p(0, 90, -18)),
        "nose_tip": np.array([0.0, nose_tip_y, b[2]]),
        "stomion": np.array(geo.p(0, 88, -72)),
        "menton": np.array(geo.p(0, 70, -125)),
        "eye_right": np.array(geo.eyes()[0]),
        "eye_left": np.array(geo.eyes()[1]),
        "ear_right": np.array(geo.ears()[0][0]),
        "ear_left": np.array(geo.ears()[1][0]),
    }
    return Phantom(labels=labels, image=image.astype(np.float32, copy=False), affine=affine,
                   landmarks=landmarks, length=float(length), width=float(width),
                   height=float(height))


# ---------------------------------------------------------------------------
# NIfTI output in any voxel order


def _reorient(array: np.ndarray, affine: np.ndarray, orientation: str,
              origin_shift_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """RAS-ordered ``array`` re-stored in voxel order ``orientation`` with a matching affine."""
    codes = tuple(orientation.upper())
    if len(codes) != 3:
        raise ValueError(f"orientation must be a 3-letter axis code, got {orientation!r}")
    try:
        target = nib.orientations.axcodes2ornt(codes)
    except ValueError as exc:
        raise ValueError(f"invalid orientation {orientation!r}: {exc}") from None
    if np.isnan(target).any() or len(set(target[:, 0].tolist())) != 3:
        raise ValueError(f"invalid orientation {orientation!r}: need one of R/L, A/P, S/I each")
    current = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(current, target)
    data = nib.orientations.apply_orientation(array, transform)
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    new_affine[:3, 3] += np.asarray(origin_shift_mm, dtype=float)
    return np.ascontiguousarray(data), new_affine


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def to_nifti(phantom: Phantom, orientation: str = "RAS",
             origin_shift_mm: Sequence[float] = (0.0, 0.0, 0.0),
             dtype: np.dtype | type = np.int16, *, labels: bool = False) -> nib.Nifti1Image:
    """The phantom image (or its labels) as a NIfTI image stored in voxel order ``orientation``.

    ``orientation`` is any nibabel axis code such as ``"RAS"``, ``"LIA"``,
    ``"LSA"`` or ``"LPS"`` (the direction each array axis points to). The
    affine is exact, so ``nib.as_closest_canonical`` gives back the RAS arrays
    of the phantom. ``origin_shift_mm`` (x, y, z in mm) is added to the affine
    translation, which moves the whole head in world space. The image is cast
    to ``dtype``; integer types are rounded and clipped to the type's range.
    With ``labels=True`` the uint8 label array is stored instead (``dtype`` is
    then ignored).
    """
    if labels:
        array = phantom.labels
    else:
        dt = np.dtype(dtype)
        array = phantom.image
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            array = np.clip(np.rint(array), info.min, info.max)
        array = array.astype(dt)
    data, affine = _reorient(array, phantom.affine, orientation, origin_shift_mm)
    return _nifti(data, affine)


def labels_to_nifti(phantom: Phantom, orientation: str = "RAS",
                    origin_shift_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> nib.Nifti1Image:
    """The label array as a uint8 NIfTI image stored in voxel order ``orientation``."""
    return to_nifti(phantom, orientation, origin_shift_mm, labels=True)
