"""The release gate: the last check before a release is declared complete.

A release is published only when every file in it is accounted for. The gate
runs at the end of the group level (:func:`isyb.app.release.release_group`) over
the whole output folder and checks:

1. **Where each image comes from.** Every image file (NIfTI or MGZ, any case of
   the extension) is one isyb wrote, whose SHA-256 the participant level
   recorded in the work folder's manifest (:func:`subject_outputs`) or which the
   group level of this run wrote; or it is a copy the release policy allows
   (:func:`allowed_copies`). Anything else is a violation: an image isyb did not
   write may be an undefaced head.
2. **The brain guard.** Every anatomical image (under a subject's ``anat/``) has a
   deface record (``derivatives/isyb/logs/sub-<label>.json``) that says it was
   defaced and that no voxel inside the brain guard changed.
3. **Face renders.** Each released anatomical image is rendered from the front
   and given to isyb's face detector (:func:`isyb.viz.faces.face_detected`). A
   face is listed for review; with ``strict`` it is a violation. Each single-volume
   reference copied without defacing (sbref, m0scan, field-map magnitude...,
   :mod:`isyb.app.references`) is rendered too: a face there, or a reference that
   cannot be rendered, is always a violation. The detector is a safety net, not a
   proof: it misses cropped and profile faces.
4. **Pictures.** Every PNG and JPEG file, and every PNG or JPEG embedded base64 in
   an HTML or SVG file, goes to the detector. A face is a violation, and so is a
   picture that does not decode (it could not be checked). An SVG without an
   embedded raster is a vector drawing (plots) and is counted as such.

Any violation fails the group level (exit 1) and marks the release incomplete in
``release_summary.json``; the files are named there and on stderr.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isyb.bids.classify import ReleasePolicy, classify_dataset, load_release_policy
from isyb.bids.layout import DERIVATIVES, is_image
from isyb.templates.fetch import sha256_file

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
DOCUMENT_SUFFIXES = (".html", ".htm", ".svg")


def allowed_copies(out_dir: Path, policy: ReleasePolicy | None = None, *,
                   predefaced: Collection[str] = ()) -> set[str]:
    """Release paths of the images the release policy lets be plain copies (with
    the anatomical images of the ``predefaced`` subjects too: ``--skip deface`` copies them
    as they are).

    The released subjects are classified by :mod:`isyb.bids.classify` under the same
    policy the participant level used (``None``: isyb's default): an image is an allowed
    copy only where its datatype, suffix *and* content pass (a single 3-D volume under a
    ``bold`` name is withheld there, and so is not a copy here).
    """
    policy = policy or load_release_policy()
    subjects = sorted(p.name[4:] for p in out_dir.glob("sub-*") if p.is_dir())
    return {item.relative for item in classify_dataset(out_dir, policy, subjects)
            if is_image(Path(item.relative)) and (item.kind == "copy" or (
                item.kind == "deface" and _subject(item.relative) in predefaced))}


def _subject(relative: str) -> str:
    """The label of the subject a release path belongs to (``""`` outside ``sub-*``)."""
    first = relative.split("/", 1)[0]
    return first[4:] if first.startswith("sub-") else ""


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image(p))


def subject_outputs(out_dir: Path, subject: str) -> dict[str, str]:
    """SHA-256 of the images isyb wrote for one subject, by path in the release.

    These are the anatomical images its deface record lists as defaced and every
    image under ``derivatives/isyb/sub-<label>`` (masks, derived maps), taken
    after the last step that writes them. The participant level stores them in
    the subject's manifest; the gate compares the released files against them.
    """
    wanted = [out_dir / item["file"] for item in _deface_images(out_dir, subject)
              if item.get("status") == "ok"]
    wanted += _images(out_dir / DERIVATIVES / f"sub-{subject}")
    return {p.relative_to(out_dir).as_posix(): sha256_file(p) for p in wanted if p.is_file()}


def image_stamps(out_dir: Path) -> dict[str, tuple[int, int]]:
    """Size and modification time of every image of the release, to tell afterwards
    which images a step wrote (:func:`run_gate`'s ``written``)."""
    return {p.relative_to(out_dir).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in _images(out_dir)}


def written_since(out_dir: Path, before: dict[str, tuple[int, int]]) -> set[str]:
    """Images that are new or rewritten since the stamps ``before`` were taken."""
    return {name for name, stamp in image_stamps(out_dir).items() if before.get(name) != stamp}


def _deface_images(out_dir: Path, subject: str) -> list[dict[str, Any]]:
    path = out_dir / DERIVATIVES / "logs" / f"sub-{subject}.json"
    try:
        return list(json.loads(path.read_text()).get("images", []))
    except (OSError, ValueError, AttributeError):
        return []


@dataclass
class GateReport:
    """What the gate found. ``violations`` and ``review`` are ``{"file", "reason"}``
    entries (paths relative to the release); ``checked`` counts what was looked at."""

    violations: list[dict[str, str]] = field(default_factory=list)
    review: list[dict[str, str]] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "violations": self.violations,
                "review": self.review, "checked": self.checked}


def run_gate(out_dir: Path, recorded: dict[str, str], *, written: Iterable[str] = (),
             strict: bool = False, render_faces: bool = True,
             policy: ReleasePolicy | None = None,
             predefaced: Collection[str] = ()) -> GateReport:
    """Check the release in ``out_dir`` (see the module docstring).

    ``recorded`` maps release paths to the SHA-256 the participant level recorded
    (:func:`subject_outputs` of every subject); ``written`` names the images the
    group level wrote in this run. ``strict`` makes a face on a render of a
    released anatomical image a violation instead of an item for review.
    ``render_faces=False`` leaves out check 3 (the renders). ``policy`` is the release
    policy (``None``: isyb's default) that says which images may be plain copies.
    ``predefaced``: labels of the subjects whose participant level ran with ``--skip
    deface`` (the user says their data are already defaced): their anatomical images need
    no deface record, must be ones the policy allows, and are listed for review as
    released without defacing.
    """
    report = GateReport()
    written = set(written)
    copies = allowed_copies(out_dir, policy, predefaced=predefaced)
    anatomical = _check_images(out_dir, recorded, written, copies, set(predefaced), report)
    if render_faces:
        _check_renders(out_dir, anatomical, strict, report)
        _check_references(out_dir, policy or load_release_policy(), report)
    _check_pictures(out_dir, report)
    return report


def _check_images(out_dir: Path, recorded: dict[str, str], written: set[str],
                  copies: set[str], predefaced: set[str], report: GateReport) -> list[Path]:
    guard = {}
    for folder in sorted(out_dir.glob("sub-*")):
        for item in _deface_images(out_dir, folder.name[4:]):
            guard[item.get("file")] = item
    anatomical = []
    images = _images(out_dir)
    for path in images:
        name = path.relative_to(out_dir).as_posix()
        is_anat = name.startswith("sub-") and "anat" in path.relative_to(out_dir).parts[1:-1]
        as_it_was = _subject(name) in predefaced
        if is_anat and as_it_was:
            anatomical.append(path)
            report.review.append({"file": name, "reason": "released as it was, not defaced by "
                                  "isyb (--skip deface)"})
        elif is_anat:
            anatomical.append(path)
            entry = guard.get(name, {})
            check = entry.get("provenance", {}).get("brain_guard", {})
            if entry.get("status") != "ok" or not check.get("passed") \
                    or check.get("changed_voxels_in_guard") != 0:
                report.violations.append({"file": name, "reason": "anatomical image without "
                                          "a passed brain-guard check in its deface record"})
                continue
        if name in written or (name in recorded and recorded[name] == sha256_file(path)):
            continue
        if (as_it_was or not is_anat) and name in copies:
            continue
        reason = "content differs from the one isyb wrote" if name in recorded else \
            "image isyb did not write and the policy does not allow"
        report.violations.append({"file": name, "reason": reason})
    report.checked["images"] = len(images)
    return anatomical


def _check_renders(out_dir: Path, anatomical: list[Path], strict: bool,
                   report: GateReport) -> None:
    from isyb.io import load_volume
    from isyb.viz.faces import face_detected

    for path in anatomical:
        name = path.relative_to(out_dir).as_posix()
        volume = load_volume(path)
        if face_detected(volume.data, volume.zooms)["detected"]:
            entry = {"file": name, "reason": "isyb's face detector found a face on a render"}
            (report.violations if strict else report.review).append(entry)
    report.checked["anatomical_renders"] = len(anatomical)


def _check_references(out_dir: Path, policy: ReleasePolicy, report: GateReport) -> None:
    """Check 3 for the single-volume references copied without defacing
    (:mod:`isyb.app.references`): a face, or a reference that cannot be rendered, is a
    violation whatever ``strict`` says (the participant level withholds them)."""
    from isyb.app.references import face_check, reference_images

    references = [path for folder in sorted(out_dir.glob("sub-*")) if folder.is_dir()
                  for path in reference_images(out_dir, folder.name[4:], policy)]
    for path in references:
        reason = face_check(path)
        if reason is not None:
            report.violations.append({"file": path.relative_to(out_dir).as_posix(),
                                      "reason": reason})
    report.checked["reference_renders"] = len(references)


def _check_pictures(out_dir: Path, report: GateReport) -> None:
    from isyb.viz.faces import embedded_pictures, picture_faces

    pictures = vector = 0
    for path in sorted(p for p in out_dir.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in PICTURE_SUFFIXES:
            found = [picture_faces(path.read_bytes())]
        elif suffix in DOCUMENT_SUFFIXES:
            found = [picture_faces(png) for png in embedded_pictures(path.read_bytes())]
            vector += suffix == ".svg" and not found
        else:
            continue
        pictures += len(found)
        name = path.relative_to(out_dir).as_posix()
        if any(faces is None for faces in found):
            report.violations.append({"file": name, "reason": "picture that cannot be decoded "
                                      "(not checked for faces)"})
        elif any(found):
            report.violations.append({"file": name, "reason": "isyb's face detector found a "
                                      "face in a picture"})
    report.checked["pictures"] = pictures
    report.checked["vector_svg"] = vector
