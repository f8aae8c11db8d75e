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
written and :class:`isyb.deface.checked.BrainGuardError` is raised (the check
is :func:`isyb.deface.checked.deface_checked`, shared with the Python API).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from isyb.deface.checked import deface_checked
from isyb.deface.engine import Alignment, DefaceOptions, Defacing, SubjectMasks, align
from isyb.errors import IsybError
from isyb.io import (
    image_suffix,
    load_volume,
    save_mask_like,
    strip_image_suffix,
    write_stored,
    write_text,
)
from isyb.templates.registry import Template
from isyb.viz.render import qc_figure


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
                subject: SubjectMasks | None = None,
                recorded_as: dict[str, str] | None = None,
                stage: Callable[[str], None] | None = None) -> dict:
    """Deface ``in_path`` into ``out_path``; return the provenance record.

    ``provenance_path`` and ``png_path`` override the default names next to
    ``out_path`` (dataset mode puts them under ``derivatives/isyb``).
    ``alignment`` reuses a brain mask and registration of the same input, and
    ``subject`` its head and guard masks (:func:`isyb.deface.engine.subject_masks`).
    ``recorded_as`` gives the names the record uses for ``input``, ``output``
    and ``qc_png`` instead of the paths: dataset mode records them relative to
    the datasets, so that no local path (which can name a person or a site)
    ends up in a release. ``stage`` is told, in words, when each step starts
    (brain, registration, masking, writing): the command line shows them.
    """
    names = recorded_as or {}
    in_path, out_path = Path(in_path), Path(out_path)
    save_mask = Path(save_mask) if save_mask is not None else None
    check_paths(in_path, out_path, force=force, save_mask=save_mask)
    start = time.perf_counter()
    volume = load_volume(in_path)
    if alignment is None:
        alignment = align(volume, template, stage=stage)
    if stage:
        stage(f"masking: {options.method} of the face, then the brain-guard check")
    checked = deface_checked(volume, template, options, alignment=alignment, subject=subject)
    volume, result = checked.volume, checked.defacing
    default_json, default_png = sidecar_paths(out_path)
    provenance_path = Path(provenance_path) if provenance_path else default_json
    png_path = Path(png_path) if png_path else default_png
    report = replace(checked.report, input=names.get("input", str(in_path)),
                     output=names.get("output", str(out_path)))
    if stage:
        stage(f"writing: {out_path}")
    write_stored(checked.raw, volume, out_path)
    if save_mask is not None:
        save_mask_like(result.allowed, volume, save_mask)
    if qc_png:
        qc_figure(_defaced_ras(volume.data, result), volume.zooms, png_path,
                  title=f"{out_path.name}: defaced ({options.method}, template {template.name})")
        report = replace(report, qc_png=names.get("qc_png", str(png_path)))
    record = replace(report, total_s=round(time.perf_counter() - start, 2)).to_json()
    write_text(provenance_path, json.dumps(record, indent=2) + "\n")
    return record


def _defaced_ras(original: np.ndarray, result: Defacing) -> np.ndarray:
    out = original.copy()
    out[result.allowed] = result.data[result.allowed]
    return out
