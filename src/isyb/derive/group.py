"""Group mean and SD maps of a derived metric, and their figure on the fsaverage5 surface.

The figure follows the layout of the ISYB data descriptor's Figs. 3-4: one row for the
group mean and one for the SD, each with the left lateral, left medial, right lateral and
right medial views and a colour bar with the metric's units. Volume maps in MNI space are
sampled onto nilearn's fsaverage5 (10242 vertices per hemisphere) with
:func:`nilearn.surface.vol_to_surf`, along the segment between the white and the pial
surfaces (``kind="depth"``, trilinear, the mean of the samples inside the map's mask), and
drawn on the inflated surface over its sulcal depth.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from isyb.errors import IsybError

HEMISPHERES = ("left", "right")
VIEWS = (("left", "lateral"), ("left", "medial"), ("right", "lateral"), ("right", "medial"))


class GroupInputError(IsybError, ValueError):
    """Subject maps or figure inputs that cannot be combined or drawn."""


@dataclass(frozen=True)
class GroupMaps:
    """Voxel-wise group statistics; ``mean`` and ``sd`` are NaN outside ``mask``."""

    mean: np.ndarray
    sd: np.ndarray
    """Sample SD across subjects (ddof = 1)."""
    mask: np.ndarray
    """Voxels valid and finite in every subject."""
    n: int


def group_mean_sd(maps: Sequence[np.ndarray], valid: Sequence[np.ndarray]) -> GroupMaps:
    """Mean and SD (ddof = 1) across subjects of maps on one grid, where every subject is valid.

    ``valid[s]`` marks subject s's usable voxels (e.g. its brain mask); a voxel enters the
    group mask only if it is valid and finite in every subject. Two passes over the maps
    (mean, then squared deviations), so memory is a few grids, whatever the group size.
    """
    if len(maps) != len(valid):
        raise GroupInputError(f"{len(maps)} maps but {len(valid)} validity masks")
    if len(maps) < 2:
        raise GroupInputError(f"a group SD needs at least 2 subjects, got {len(maps)}")
    shape = np.shape(maps[0])
    for s, (m, v) in enumerate(zip(maps, valid, strict=True)):
        if np.shape(m) != shape or np.shape(v) != shape:
            raise GroupInputError(f"subject {s}: map {np.shape(m)} or mask {np.shape(v)} is "
                                  f"not on the grid of subject 0 {shape}")
    mask = np.ones(shape, bool)
    for m, v in zip(maps, valid, strict=True):
        mask &= np.asarray(v, bool) & np.isfinite(m)
    n = len(maps)
    total = np.zeros(int(mask.sum()))
    for m in maps:
        total += np.asarray(m, dtype=np.float64)[mask]
    mean_in = total / n
    squares = np.zeros_like(mean_in)
    for m in maps:
        squares += (np.asarray(m, dtype=np.float64)[mask] - mean_in) ** 2
    mean = np.full(shape, np.nan)
    sd = np.full(shape, np.nan)
    mean[mask] = mean_in
    sd[mask] = np.sqrt(squares / (n - 1))
    return GroupMaps(mean=mean, sd=sd, mask=mask, n=n)


@functools.cache
def _fsaverage5() -> dict[str, dict]:
    """nilearn's fsaverage5 held in memory, read once per process: ``pial``,
    ``white_matter`` and ``inflated`` meshes and the inflated ``sulcal`` depth, per
    hemisphere (arrays read-only).

    nilearn's ``load_fsaverage`` gives meshes that read their GIFTI file again each time
    their coordinates are asked for: 106 reads, 0.5 CPU s of a 3.5 s figure.
    """
    from nilearn import datasets
    from nilearn.surface import InMemoryMesh

    def frozen(array: np.ndarray) -> np.ndarray:
        array = np.array(array)
        array.setflags(write=False)
        return array

    fsaverage = datasets.load_fsaverage("fsaverage5")
    sulcal = datasets.load_fsaverage_data(mesh="fsaverage5", mesh_type="inflated",
                                          data_type="sulcal")
    surfaces = {kind: {hemi: InMemoryMesh(frozen(mesh.parts[hemi].coordinates),
                                          frozen(mesh.parts[hemi].faces))
                       for hemi in HEMISPHERES}
                for kind, mesh in (("pial", fsaverage.pial),
                                   ("white_matter", fsaverage.white_matter),
                                   ("inflated", fsaverage.inflated))}
    surfaces["sulcal"] = {hemi: frozen(sulcal.data.parts[hemi]) for hemi in HEMISPHERES}
    return surfaces


def project_to_fsaverage5(volume: np.ndarray, affine: np.ndarray, *,
                          mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Values of a 3-D MNI-space map at the fsaverage5 vertices, per hemisphere.

    Sampled between the white and pial surfaces (10 depths, trilinear), ignoring samples
    outside ``mask`` (default: the finite voxels); NaN at vertices with no sample inside.
    """
    from nilearn import surface

    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3:
        raise GroupInputError(f"a map to project is 3-D, got shape {volume.shape}")
    inside = np.isfinite(volume) if mask is None else np.asarray(mask, bool) & np.isfinite(volume)
    if inside.shape != volume.shape:
        raise GroupInputError(f"mask shape {inside.shape} differs from the map {volume.shape}")
    if not inside.any():
        raise GroupInputError("the map has no finite voxel inside its mask to project")
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.where(inside, volume, 0.0), affine)
    mask_image = nib.Nifti1Image(inside.astype(np.uint8), affine)
    fsaverage = _fsaverage5()
    textures = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        for hemi in HEMISPHERES:
            textures[hemi] = surface.vol_to_surf(
                image, fsaverage["pial"][hemi], inner_mesh=fsaverage["white_matter"][hemi],
                mask_img=mask_image)
    return textures


def _colour_range(textures: dict[str, np.ndarray]) -> tuple[float, float, bool]:
    values = np.concatenate([t[np.isfinite(t)] for t in textures.values()])
    if values.size == 0:
        raise GroupInputError("no fsaverage5 vertex falls inside the map")
    low, high = np.percentile(values, [2, 98])
    if low < 0 < high:
        bound = float(max(-low, high))
        return -bound, bound, True
    if high <= low:
        high = low + 1.0
    return float(low), float(high), False


def surface_figure(mean: np.ndarray, sd: np.ndarray, affine: np.ndarray, out_png: Path, *,
                   title: str, units: str, mask: np.ndarray | None = None,
                   dpi: int = 100) -> Path:
    """Draw group mean and SD maps (MNI space) on fsaverage5 and write a PNG atomically.

    Two rows (mean, SD) of four views (left lateral, left medial, right lateral, right
    medial), a colour bar per row labelled with ``units``, ``title`` on top. Colours span
    the 2nd-98th percentiles of each row's vertex values: YlOrRd for the mean, viridis for
    the SD, or RdBu_r symmetric about 0 when the range straddles 0. Vertices with no sample
    inside ``mask`` (default: the finite voxels) show the sulcal background. The figure is
    12 x 5.6 inches (1200 x 560 pixels at the default ``dpi``), drawn with matplotlib's Agg
    backend without pyplot and written with :func:`isyb.io.atomic_path`.
    """
    from matplotlib import cm, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from nilearn import plotting

    from isyb.io import atomic_path

    out_png = Path(out_png)
    if np.shape(mean) != np.shape(sd):
        raise GroupInputError(f"mean {np.shape(mean)} and SD {np.shape(sd)} differ in shape")
    rows = (("mean", project_to_fsaverage5(mean, affine, mask=mask)),
            ("SD", project_to_fsaverage5(sd, affine, mask=mask)))
    fsaverage = _fsaverage5()
    figure = Figure(figsize=(12.0, 5.6), dpi=dpi)
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize=14)
    for row, (label, textures) in enumerate(rows):
        vmin, vmax, diverging = _colour_range(textures)
        cmap = "RdBu_r" if diverging else ("viridis" if label == "SD" else "YlOrRd")
        bottom = 0.5 - 0.45 * row
        for column, (hemi, view) in enumerate(VIEWS):
            axes = figure.add_axes((0.06 + 0.205 * column, bottom, 0.2, 0.4),
                                   projection="3d")
            plotting.plot_surf_stat_map(
                fsaverage["inflated"][hemi], textures[hemi], hemi=hemi, view=view,
                bg_map=fsaverage["sulcal"][hemi], cmap=cmap, vmin=vmin, vmax=vmax,
                colorbar=False, axes=axes, figure=figure, bg_on_data=True, darkness=None)
            if row == 0:
                axes.set_title(f"{hemi} {view}", fontsize=10)
        figure.text(0.03, bottom + 0.2, label, rotation=90, ha="center", va="center",
                    fontsize=12)
        bar_axes = figure.add_axes((0.90, bottom + 0.06, 0.012, 0.28))
        mappable = cm.ScalarMappable(colors.Normalize(vmin, vmax), cmap)
        figure.colorbar(mappable, cax=bar_axes).set_label(units)
    with atomic_path(out_png) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi)
    return out_png
