"""Single-volume references with a face: withheld from the release, never copied as they are.

The release policy lets low-resolution references be copied without defacing: its
``single_volume`` suffixes (``sbref``, ``m0scan``, the field maps' ``magnitude``,
``magnitude1``, ``magnitude2``, ``epi``...). Such an image can still be a whole-head
volume with a face: a gradient-echo field-map magnitude usually is. isyb does not deface
these (a T1w template's registration is unreliable on distorted, low-contrast EPI and
GRE references, and defacing would change images that field-map correction reads
voxel by voxel). It fails closed instead, as a careful pydeface user who defaces the
anatomical images and checks the rest:

* every released image of a ``single_volume`` suffix (its first volume, for a 4-D one)
  is rendered from the front and given to isyb's face detector
  (:func:`isyb.viz.faces.face_detected`, the release gate's renderer and detector);
* an image with a face, or one that cannot be read and rendered, is **withheld**, with
  its sidecar, and its row is dropped from the subject's ``scans.tsv``; the release
  lists it in ``WORK_DIR/withheld.tsv`` and counts it in ``release_summary.json``.

The gate (:mod:`isyb.app.gate`) renders the released references again at the group
level, and a face there is a violation whatever ``--strict`` says. The detector is a
safety net: it misses cropped and profile faces. A dataset whose references must be
released whole should deface them first and be released with ``--skip deface``
(the gate still checks them).
"""

from __future__ import annotations

import logging
from pathlib import Path

from isyb.bids.classify import ReleasePolicy, filter_scans, split_name
from isyb.bids.layout import parse_entities
from isyb.errors import IsybError
from isyb.image_checks import check_values
from isyb.io import load_image, volume_from_image, write_text

#: Reasons a reference is withheld (``withheld.tsv``, the summary's counts).
FACE = "single-volume reference with a face on a render (not defaced)"
UNCHECKED = "single-volume reference that cannot be checked for a face"

log = logging.getLogger(__name__)


def reference_images(root: Path, subject: str, policy: ReleasePolicy) -> list[Path]:
    """The NIfTI images of ``root/sub-<subject>`` whose suffix is a ``single_volume`` one
    of ``policy`` and that are not in ``anat/`` (those are defaced)."""
    folder = root / f"sub-{subject}"
    found = []
    for path in sorted(folder.rglob("*")) if folder.is_dir() else ():
        stem, extension = split_name(path.name)
        if path.is_file() and extension in (".nii", ".nii.gz") and path.parent.name != "anat" \
                and parse_entities(stem)[1] in policy.single_volume:
            found.append(path)
    return found


def face_check(path: Path) -> str | None:
    """``None`` when the detector finds no face on the renders of ``path`` (its first
    volume), else the reason to withhold it (:data:`FACE`, or :data:`UNCHECKED` when the
    image cannot be read or rendered: fail closed)."""
    from isyb.viz.faces import face_detected

    try:
        img = load_image(path)
        if len(img.shape) > 3:
            img = img.slicer[..., 0]
        volume = volume_from_image(img)
        check_values(volume.data, path)
        found = face_detected(volume.data, volume.zooms)["detected"]
    except (IsybError, OSError, ValueError, EOFError) as exc:
        log.warning("%s: cannot be checked for a face (%s); withheld", path, exc)
        return UNCHECKED
    return FACE if found else None


def withhold_faces(root: Path, subject: str, policy: ReleasePolicy) -> list[dict[str, str]]:
    """Remove from ``root`` (a staged subject, laid out as the release) every reference
    image of ``subject`` with a face (:func:`face_check`), with its JSON sidecar, and its
    row from the ``scans.tsv`` tables. Returns ``{"path", "reason"}`` entries, paths
    relative to ``root``, for ``withheld.tsv``."""
    withheld = []
    for image in reference_images(root, subject, policy):
        reason = face_check(image)
        if reason is None:
            continue
        relative = image.relative_to(root).as_posix()
        image.unlink()
        sidecar = image.with_name(split_name(image.name)[0] + ".json")
        if sidecar.is_file():
            sidecar.unlink()
        withheld.append({"path": relative, "reason": reason})
        log.warning("%s: withheld (%s)", relative, reason)
    if withheld:
        _drop_scans_rows(root, subject, {w["path"] for w in withheld})
    return withheld


def _drop_scans_rows(root: Path, subject: str, gone: set[str]) -> None:
    """Rewrite the subject's ``scans.tsv`` tables without the rows of the files ``gone``."""
    for table in sorted((root / f"sub-{subject}").rglob("*_scans.tsv")):
        folder = table.parent.relative_to(root).as_posix()
        present = {p.relative_to(root).as_posix(): p.relative_to(root).as_posix()
                   for p in table.parent.rglob("*") if p.is_file()}
        kept = {k: v for k, v in present.items() if k not in gone}
        text = table.read_text(errors="replace")
        filtered = filter_scans(text, folder, kept)
        if filtered != text:
            write_text(table, filtered)
