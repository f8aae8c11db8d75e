"""Identifying values: patterns that look like one, and the dataset's own values to search for.

Two tools shared by the scrubber (:mod:`isyb.bids.scrub`) and the leak scan
(:mod:`isyb.bids.leaks`):

* :func:`pattern_hits` finds what *looks* identifying in free text: e-mail
  addresses, phone numbers, dates, long numbers or MRN-like IDs, and names
  written with a title (``Dr. Smith``) or in DICOM's ``Last^First`` form.
* :class:`Needles` searches text or bytes for the values that *are*
  identifying in this dataset (:class:`Identifier`, collected from the input).

**Which values are searched (the false-positive rule).** A value is searched
only as a whole token (not inside a longer run of letters or digits), case
insensitively, and only if it is distinctive: at least 4 characters with a
letter in them, or at least 6 characters if it is a number (a weight ``70``, a
year ``1990`` or a count ``12`` would match everywhere); a text value that is
one word of letters only needs 8 (a DICOM ``TransmitCoilName`` of ``Body``
would match every report that says "body"). Person names are
also searched part by part (``Doe^Jane`` gives ``Doe`` and ``Jane``); a part
needs at least 3 letters. Values that the input also holds in a field the
policy keeps (a ``Manufacturer``, a ``sex`` of ``M``) are public by the
policy and not searched, and so is a part of a name that is a word of such a
value (a patient called ``Phantom^Demo01`` scanned on an ``isyb phantom``
keeps the Manufacturer); nor are a few words of the BIDS vocabulary
(:data:`COMMON`). What is not searched is still dropped by the allow-list; the
scan only counts it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass

PATTERNS = {
    "email": re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+\.[\w.-]+"),  # anchored: linear time
    "phone": re.compile(r"(?<![\w.])\+?(?:\(\d{1,4}\) ?)?\d{2,4}(?:[ ./-]\d{2,6}){1,4}"
                        r"(?![\w.-])"),
    "date": re.compile(r"(?<!\d)(?:(?:19|20)\d\d[-./]?(?:0[1-9]|1[0-2])[-./]?"
                       r"(?:0[1-9]|[12]\d|3[01])|(?:0?[1-9]|[12]\d|3[01])[-./](?:0?[1-9]|1[0-2])[-./](?:19|20)?\d\d)"
                       r"(?!\d)"),
    "id": re.compile(r"(?<![\w.])[A-Za-z]{0,4}[-#]?\d{5,}(?![\w.])"),
    "name": re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Miss|Prof)\.?\s+[A-Z][a-z]+(?:\s+[A-Z][a-z]+)?"
                       r"|\b[A-Za-z]+\^[A-Za-z]+(?:\^[A-Za-z]*)*"),
}
COMMON = frozenset({"n/a", "none", "null", "true", "false", "unknown", "other", "male",
                    "female", "left", "right", "ambidextrous", "control", "patient", "head",
                    "brain", "anonymous", "anonymized", "removed", "redacted", "test"})
REDACTED = "[redacted]"


def pattern_hits(text: str) -> list[tuple[str, str]]:
    """``(kind, matched text)`` for every identifying pattern found in ``text``."""
    hits = [(kind, match.group(0)) for kind, pattern in PATTERNS.items()
            for match in pattern.finditer(text)]
    # A phone number has 7 digits or more and is not a date.
    return [(kind, found) for kind, found in hits if kind != "phone" or (
        sum(c.isdigit() for c in found) >= 7 and not PATTERNS["date"].fullmatch(found))]


@dataclass(frozen=True)
class Identifier:
    """A value that identifies someone, its kind, and where the input held it (file:key)."""

    value: str
    kind: str
    source: str


def date_forms(day: dt.date) -> list[str]:
    """The ways a date is commonly written: 19900102, 1990-01-02, 02.01.1990, 01/02/1990..."""
    y, m, d = f"{day.year:04d}", f"{day.month:02d}", f"{day.day:02d}"
    return [f"{y}{m}{d}", f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{y}.{m}.{d}", f"{d}.{m}.{y}",
            f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}-{m}-{y}", f"{m}-{d}-{y}"]


def parse_date(text: str) -> dt.date | None:
    """The calendar date in ``text`` (ISO date or date-time, DICOM ``YYYYMMDD[HHMMSS]``,
    ``DD.MM.YYYY``, ``YYYY/MM/DD``, ``DD/MM/YYYY``), or None."""
    text = text.strip()
    try:
        return dt.datetime.fromisoformat(text).date()
    except ValueError:
        pass
    head = text[:8] if re.match(r"\d{8}(?:\d{6}(?:\.\d+)?)?$", text) else text.split()[0] \
        if text else ""
    for form in ("%Y%m%d", "%d.%m.%Y", "%Y/%m/%d", "%d/%m/%Y"):
        try:
            return dt.datetime.strptime(head, form).date()
        except ValueError:
            continue
    return None


def expand(value: str, kind: str, source: str) -> list[Identifier]:
    """``value`` as the identifiers to search: date forms of a date, parts of a name."""
    value = " ".join(str(value).split())
    found = [Identifier(value, kind, source)]
    day = parse_date(value) if kind == "date" or PATTERNS["date"].fullmatch(value) else None
    if day is not None:
        found += [Identifier(form, "date", source) for form in date_forms(day)]
    if kind == "name":
        found += [Identifier(part, "name", source) for part in re.split(r"[\s^,]+", value)
                  if len(part) >= 3 and part.isalpha()]
    for hit_kind, text in pattern_hits(value) if kind == "text" else []:
        found += expand(text, hit_kind, source)
    return found


def searchable(identifier: Identifier) -> bool:
    """The false-positive rule of the module docstring (public values are removed apart)."""
    value = identifier.value.lower()
    if value in COMMON:
        return False
    if identifier.kind == "name" and value.isalpha():
        return len(value) >= 3
    if re.fullmatch(r"[\d\s.,:+/-]+", value):
        return sum(c.isdigit() for c in value) >= 6
    if identifier.kind == "text" and value.isalpha() and len(value) < 8:
        return False  # one short word of a scanner's text ("Body", "Head"): vocabulary
    return len(value) >= 4 and any(c.isalpha() for c in value)


class Needles:
    """The searchable identifiers of a dataset, less those that are public."""

    def __init__(self, identifiers: Iterable[Identifier], public: Iterable[str] = ()) -> None:
        public_set = {" ".join(str(p).split()).lower() for p in public}
        public_words = {w for p in public_set for w in re.split(r"[^a-z0-9]+", p)}
        chosen: dict[str, Identifier] = {}
        self.skipped = 0
        for identifier in identifiers:
            key = identifier.value.lower()
            if key in chosen:
                continue
            part_of_public = identifier.kind == "name" and key.isalpha() and key in public_words
            if key in public_set or part_of_public or not searchable(identifier):
                self.skipped += 1
                continue
            chosen[key] = identifier
        self.identifiers = chosen
        # Longest first, so that a full name is reported before its parts.
        alternatives = sorted(chosen, key=len, reverse=True)
        body = "|".join(re.escape(v) for v in alternatives)
        self._text = re.compile(rf"(?<![0-9a-z])(?:{body})(?![0-9a-z])", re.IGNORECASE) \
            if body else None
        self._bytes = re.compile(rf"(?<![0-9a-z])(?:{body})(?![0-9a-z])".encode(),
                                 re.IGNORECASE) if body else None

    def __len__(self) -> int:
        return len(self.identifiers)

    def redact(self, text: str) -> str:
        """``text`` with every identifier in it replaced by ``[redacted]``."""
        return self._text.sub(REDACTED, text) if self._text is not None else text

    def search(self, text: str) -> list[Identifier]:
        """The identifiers found in ``text``."""
        if self._text is None:
            return []
        found = (self.identifiers.get(m.group(0).lower()) for m in self._text.finditer(text))
        return [f for f in found if f is not None]

    def search_bytes(self, data: bytes) -> list[Identifier]:
        """The identifiers found in ``data`` (ASCII or UTF-8 text inside any bytes)."""
        if self._bytes is None:
            return []
        found = (self.identifiers.get(m.group(0).decode(errors="replace").lower())
                 for m in self._bytes.finditer(data))
        return [f for f in found if f is not None]
