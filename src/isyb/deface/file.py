"""Deface one image file: the I/O edge around :func:`isyb.deface.engine.deface_volume`.

Writes, atomically and only after every check passed:

* ``OUT``: the input with its face obscured, on the input's grid, voxel
  order, dtype, affine and header; voxels outside the changed region keep
  their stored bits exactly;
* ``<OUT stem>_isyb.json``: provenance (template, method, registration
  score, changed-voxel counts, the brain-guard check, versions, timings);
* ``<OUT stem>_isyb.png``: a QC figure of the *defaced* head;
* with ``save_mask``, the binary mask of the voxels the method was allowed
  to change.

Fail closed: if a voxel inside the brain guard would change, nothing is
written and :class:`isyb.errors.IsybError` is raised.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from isyb import __version__
from isyb.deface.engine import Alignment, DefaceOptions, DefaceResult, deface_volume
from isyb.errors import IsybError
from isyb.io import (
    edit_stored,
    image_suffix,
    load_volume,
    save_mask_like,
    stored_data,
    strip_image_suffix,
    to_source_order,
    write_stored,
    write_text,
)
from isyb.templates.registry import Template
from isyb.viz.render import qc_figure

DEPENDENCIES = ("numpy", "scipy", "nibabel", "antspyx", "deepbet", "torch")


def versions() -> dict[str, str]:
    """Versions of isyb, Python and the libraries that shape the result."""
    out = {"isyb": __version__, "python": platform.python_version()}
    for name in DEPENDENCIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    """The provenance JSON and QC PNG paths that go next to ``out``."""
    stem = strip_image_suffix(out)
    return Path(f"{stem}_isyb.json"), Path(f"{stem}_isyb.png")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_paths(in_path: Path, out_path: Path, *, force: bool,
                save_mask: Path | None = None) -> None:
    """Refuse bad output names, and overwriting the input or an output without ``force``.

    The mask path, when given, must be an image name and must not be the input
    or the output, even with ``force``.
    """
    image_suffix(out_path)
    if not in_path.exists():
        raise IsybError(f"{in_path}: no such file")
    if _same_file(in_path, out_path) and not force:
        raise IsybError(f"{out_path}: output is the input; pass --force to overwrite the input")
    if out_path.exists() and not force:
        raise IsybError(f"{out_path}: exists; pass --force to overwrite it")
    if save_mask is not None:
        image_suffix(save_mask)
        if _same_file(save_mask, in_path) or _same_file(save_mask, out_path):
            raise IsybError(f"{save_mask}: the mask path must differ from IN and OUT")
        if save_mask.exists() and not force:
            raise IsybError(f"{save_mask}: exists; pass --force to overwrite it")


def deface_file(in_path: str | os.PathLike, out_path: str | os.PathLike, template: Template,
                options: DefaceOptions, *, save_mask: str | os.PathLike | None = None,
                force: bool = False, qc_png: bool = True,
                provenance_path: str | os.PathLike | None = None,
                png_path: str | os.PathLike | None = None,
                alignment: Alignment | None = None,
                recorded_as: dict[str, str] | None = None) -> dict:
    """Deface ``in_path`` into ``out_path``; return the provenance record.

    ``provenance_path`` and ``png_path`` override the default names next to
    ``out_path`` (dataset mode puts them under ``derivatives/isyb``).
    ``alignment`` reuses a brain mask and registration of the same input.
    ``recorded_as`` gives the names the record uses for ``input``, ``output``
    and ``qc_png`` instead of the paths: dataset mode records them relative to
    the datasets, so that no local path (which can name a person or a site)
    ends up in a release.
    """
    names = recorded_as or {}
    in_path, out_path = Path(in_path), Path(out_path)
    save_mask = Path(save_mask) if save_mask is not None else None
    check_paths(in_path, out_path, force=force, save_mask=save_mask)
    start = time.perf_counter()
    volume = load_volume(in_path)
    result = deface_volume(volume, template, options, alignment=alignment)
    raw_in, _, _ = stored_data(volume.source)
    raw_out = edit_stored(volume, result.data, result.allowed)
    changed = raw_out != raw_in
    changed3 = changed[..., 0] if changed.ndim == 4 else changed
    guard_src = to_source_order(result.guard, volume.source)
    changed_in_guard = int((changed3 & guard_src).sum())
    if changed_in_guard:
        raise IsybError(f"{in_path}: {changed_in_guard} voxels inside the brain guard would "
                        "change; nothing was written (fail closed)")
    surface_src = to_source_order(result.skin & result.region, volume.source)
    surface_total = int(surface_src.sum())
    surface_changed = int((surface_src & changed3).sum())
    default_json, default_png = sidecar_paths(out_path)
    provenance_path = Path(provenance_path) if provenance_path else default_json
    png_path = Path(png_path) if png_path else default_png

    record = {
        "input": names.get("input", str(in_path)),
        "output": names.get("output", str(out_path)),
        "template": {"name": template.name, "source": template.info.get("source"),
                     "head_sha256": template.info.get("head_sha256"),
                     "brain_mask": template.info.get("brain_mask")},
        "method": options.method,
        "options": {"ears": options.ears, "neck": options.neck,
                    "face_region": options.face_region,
                    "face_margin_mm": (options.face_margin_mm
                                       if options.face_region == "template" else None),
                    "guard_mm": options.guard_mm,
                    "layer_mm": options.layer_mm, "smooth_mm": options.smooth_mm,
                    "blend_mm": options.blend_mm, "seed": options.seed},
        "changed_voxels": int(changed3.sum()),
        "brain_guard": {"margin_mm": options.guard_mm,
                        "guard_voxels_checked": int(guard_src.sum()),
                        "changed_voxels_in_guard": changed_in_guard, "passed": True},
        "face_surface_changed_fraction": (round(surface_changed / surface_total, 4)
                                          if surface_total else None),
        **result.report,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    if record["little_or_no_face"]:
        record["note"] = ("little or no face tissue was found in the face region: "
                          "the input may already be defaced or its FOV may exclude the face")
    write_stored(raw_out, volume, out_path)
    if save_mask is not None:
        save_mask_like(result.allowed, volume, save_mask)
    if qc_png:
        qc_figure(_defaced_ras(volume.data, result), volume.zooms, png_path,
                  title=f"{out_path.name}: defaced ({options.method}, template {template.name})")
        record["qc_png"] = names.get("qc_png", str(png_path))
    record["timings_s"]["total_s"] = round(time.perf_counter() - start, 2)
    write_text(provenance_path, json.dumps(record, indent=2) + "\n")
    return record


def _defaced_ras(original: np.ndarray, result: DefaceResult) -> np.ndarray:
    out = original.copy()
    out[result.allowed] = result.data[result.allowed]
    return out
