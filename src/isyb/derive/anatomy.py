"""The subject's anatomy for ``isyb derive``: images in RAS, brain, tissues, normalisation.

Template space needs the subject's T1w: brain (deepbet,
:func:`isyb.head.brain.extract_brain`), tissues
(:func:`isyb.head.tissue.segment_tissues`) and normalisation to the template
(:func:`isyb.derive.normalize.normalize`). Brain and tissues are cached in
``WORK_DIR/sub-<label>/t1w_tissues.npz``, the normalisation in
``WORK_DIR/sub-<label>/normalize/``; reruns reuse them.

The normalisation runs on one ITK thread, the only way ANTs' registration is
reproducible, and the segmentation and DiReCT on the task's threads: ITK keeps
one thread count per process, so the registration runs in the one-thread
helper process of :func:`isyb.head.ants.submit_one_itk_thread` while this
process segments (:func:`segment_and_normalize`).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from isyb import __version__
from isyb.bids.layout import file_stamp
from isyb.derive.options import DeriveInputError, DeriveOptions
from isyb.errors import IsybError
from isyb.io import atomic_path


def load_ras(path: Path, *,
             allow_4d: bool = True) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """A 3-D or 4-D image as a float32 RAS array, its RAS affine and its original header."""
    from isyb.io import load_image

    image = load_image(path, allow_4d=allow_4d)
    canonical = nib.as_closest_canonical(image)
    try:
        data = np.asarray(canonical.dataobj, dtype=np.float32)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise DeriveInputError(f"{path}: the image data cannot be read (truncated or "
                               f"corrupt file: {exc})") from None
    if not np.all(np.isfinite(data)):
        raise DeriveInputError(f"{path.name}: the image holds NaN or infinite values")
    return data, canonical.affine, image.header


def save_map(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a float32 map (RAS) atomically."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)
    image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        image.to_filename(str(tmp))


@dataclass
class Anatomy:
    """The subject's T1w in RAS with its brain, tissue labels and normalisation.

    ``seconds`` holds the wall time (s) of the steps that ran (none when cached).
    """

    data: np.ndarray
    affine: np.ndarray
    brain: np.ndarray
    labels: np.ndarray
    normalization: object
    seconds: dict = field(default_factory=dict)
    _points: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def template_points(self, template) -> np.ndarray:
        """:func:`isyb.derive.normalize.template_points` of this normalisation on
        ``template``'s grid (read-only), composed once per subject and template: the
        BOLD, DWI, ASL and thickness maps of a subject all go through the same points."""
        from isyb.derive.normalize import template_points

        key = (template.shape, np.asarray(template.affine, dtype=float).tobytes())
        if key not in self._points:
            points = template_points(self.normalization, template)
            points.setflags(write=False)
            self._points[key] = points
        return self._points[key]

    def tissue(self, *names: str) -> np.ndarray:
        """The boolean mask of the tissues ``names`` (``"csf"``, ``"gm"``, ``"wm"``)."""
        from isyb.head.tissue import CSF, GM, WM

        codes = {"csf": CSF, "gm": GM, "wm": WM}
        return np.isin(self.labels, [codes[n] for n in names])


def segment_and_normalize(data: np.ndarray, affine: np.ndarray, brain: np.ndarray, template,
                          folder: Path, kind: str) -> tuple[np.ndarray, object]:
    """The T1w's tissue labels (:func:`isyb.head.tissue.segment_tissues`) and its
    normalisation to ``template`` (:func:`isyb.derive.normalize.normalize`, kept in
    ``folder``), side by side.

    ITK starts here at the task's thread count (:func:`isyb.head.ants.start_itk`), so
    DiReCT uses it later; with more than one thread the registration runs meanwhile in
    the one-thread helper process. On 2 cores colin27's segmentation (numpy N4 and
    Atropos, about 3 CPU s) and SyN (about 10 CPU s) take 10.5-10.9 s side by side
    (``benchmarks/README.md``).
    """
    from isyb.derive.normalize import normalize
    from isyb.head.ants import registered, start_itk, submit_one_itk_thread
    from isyb.head.tissue import segment_tissues

    start_itk()
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    pending = submit_one_itk_thread(normalize, data, affine, brain, template, folder, kind=kind)
    labels = segment_tissues(data, brain, zooms)
    return labels, registered(pending)


def subject_anatomy(t1w: Path, work: Path, template, options: DeriveOptions) -> Anatomy:
    """Brain, tissues and normalisation of the subject's T1w, from ``work`` when cached.

    ``seconds``: ``brain_and_tissues`` (deepbet, then the segmentation side by side
    with the normalisation) and ``normalization`` (what it took after the tissues, or
    all of it when the tissues came from the cache).
    """
    from isyb.derive.normalize import normalize
    from isyb.head.ants import start_itk
    from isyb.head.brain import extract_brain
    from isyb.io import cached_arrays

    data, affine, _ = load_ras(t1w, allow_4d=False)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    seconds: dict[str, float] = {}
    stamp = f"{file_stamp(t1w)}|{__version__}"
    found: dict[str, object] = {}

    def tissues() -> dict[str, np.ndarray]:
        start = time.perf_counter()
        brain = extract_brain(data, zooms)
        labels, found["normalization"] = segment_and_normalize(
            data, affine, brain, template, work / "normalize", options.normalization)
        seconds["brain_and_tissues"] = time.perf_counter() - start
        return {"brain": brain, "labels": labels}

    arrays = cached_arrays(work / "t1w_tissues.npz", stamp, tissues)
    brain, labels = arrays["brain"].astype(bool), arrays["labels"]
    start = time.perf_counter()
    start_itk()
    normalization = found.get("normalization") or normalize(
        data, affine, brain, template, work / "normalize", kind=options.normalization)
    seconds["normalization"] = time.perf_counter() - start
    return Anatomy(data, affine, brain, labels, normalization, seconds)


class AnatomySource:
    """The subject's :class:`Anatomy`, computed on first use (a run with bad input fails first).

    ``get()`` returns None when the subject has no T1w or its anatomy failed;
    ``error`` then says why.
    """

    def __init__(self, t1w: Path | None, work: Path, template, options: DeriveOptions):
        self.t1w, self.work, self.template, self.options = t1w, work, template, options
        self.anatomy: Anatomy | None = None
        self.error: str | None = None
        self._tried = False

    def get(self) -> Anatomy | None:
        if not self._tried and self.t1w is not None:
            self._tried = True
            try:
                self.anatomy = subject_anatomy(self.t1w, self.work, self.template, self.options)
            except IsybError as exc:
                self.error = str(exc)
        return self.anatomy


def tissue_in(anatomy: Anatomy, name: str, shape: tuple[int, ...], affine: np.ndarray,
              pre: np.ndarray) -> np.ndarray:
    """A T1w tissue mask brought into a run's grid (nearest neighbour).

    ``pre`` is the run's coregistration (T1w RAS mm -> run RAS mm,
    :func:`isyb.derive.normalize.coregister`).
    """
    from isyb.derive.normalize import to_space

    mask = anatomy.tissue(name).astype(np.float32)
    return to_space(mask, anatomy.affine, shape, affine, pre, order=0) > 0.5


def load_template(options: DeriveOptions):
    """The normalisation template: nilearn's symmetric ICBM 2009a, or ``options.template``.

    A user template is a skull-stripped T1w (brain > 0) in RAS mm. With VMHC
    among the metrics it must be left-right symmetric
    (:func:`isyb.derive.vmhc.check_symmetric`).
    """
    from isyb.derive.normalize import TemplateImages, normalization_template
    from isyb.derive.vmhc import check_symmetric

    if options.template is None:
        template = normalization_template()
    else:
        data, affine, _ = load_ras(Path(options.template), allow_4d=False)
        brain = data > 0
        if not brain.any():
            raise DeriveInputError(f"{options.template}: the template holds no brain (> 0)")
        empty = np.zeros(data.shape, dtype=np.float32)
        spacing = round(float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).max()))
        template = TemplateImages(data, brain, empty, empty, empty, affine,
                                  resolution_mm=max(1, spacing))
    if "vmhc" in options.metrics:
        check_symmetric(template.head, template.affine, mask=template.brain_mask)
    return template
