"""The leak scan: every identifying value of the input, searched for in every byte of a release.

:func:`collect_identifiers` reads the *input* dataset and gathers what
identifies someone (:class:`isyb.bids.identifiers.Identifier`):

* the values of every sidecar key the policy does not keep (``PatientName``,
  ``DateOfBirth``, ``InstitutionName``, ``DeviceSerialNumber``, the free text
  of ``Notes``, ``Events[].What``...), at any depth, and the original dates of
  the keys it shifts;
* the cells of every table column it does not allow (``name``, ``mrn``,
  ``birthdate``), and the original ``acq_time`` values;
* what looks identifying (:func:`~isyb.bids.identifiers.pattern_hits`) in kept
  free text, in the fields of ``dataset_description.json`` that are not passed
  on, in README, CHANGES and other text files, in NIfTI header text fields and
  extensions, and in file names (a date in a file name);
* every date also in its other common forms (19900102, 1990-01-02,
  02.01.1990...), every person name also part by part.

The input's ``derivatives/`` (computed, never released by isyb) is not
read: its template names and software versions would match isyb's own
outputs. Values the input holds in places the policy keeps (kept sidecar values,
allowed columns, the words of file names such as ``func`` or ``sub-01``,
the passed-on ``Name``,
``Authors`` and ``License``) are public and not searched; nor are values too
short to search without false positives (the rule is in
:mod:`isyb.bids.identifiers`).

:func:`scan_release` then searches every file of the release: names, JSON
keys and values, tables and text, NIfTI headers and extensions, gzip
contents, and the printable text inside other binary files (pictures, also
when a page embeds them as ``data:`` URIs). It
also flags a raw sidecar key the policy does not keep and a header field or
extension it clears. A finding names the file, the place and the kind and
source of the value, never the value itself (findings go into the
published ``release_summary.json``).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import re
from pathlib import Path
from typing import Any

import nibabel as nib

from isyb.bids.identifiers import Identifier, Needles, expand, pattern_hits
from isyb.bids.layout import RepeatedKeyError, parse_json
from isyb.bids.nifti_bytes import header_content, outside_the_image
from isyb.bids.scrub import Policy, describes_table, table_kind

PASSED_DESCRIPTION = ("Name", "BIDSVersion", "DatasetType", "License", "Authors")
TEXT_SUFFIXES = (".tsv", ".json", ".txt", ".md", ".html", ".htm", ".svg", ".csv", ".bval",
                 ".bvec", ".rst", ".xml", ".bidsignore")
DATA_URI = re.compile(rb"data:[\w/+.-]+;base64,([A-Za-z0-9+/]+)=*")
ENTITY = re.compile(r"[a-zA-Z]+-[a-zA-Z0-9]+")  # a BIDS key-label pair, such as sub-01
UNREADABLE = (OSError, EOFError, ValueError, nib.filebasedimages.ImageFileError,
              nib.spatialimages.HeaderDataError)
MAX_BYTES = 64 << 20  # a larger non-image file is searched in its first 64 MiB


PERSON = re.compile(r"name|physician|operator|author", re.IGNORECASE)
NOT_PERSON = re.compile(r"institut|station|file|model|coil|sequence|protocol|series|task|"
                        r"device|software|manufacturer|department", re.IGNORECASE)


def _kind(key: str) -> str:
    """What a dropped key or column holds, judged by its name: a person's name (searched
    also part by part), a date (also in other forms), an ID, or text."""
    low = key.lower()
    if PERSON.search(key) and not NOT_PERSON.search(key):
        return "name"
    if "date" in low or "birth" in low or low.endswith(("dob", "time")):
        return "date"
    if low.endswith("id") or any(w in low for w in ("mrn", "number", "serial")):
        return "id"
    return "text"


def _strings(value: Any, numbers: bool = True) -> list[str]:
    """The keys and values in ``value`` as text; numbers left out unless ``numbers``."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v, numbers))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, numbers)]
    if isinstance(value, bool) or value is None or (not numbers and isinstance(value, int
                                                                               | float)):
        return []
    return [str(value)]


def _dropped(value: Any, kind: str, source: str) -> list[Identifier]:
    """The identifiers in a dropped value: objects by their own keys' kinds."""
    if isinstance(value, dict):
        return [i for k, v in value.items() for i in _dropped(v, _kind(k) if kind == "text"
                                                             else kind, f"{source}/{k}")]
    if isinstance(value, list):
        return [i for v in value for i in _dropped(v, kind, source)]
    return [i for s in _strings(value) for i in expand(s, kind, source)]


def _hits(text: str, source: str) -> list[Identifier]:
    return [i for kind, found in pattern_hits(text) for i in expand(found, kind, source)]


def collect_identifiers(bids_dir: Path, policy: Policy) -> tuple[list[Identifier], set[str]]:
    """The identifying values of the input dataset, and the values that are public."""
    import pandas as pd

    found: list[Identifier] = []
    public: set[str] = set()
    for path in sorted(bids_dir.rglob("*")):
        relative = path.relative_to(bids_dir)
        if relative.parts[0] in (".git", "derivatives") or not path.is_file():
            continue
        name = relative.as_posix()
        # File names are released (a dated one is found below): their words are public.
        words = [w for part in relative.parts for w in re.split(r"[_.]", part)]
        public.update(w for w in words if ENTITY.fullmatch(w))
        public.update(w for word in words for w in word.split("-"))
        found += [i for i in _hits(path.name, f"{name}:file name") if i.kind in ("date",
                                                                                  "email")]
        if path.name == "dataset_description.json":
            description = _json(path)
            for key, value in description.items():
                if key in PASSED_DESCRIPTION:
                    public.update(_strings(value))
                else:
                    found += [i for s in _strings(value) for i in _hits(s, f"{name}:{key}")]
        elif path.name.endswith(".json"):
            metadata = _json(path)
            allowed = policy.columns.get(table_kind(path.name), ())
            table_json = describes_table(path.name)
            for key, value in metadata.items():
                action = "keep" if table_json and key in allowed else \
                    "drop" if table_json else policy.action(key)
                source = f"{name}:{key}"
                if action == "drop":
                    found += _dropped(value, _kind(key), source)
                elif action == "shift":
                    found += [i for s in _strings(value) for i in expand(s, "date", source)]
                elif key in policy.free_text or table_json:
                    found += [i for s in _strings(value) for i in _hits(s, source)]
                else:  # a kept number makes no dropped ID public (the scrub drops it)
                    public.update(_strings(value, numbers=False))
        elif path.name.endswith(".tsv"):
            try:
                table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
            except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError):
                continue
            allowed = policy.columns.get(table_kind(path.name), ())
            for column in table.columns:
                source = f"{name}:{column}"
                if column == "acq_time" and policy.scans_acq_time != "keep":
                    found += [i for s in table[column] for i in expand(s, "date", source)]
                elif column in allowed:
                    public.update(table[column])
                else:
                    found += [i for s in table[column] for i in expand(s, _kind(column),
                                                                      source)]
        elif path.name.endswith((".nii", ".nii.gz")):
            found += _header_identifiers(path, name)
        elif path.name.endswith((".bval", ".bvec")) and _numbers_only(path):
            continue  # a gradient table ("0 1000 1000 1000" reads as a phone number)
        elif path.stat().st_size < MAX_BYTES and _is_text(path):
            found += _hits(path.read_text(errors="replace"), name)
    return found, public


def _numbers_only(path: Path) -> bool:
    """Whether a small file holds only numbers separated by white space (a ``bval`` or
    ``bvec`` table, released as it is); anything else in it is searched as text."""
    if path.stat().st_size >= MAX_BYTES:
        return False
    try:
        [float(token) for token in path.read_text().split()]
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def _json(path: Path) -> dict:
    """The JSON object in ``path`` ({} when there is none). One that names a key twice is
    withheld or refused, but its values still identify someone: they come back as the
    values of one dropped key, so that the other files are searched for them."""
    try:
        value = parse_json(path.read_text())
    except RepeatedKeyError:
        return {"[a key named twice]": json.loads(
            path.read_text(), object_pairs_hook=lambda pairs: [v for _, v in pairs])}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _is_text(path: Path) -> bool:
    with open(path, "rb") as stream:
        return b"\x00" not in stream.read(8192)


def _header_text(path: Path, image) -> dict[str, bytes]:
    """What an image file holds besides geometry and voxels: :func:`header_content`, each
    extension, and what lies outside the image (:func:`outside_the_image`)."""
    header = image.header
    fields = header_content(header)
    for index, extension in enumerate(header.extensions):
        content = extension.get_content()
        fields[f"extension {index}"] = content if isinstance(content, bytes) else \
            str(content).encode()
    fields.update(outside_the_image(path, image))
    return fields


def _header_identifiers(path: Path, name: str) -> list[Identifier]:
    try:
        fields = _header_text(path, nib.load(str(path)))
    except UNREADABLE:  # an unreadable image has no header to search
        return []
    found = []
    for field, raw in fields.items():
        if not raw:
            continue
        text = raw.decode(errors="replace")
        source = f"{name}:header {field}"
        if field in ("descrip", "aux_file", "before the data", "after the data",
                     "gzip file name", "gzip comment"):
            found += expand(text, "text", source)
        found += _hits(text, source)
        for match in re.finditer(r"(?:Patient\w*|Name)\s*[=:]\s*([^\s;,]+)", text):
            found += expand(match.group(1), "name", source)
    return found


def scan_release(out_dir: Path, needles: Needles, policy: Policy) -> list[dict]:
    """Every place in the release ``out_dir`` where an identifying value, a key the policy
    does not keep (raw sidecars) or a header field it clears remains; [] means clean."""
    findings: list[dict] = []

    def add(file: str, where: str, kind: str, source: str = "") -> None:
        findings.append({"file": needles.redact(file), "where": needles.redact(where),
                         "kind": kind, "source": needles.redact(source)})

    for path in sorted(out_dir.rglob("*")):
        if not path.is_file():
            continue
        relative = path.relative_to(out_dir)
        name = relative.as_posix()
        raw_data = relative.parts[0] != "derivatives"
        for hit in needles.search(name):
            add(name, "file name", hit.kind, hit.source)
        if path.name.endswith((".nii", ".nii.gz")):
            findings_before = len(findings)
            try:
                fields = _header_text(path, nib.load(str(path)))
            except UNREADABLE:  # search its bytes instead
                fields = None
            for field, raw in (fields or {}).items():
                cleared = policy.nifti_extensions == "drop" if field.startswith(
                    "extension") else policy.nifti_header.get(field, "clear") == "clear"
                if cleared and raw:
                    add(name, f"header {field}", "not cleared")
                for hit in needles.search_bytes(raw):
                    add(name, f"header {field}", hit.kind, hit.source)
            if fields is None and len(findings) == findings_before:
                _search_bytes(path, name, needles, add)
        elif path.name.endswith(".json"):
            try:
                value = parse_json(path.read_text())
            except (UnicodeDecodeError, ValueError):  # also a key named twice
                _search_bytes(path, name, needles, add)
                continue
            if raw_data and isinstance(value, dict) and path.name != "dataset_description.json":
                allowed = policy.columns.get(table_kind(path.name), ()) \
                    if describes_table(path.name) else ()
                for key in value:
                    if key not in allowed and policy.action(key) == "drop":
                        add(name, f"key {key}", "not in the policy")
            _walk(value, name, "", needles, add)
        else:
            _search_bytes(path, name, needles, add)
    return findings


def _walk(value: Any, file: str, where: str, needles: Needles, add) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            for hit in needles.search(str(key)):
                add(file, f"key {where}{key}", hit.kind, hit.source)
            _walk(item, file, f"{where}{key}/", needles, add)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _walk(item, file, f"{where}{index}/", needles, add)
    elif isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        for hit in needles.search(str(value)):
            add(file, f"value {where.rstrip('/')}", hit.kind, hit.source)


def _search_bytes(path: Path, name: str, needles: Needles, add) -> None:
    """Text files whole; gzip files decompressed; other binaries by their printable runs
    of 8 or more characters (a short run in compressed pixels is noise, not text)."""
    with open(path, "rb") as stream:
        data = stream.read(MAX_BYTES)
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            data = gzip.decompress(data)[:MAX_BYTES]
    if b"\x00" in data[:8192] or (not path.name.endswith(TEXT_SUFFIXES)
                                  and not _looks_text(data)):
        chunks = _printable(data)
    else:
        # Pictures embedded in a page (data: URIs) are searched as the binaries they are:
        # base64 of pixels, read as text, matches short names by chance.
        chunks = [DATA_URI.sub(b" ", data)]
        for match in DATA_URI.finditer(data):
            chunks += _printable(_unbase64(match.group(1)))
    for chunk in chunks:
        for hit in needles.search_bytes(chunk):
            add(name, "content", hit.kind, hit.source)


def _unbase64(text: bytes) -> bytes:
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4))
    except ValueError:  # a truncated URI: its text is searched as is
        return text


def _printable(data: bytes) -> list[bytes]:
    return re.findall(rb"[\x20-\x7e]{8,}", data)


def _looks_text(data: bytes) -> bool:
    try:
        data[:8192].decode()
    except UnicodeDecodeError:
        return False
    return True



def dataset_needles(bids_dir: Path, policy: Policy) -> Needles:
    """The searchable identifying values of the input dataset ``bids_dir``."""
    identifiers, public = collect_identifiers(bids_dir, policy)
    return Needles(identifiers, public)
