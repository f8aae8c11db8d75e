"""Metadata scrubbing by allow-list: JSON sidecars, tables and NIfTI headers.

A **policy** (JSON; the safe default ships as ``isyb/data/scrub_policy.json``,
with the source of its lists) says what may stay; everything else goes:

* Sidecar keys listed in ``keep`` or ``keep_dcm2niix`` (acquisition
  parameters: the BIDS schema's MRI metadata fields, less the identifying
  ones, plus dcm2niix's) are kept; keys in ``shift`` (dates) are moved by
  the subject's offset; **any other key is dropped**, at any depth (a
  ``global`` object, ``Events[].What``, ``patient_name`` all go with the
  key that holds them). Strings inside a kept value (arrays, objects) are
  checked like the rest.
* Kept ``free_text`` fields (``SeriesDescription``, ``ProtocolName``,
  ``TaskName``...) are **redacted** (replaced by ``[redacted]``) when they
  hold a name, date, phone number, ID or e-mail address
  (:func:`isyb.bids.identifiers.pattern_hits`); any kept string is redacted
  when it holds one of the dataset's own identifying values (``needles``,
  see :mod:`isyb.bids.leaks`).
* Tables keep only the ``columns`` listed for their kind (``participants``,
  ``scans``, ``sessions``, ``events``, ``aslcontext``; a table of another
  kind keeps none); the JSON that describes a table keeps the same keys.
  ``scans_acq_time`` (``shift`` by default) applies to ``acq_time``.
* ``shift`` moves a date or date-time by the subject's **offset**: a whole
  number of days in ``shift_days`` plus a number of seconds under one day,
  both drawn from HMAC-SHA256(secret key, subject label). The same subject
  always gets the same offset (intervals between its sessions are kept), a
  different subject another one, and nobody without the key can undo it. A
  time of day alone is shifted by the seconds part (modulo 24 h). A value
  that cannot be parsed as a date or time is dropped (it cannot be shown
  safely).
* ``nifti_header`` fields (``descrip``, ``aux_file``, ``db_name``,
  ``intent_name``) are cleared, and so is every other header field that can
  carry content (any text field, ANALYZE's unused numbers: :func:`header_content`)
  unless the policy lists it as ``keep``; ``nifti_extensions: drop`` removes
  every header extension (where dcm2niix and scanners put DICOM text); bytes
  before or after the data and the gzip header's name, comment and time are
  dropped (:mod:`isyb.bids.nifti_bytes`).
* A key of a kept JSON object that holds identifying text is dropped with its
  entry, and so is a whole number equal to one of the dataset's identifying
  values (an ID kept as a number). A table must be rectangular and a JSON
  file one object naming each key once (:func:`isyb.bids.classify.unscrubbable`
  withholds the others).

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

from isyb.bids.identifiers import REDACTED, Needles, pattern_hits
from isyb.bids.layout import parse_json, read_policy, read_table
from isyb.bids.nifti_bytes import header_content, outside_the_image
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
    free_text: frozenset[str]
    columns: dict[str, tuple[str, ...]]
    nifti_header: dict[str, str]
    nifti_extensions: str
    scans_acq_time: str
    shift_days: tuple[int, int]
    source: str

    def action(self, key: str) -> str:
        """What the policy does to sidecar ``key``: keep, shift, or (not listed) drop."""
        return self.fields.get(key, "drop")


def default_policy_path() -> Path:
    return Path(str(resources.files("isyb") / "data" / "scrub_policy.json"))


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and check a policy file (default: the one shipped with isyb)."""
    path, raw = read_policy(path, "scrub_policy.json", "scrubbing policy")
    if not isinstance(raw, dict) or raw.get("version") != 2:
        raise IsybError(f"{path}: not a version 2 (allow-list) scrubbing policy; list the keys "
                        "to keep under 'keep' (see isyb's own policy)")
    lists = {name: raw.get(name, []) for name in ("keep", "keep_dcm2niix", "shift",
                                                   "free_text")}
    columns = raw.get("columns", {})
    if not all(isinstance(v, list) and all(isinstance(k, str) for k in v)
               for v in [*lists.values(), *columns.values()]):
        raise IsybError(f"{path}: keep, keep_dcm2niix, shift, free_text and each of columns "
                        "must be lists of names")
    fields = {key: "keep" for key in lists["keep"] + lists["keep_dcm2niix"]}
    fields.update({key: "shift" for key in lists["shift"]})
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
    return Policy(fields, frozenset(lists["free_text"]),
                  {kind: tuple(names) for kind, names in columns.items()}, dict(header),
                  extensions, acq, (low, high), str(path))


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
                  needles: Needles | None = None) -> tuple[dict, list[Change]]:
    """A scrubbed copy of a JSON sidecar and the changes made.

    A key the policy does not list is dropped with everything under it; the
    strings inside a kept value (arrays, objects, at any depth) are redacted
    when they hold an identifying pattern (``free_text`` keys) or one of
    ``needles``. A change's ``key`` is the path, e.g. ``SliceTiming/3``.
    """
    out, changes = {}, []
    for key, value in metadata.items():
        action = policy.action(key)
        if action == "keep":
            clean = _redact(value, key in policy.free_text, needles, file, key, changes)
            if clean is not _DROP:
                out[key] = clean
        elif action == "shift":
            moved = shift_value(value, offset)
            if moved is None:
                changes.append(Change(file, "json", key, "drop", "not a date or time"))
            else:
                out[key] = moved
                changes.append(Change(file, "json", key, "shift", "subject offset"))
        else:
            changes.append(Change(file, "json", key, "drop", "not in the policy's allow-list"))
    return out, changes


def redact_text(text: str, free_text: bool, needles: Needles | None) -> str | None:
    """Why ``text`` must be redacted (the kinds found), or None when it may stay."""
    kinds = sorted({kind for kind, _ in pattern_hits(text)}) if free_text else []
    if needles is not None and needles.search(text):
        kinds.append("dataset value")
    return ", ".join(kinds) or None


#: What :func:`_redact` gives for an entry that must go with its key or list place.
_DROP = object()


def _redact(value: Any, free_text: bool, needles: Needles | None, file: str, path: str,
            changes: list[Change]) -> Any:
    """``value`` with its identifying text redacted: strings are replaced by
    ``[redacted]``; an object's key that would need it, and a whole number that is one of
    ``needles`` (an ID kept as a number), are dropped with their entry (:data:`_DROP`)."""
    def place(key: object) -> str:
        return f"{path}/{key}" if path else str(key)

    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            why = redact_text(str(key), free_text, needles)
            if why:  # the report names the place, never the key itself
                changes.append(Change(file, "json", place("[key]"), "drop", f"key holds {why}"))
                continue
            clean = _redact(item, free_text, needles, file, place(key), changes)
            if clean is not _DROP:
                out[key] = clean
        return out
    if isinstance(value, list):
        kept = (_redact(v, free_text, needles, file, place(i), changes)
                for i, v in enumerate(value))
        return [v for v in kept if v is not _DROP]
    if isinstance(value, str):
        why = redact_text(value, free_text, needles)
        if why:
            changes.append(Change(file, "json", path, "redact", why))
            return REDACTED
    if isinstance(value, int) and not isinstance(value, bool) and needles is not None \
            and needles.search(str(value)):
        changes.append(Change(file, "json", path, "drop", "dataset value"))
        return _DROP
    return value


def scrub_header(image: nib.Nifti1Image, policy: Policy, file: str) -> list[Change]:
    """Clear in place what ``image``'s header holds that the policy does not keep: the
    fields it lists as ``clear``, and every field of :func:`header_content` it does not
    list as ``keep`` (fail closed); and its extensions when it drops them."""
    changes = []
    header = image.header
    content = header_content(header)
    listed = [f for f, action in policy.nifti_header.items() if action == "clear"]
    for field in [*listed, *(f for f in content if f not in policy.nifti_header)]:
        if field not in header:
            continue
        current = content.get(field, np.asarray(header[field]).tobytes().strip(b"\x00 "))
        if current:
            header[field] = b"" if header.structarr.dtype[field].kind == "S" else 0
            changes.append(Change(file, "nifti_header", field, "clear"))
    if policy.nifti_extensions == "drop" and len(header.extensions):
        codes = ",".join(str(int(e.get_code())) for e in header.extensions)
        header.extensions.clear()
        changes.append(Change(file, "nifti_header", "extensions", "drop", f"codes {codes}"))
    return changes


def scrub_nifti_file(source: Path, target: Path, policy: Policy, file: str) -> list[Change]:
    """Copy ``source`` to ``target`` with a scrubbed header and nothing outside the image
    (:func:`isyb.bids.nifti_bytes.outside_the_image`: bytes before or after the data, gzip
    header fields); voxel bytes and scaling unchanged.

    Returns the changes; when there are none the caller may copy the file as is.
    """
    from isyb.io import atomic_path, stored_data

    image = nib.load(str(source))
    if not isinstance(image, nib.Nifti1Image):
        raise IsybError(f"{source}: header scrubbing needs a NIfTI-1/2 image")
    changes = scrub_header(image, policy, file)
    changes += [Change(file, "nifti_file", place, "drop")
                for place, extra in outside_the_image(source, image).items() if extra]
    if not changes:
        return changes
    raw, slope, inter = stored_data(image)
    header = image.header.copy()
    clean = type(image)(raw, image.affine, header)
    clean.header.set_slope_inter(slope, inter)
    with atomic_path(target) as tmp:
        clean.to_filename(str(tmp))
    return changes


def table_kind(name: str) -> str:
    """The policy's kind of a table or its JSON description: ``participants``, ``scans``,
    ``events``... from ``participants.tsv``, ``sub-01_scans.tsv``, ``task-x_events.json``."""
    stem = name.split(".")[0]
    return stem.rsplit("_", 1)[-1]


def scrub_table(table, policy: Policy, offset: dt.timedelta, file: str, *,
                needles: Needles | None = None):
    """A copy of a table (pandas, all ``str``) with only the columns the policy allows for
    its kind, ``acq_time`` per the policy, and cells holding one of ``needles`` redacted."""
    allowed = policy.columns.get(table_kind(Path(file).name), ())
    dropped = [c for c in table.columns if c not in allowed]
    changes = [Change(file, "tsv", c, "drop", "column not in the policy's allow-list")
               for c in dropped]
    out = table.drop(columns=dropped)
    if "acq_time" in out.columns and policy.scans_acq_time == "drop":
        out = out.drop(columns="acq_time")
        changes.append(Change(file, "tsv", "acq_time", "drop"))
    for column in out.columns:
        shift = column == "acq_time" and policy.scans_acq_time == "shift"
        values = []
        for value in out[column]:
            if value in ("", "n/a"):
                values.append(value)
            elif shift:
                moved = shift_value(value, offset)
                values.append(moved if moved is not None else "n/a")
                changes.append(Change(file, "tsv", column, "shift" if moved else "drop",
                                      "subject offset" if moved else "not a date or time"))
            elif needles is not None and needles.search(value):
                values.append(REDACTED)
                changes.append(Change(file, "tsv", column, "redact", "dataset value"))
            else:
                values.append(value)
        out[column] = values
    return out, changes


def _subject_of(relative: Path) -> str | None:
    first = relative.parts[0] if relative.parts else ""
    return first if first.startswith("sub-") else None


def describes_table(name: str) -> bool:
    """Whether a JSON file describes the columns of a table (``participants.json``...)."""
    return name == "participants.json" or name.endswith(("_scans.json", "_sessions.json",
                                                         "_events.json"))


def scrub_in_place(root: Path, files: list[Path], policy: Policy, key: bytes, *,
                   needles: Needles | None = None) -> list[Change]:
    """Scrub the JSON sidecars, tables and NIfTI headers among ``files`` (paths relative
    to the dataset ``root``), rewriting them atomically.

    Files under ``sub-<label>/`` use that subject's offset; top-level files use
    the offset of the label ``dataset``. Under ``derivatives/`` (isyb's own
    files) only NIfTI headers are scrubbed; ``dataset_description.json`` is
    left to the caller, which writes it from allowed fields.
    """
    import pandas as pd

    from isyb.io import write_text

    changes: list[Change] = []
    for relative in files:
        path = root / relative
        offset = subject_offset(key, _subject_of(relative) or "dataset", policy.shift_days)
        name = relative.as_posix()
        if path.name.endswith((".nii", ".nii.gz")):
            changes.extend(scrub_nifti_file(path, path, policy, name))
        elif relative.parts[0] == "derivatives" or path.name == "dataset_description.json":
            continue
        elif path.name.endswith(".json"):
            metadata = _read_json(path)
            if not isinstance(metadata, dict):  # withheld by the classification
                raise IsybError(f"{name}: expected a JSON object, not scrubbed")
            if describes_table(path.name):
                allowed = policy.columns.get(table_kind(path.name), ())
                found = [Change(name, "json", k, "drop", "column not in the policy's "
                                "allow-list") for k in metadata if k not in allowed]
                clean = _redact({k: v for k, v in metadata.items() if k in allowed}, True,
                                needles, name, "", found)
            else:
                clean, found = scrub_sidecar(metadata, policy, offset, name, needles=needles)
            if found:
                write_text(path, json.dumps(clean, indent=2) + "\n")
                changes.extend(found)
        elif path.name.endswith(".tsv"):
            read_table(path)  # a ragged row would shift pandas' columns: refused
            table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False,
                                index_col=False, encoding="utf-8-sig")
            clean, found = scrub_table(table, policy, offset, name, needles=needles)
            if found:
                write_text(path, clean.to_csv(sep="\t", index=False))
                changes.extend(found)
    return changes


def _read_json(path: Path) -> Any:
    try:
        return parse_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise IsybError(f"{path}: cannot be read as JSON ({exc})") from None


def find_leaks(root: Path, policy: Policy, needles: tuple[str, ...] = ()) -> list[str]:
    """Every place under ``root`` where a sidecar key the policy does not keep, a header
    field it clears, or one of ``needles`` (case-insensitive substrings) remains.

    Keys are checked at the top level of the JSON sidecars outside
    ``derivatives/`` (isyb's own files there have their own keys); values as
    text in every JSON, table and text file and NIfTI header. Returns readable
    findings; an empty list means clean. The release uses the stricter
    :func:`isyb.bids.leaks.scan_release`; this quick check serves the tests.
    """
    findings = []
    lowered = tuple(n.lower() for n in needles)

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
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
                metadata = json.loads(path.read_text())
            except json.JSONDecodeError:
                findings.append(f"{relative}: not JSON")
                continue
            if isinstance(metadata, dict) and not relative.startswith("derivatives/"):
                allowed = policy.columns.get(table_kind(path.name), ()) \
                    if describes_table(path.name) else ()
                findings.extend(f"{relative}: key {k}" for k in metadata
                                if k not in allowed and policy.action(k) == "drop")
            walk(metadata, relative)
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
