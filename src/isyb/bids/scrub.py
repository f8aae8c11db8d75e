"""Metadata scrubbing: identifying keys out of JSON sidecars, NIfTI headers and scans.tsv.

A **policy** (JSON; the safe default ships as ``isyb/data/scrub_policy.json``)
says, per sidecar key, ``keep``, ``drop`` or ``shift``:

* ``fields`` names keys explicitly; an explicit entry always wins.
* ``drop_patterns`` are regular expressions (``re.search``) for keys not
  named in ``fields``: free text, names, UIDs and the private keys dcm2niix
  copies. Anything else is kept, so acquisition parameters that analyses need
  (``RepetitionTime``, ``PostLabelingDelay``, ``LabelingDuration``,
  ``M0Type``...) stay intact.
* ``shift`` moves a date or date-time by the subject's **offset**: a whole
  number of days in ``shift_days`` plus a number of seconds under one day,
  both drawn from HMAC-SHA256(secret key, subject label). The same subject
  always gets the same offset (intervals between its sessions are kept), a
  different subject another one, and nobody without the key can undo it. A
  time of day alone is shifted by the seconds part (modulo 24 h). A value
  that cannot be parsed as a date or time is dropped (it cannot be shown
  safely).
* ``nifti_header`` fields (``descrip``, ``aux_file``, ``db_name``,
  ``intent_name``) are cleared, and ``nifti_extensions: drop`` removes every
  header extension (where dcm2niix and scanners put DICOM text).
* ``scans_acq_time`` (``shift`` by default) applies to the ``acq_time`` column
  of ``scans.tsv``.

Every change is returned as a :class:`Change` so that the caller can write
``scrub_report.tsv``; the old value is never recorded there (the report is
part of the release).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from isyb.errors import IsybError

ACTIONS = ("keep", "drop", "shift")
REPORT_COLUMNS = ["file", "location", "key", "action", "detail"]


@dataclass(frozen=True)
class Change:
    """One change: in ``file`` (relative path), at ``location``, ``key`` got ``action``."""

    file: str
    location: str
    key: str
    action: str
    detail: str = ""


@dataclass(frozen=True)
class Policy:
    """A parsed scrubbing policy (see the module docstring)."""

    fields: dict[str, str]
    drop_patterns: tuple[re.Pattern, ...]
    nifti_header: dict[str, str]
    nifti_extensions: str
    scans_acq_time: str
    shift_days: tuple[int, int]
    source: str

    def action(self, key: str) -> str:
        """What the policy does to sidecar ``key``."""
        if key in self.fields:
            return self.fields[key]
        return "drop" if any(p.search(key) for p in self.drop_patterns) else "keep"


def default_policy_path() -> Path:
    return Path(str(resources.files("isyb") / "data" / "scrub_policy.json"))


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and check a policy file (default: the one shipped with isyb)."""
    path = Path(path) if path is not None else default_policy_path()
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise IsybError(f"{path}: cannot read the scrubbing policy ({exc})") from None
    fields = raw.get("fields", {})
    bad = {k: v for k, v in fields.items() if v not in ACTIONS}
    if bad:
        raise IsybError(f"{path}: unknown action(s) {bad}; use keep, drop or shift")
    header = raw.get("nifti_header", {})
    if any(v not in ("clear", "keep") for v in header.values()):
        raise IsybError(f"{path}: nifti_header actions must be clear or keep")
    extensions, acq = raw.get("nifti_extensions", "drop"), raw.get("scans_acq_time", "shift")
    if extensions not in ("drop", "keep") or acq not in ACTIONS:
        raise IsybError(f"{path}: nifti_extensions must be drop|keep and scans_acq_time "
                        "keep|drop|shift")
    low, high = (int(v) for v in raw.get("shift_days", (-3650, -365)))
    if low > high:
        raise IsybError(f"{path}: shift_days must be [low, high] with low <= high")
    try:
        patterns = tuple(re.compile(p) for p in raw.get("drop_patterns", ()))
    except re.error as exc:
        raise IsybError(f"{path}: bad drop pattern ({exc})") from None
    return Policy(dict(fields), patterns, dict(header), extensions, acq, (low, high), str(path))


def subject_offset(key: bytes, subject: str, shift_days: tuple[int, int]) -> dt.timedelta:
    """The subject's secret, reproducible date shift (whole days plus seconds under a day)."""
    digest = hmac.new(key, subject.encode(), hashlib.sha256).digest()
    low, high = shift_days
    days = low + int.from_bytes(digest[:8], "big") % (high - low + 1)
    seconds = int.from_bytes(digest[8:16], "big") % 86400
    return dt.timedelta(days=days, seconds=seconds)


_TIME = re.compile(r"^(\d{1,2}):(\d{1,2}):(\d{1,2})(?:\.(\d+))?$")


def shift_value(value: Any, offset: dt.timedelta) -> str | None:
    """``value`` (ISO date, date-time, DICOM ``YYYYMMDD``, or ``HH:MM:SS[.f]``) moved by
    ``offset``, in the same form; None when it is not a date or time."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    match = _TIME.match(text)
    if match:
        hours, minutes, seconds = (int(g) for g in match.groups()[:3])
        fraction = match.group(4) or ""
        if hours > 23 or minutes > 59 or seconds > 60:
            return None
        total = (hours * 3600 + minutes * 60 + seconds + offset.seconds) % 86400
        out = f"{total // 3600:02d}:{total % 3600 // 60:02d}:{total % 60:02d}"
        return f"{out}.{fraction}" if fraction else out
    if re.fullmatch(r"\d{8}", text):
        try:
            return (dt.datetime.strptime(text, "%Y%m%d") + dt.timedelta(days=offset.days)
                    ).strftime("%Y%m%d")
        except ValueError:
            return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    if "T" not in text and " " not in text:  # a date only: move it by whole days
        return (parsed + dt.timedelta(days=offset.days)).date().isoformat()
    shifted = parsed + offset
    return shifted.isoformat(timespec="microseconds" if "." in text else "seconds")


def scrub_sidecar(metadata: dict, policy: Policy, offset: dt.timedelta, file: str, *,
                  prefix: str = "") -> tuple[dict, list[Change]]:
    """A scrubbed copy of a JSON sidecar and the changes made.

    Nested objects (some converters keep the DICOM header under keys such as
    ``global/const``) and lists of objects are scrubbed with the same rules;
    a change's ``key`` is then the path, e.g. ``global/const/StudyTime``.
    """
    out, changes = {}, []
    for key, value in metadata.items():
        path = f"{prefix}{key}"
        action = policy.action(key)
        if action == "keep":
            out[key], inner = _scrub_nested(value, policy, offset, file, f"{path}/")
            changes.extend(inner)
        elif action == "shift":
            moved = shift_value(value, offset)
            if moved is None:
                changes.append(Change(file, "json", path, "drop", "not a date or time"))
            else:
                out[key] = moved
                changes.append(Change(file, "json", path, "shift", "subject offset"))
        else:
            changes.append(Change(file, "json", path, "drop"))
    return out, changes


def _scrub_nested(value: Any, policy: Policy, offset: dt.timedelta, file: str,
                  prefix: str) -> tuple[Any, list[Change]]:
    if isinstance(value, dict):
        return scrub_sidecar(value, policy, offset, file, prefix=prefix)
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        items, changes = [], []
        for item in value:
            clean, inner = _scrub_nested(item, policy, offset, file, prefix)
            items.append(clean)
            changes.extend(inner)
        return items, changes
    return value, []


def scrub_header(image: nib.Nifti1Image, policy: Policy, file: str) -> list[Change]:
    """Clear the policy's NIfTI header fields and extensions of ``image`` in place."""
    changes = []
    header = image.header
    for field, action in policy.nifti_header.items():
        if action != "clear" or field not in header:
            continue
        current = np.asarray(header[field]).tobytes().strip(b"\x00 ")
        if current:
            header[field] = b""
            changes.append(Change(file, "nifti_header", field, "clear"))
    if policy.nifti_extensions == "drop" and len(header.extensions):
        codes = ",".join(str(int(e.get_code())) for e in header.extensions)
        header.extensions.clear()
        changes.append(Change(file, "nifti_header", "extensions", "drop", f"codes {codes}"))
    return changes


def scrub_nifti_file(source: Path, target: Path, policy: Policy, file: str) -> list[Change]:
    """Copy ``source`` to ``target`` with a scrubbed header; voxel bytes and scaling unchanged.

    Returns the changes; when there are none the caller may copy the file as is.
    """
    from isyb.io import atomic_path, stored_data

    image = nib.load(str(source))
    if not isinstance(image, nib.Nifti1Image):
        raise IsybError(f"{source}: header scrubbing needs a NIfTI-1/2 image")
    changes = scrub_header(image, policy, file)
    if not changes:
        return changes
    raw, slope, inter = stored_data(image)
    header = image.header.copy()
    clean = type(image)(raw, image.affine, header)
    clean.header.set_slope_inter(slope, inter)
    with atomic_path(target) as tmp:
        clean.to_filename(str(tmp))
    return changes


def scrub_scans_table(table, policy: Policy, offset: dt.timedelta, file: str):
    """A copy of a ``scans.tsv`` table (pandas) with ``acq_time`` per the policy."""
    if "acq_time" not in table.columns or policy.scans_acq_time == "keep":
        return table, []
    out = table.copy()
    if policy.scans_acq_time == "drop":
        return out.drop(columns="acq_time"), [Change(file, "tsv", "acq_time", "drop")]
    changes = []
    values = []
    for value in out["acq_time"]:
        if not isinstance(value, str) or value in ("", "n/a"):
            values.append(value)
            continue
        moved = shift_value(value, offset)
        values.append(moved if moved is not None else "n/a")
        changes.append(Change(file, "tsv", "acq_time", "shift" if moved else "drop",
                              "subject offset" if moved else "not a date or time"))
    out["acq_time"] = values
    return out, changes


def _subject_of(relative: Path) -> str | None:
    first = relative.parts[0] if relative.parts else ""
    return first if first.startswith("sub-") else None


def scrub_in_place(root: Path, files: list[Path], policy: Policy, key: bytes) -> list[Change]:
    """Scrub the JSON sidecars, NIfTI headers and ``scans.tsv``/``sessions.tsv`` among
    ``files`` (paths relative to the dataset ``root``), rewriting them atomically.

    Files under ``sub-<label>/`` use that subject's offset; top-level files use
    the offset of the label ``dataset``.
    """
    import pandas as pd

    from isyb.io import write_text

    changes: list[Change] = []
    for relative in files:
        path = root / relative
        offset = subject_offset(key, _subject_of(relative) or "dataset", policy.shift_days)
        name = relative.as_posix()
        if path.name.endswith(".json") and path.name != "dataset_description.json":
            try:
                metadata = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise IsybError(f"{path}: cannot be read as JSON ({exc})") from None
            if not isinstance(metadata, dict):
                continue
            clean, found = scrub_sidecar(metadata, policy, offset, name)
            if found:
                write_text(path, json.dumps(clean, indent=2) + "\n")
                changes.extend(found)
        elif path.name.endswith((".nii", ".nii.gz")):
            changes.extend(scrub_nifti_file(path, path, policy, name))
        elif path.name.endswith(("_scans.tsv", "_sessions.tsv")):
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
            clean, found = scrub_scans_table(table, policy, offset, name)
            if found:
                write_text(path, clean.to_csv(sep="\t", index=False))
                changes.extend(found)
    return changes


def find_leaks(root: Path, policy: Policy, needles: tuple[str, ...] = ()) -> list[str]:
    """Every place under ``root`` where a key the policy drops, or one of ``needles``, remains.

    Looks at the keys of every JSON file (nested keys too) and the values as
    text, and at every NIfTI header field and extension. Returns readable
    findings; an empty list means clean. Used by the release check and the
    tests.
    """
    findings = []
    lowered = tuple(n.lower() for n in needles)

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if policy.action(k) == "drop":
                    findings.append(f"{where}: key {k}")
                walk(v, f"{where}/{k}")
        elif isinstance(value, list):
            for item in value:
                walk(item, where)
        elif any(n in str(value).lower() for n in lowered):
            findings.append(f"{where}: planted value")

    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(root).as_posix()
        if path.name.endswith(".json") and path.name != "dataset_description.json":
            try:
                walk(json.loads(path.read_text()), relative)
            except json.JSONDecodeError:
                findings.append(f"{relative}: not JSON")
        elif path.name.endswith((".nii", ".nii.gz")):
            header = nib.load(str(path)).header
            text = header.binaryblock + b"".join(e.get_content() if isinstance(
                e.get_content(), bytes) else str(e.get_content()).encode()
                for e in header.extensions)
            for field, action in policy.nifti_header.items():
                if action == "clear" and field in header and \
                        np.asarray(header[field]).tobytes().strip(b"\x00 "):
                    findings.append(f"{relative}: header {field}")
            if policy.nifti_extensions == "drop" and len(header.extensions):
                findings.append(f"{relative}: header extensions")
            findings.extend(f"{relative}: planted value in header" for n in lowered
                            if n.encode() in text.lower())
        elif path.suffix in (".tsv", ".txt", ".md", ".html") or path.name in ("README",
                                                                              "CHANGES"):
            content = path.read_text(errors="replace").lower()
            findings.extend(f"{relative}: planted value" for n in lowered if n in content)
    return findings
