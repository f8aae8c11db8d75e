"""The one BIDS layer of isyb: participants, runs, sidecars, derivative paths and descriptions.

Every dataset mode (``isyb deface``, ``qc``, ``derive``, ``study``, the
release and ``import``) finds its subjects and files here, reads metadata
here, and describes ``derivatives/isyb`` here, after niworkflows'
``utils/bids.py`` (``collect_participants``, ``collect_data``,
``get_metadata_for_nifti``), without pybids.

>>> parse_entities("sub-01_task-rest_run-2_bold.nii.gz")
({'sub': '01', 'task': 'rest', 'run': '2'}, 'bold')
>>> strip_sub(["sub-01", "02"])
['01', '02']
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from isyb import __version__
from isyb.errors import InputError, IsybError
from isyb.io import IMAGE_SUFFIXES, strip_image_suffix, write_text

#: Where isyb writes its derivatives, relative to an output dataset.
DERIVATIVES = Path("derivatives") / "isyb"
#: BIDS version isyb writes in the descriptions it makes.
BIDS_VERSION = "1.9.0"


class BIDSInputError(InputError):
    """The input is not a BIDS dataset isyb can read (one line, exit 2)."""


@dataclass(frozen=True)
class BIDSFile:
    """One file of a BIDS dataset, with the parts of its name and place.

    ``path`` is where it lies; ``relative`` its path inside the dataset (what
    records and messages show, never a local path); ``subject`` the label
    without ``sub-``; ``datatype`` the folder it sits in (``anat``, ``func``...).
    """

    path: Path
    relative: Path
    subject: str

    @property
    def datatype(self) -> str:
        return self.relative.parent.name

    @property
    def bids_name(self) -> str:
        """The file name without extension (MRIQC's ``bids_name``)."""
        return Path(strip_image_suffix(self.relative.name)).name

    @property
    def suffix(self) -> str:
        return parse_entities(self.relative.name)[1]

    @property
    def entities(self) -> dict[str, str]:
        return parse_entities(self.relative.name)[0]

    @property
    def participant_id(self) -> str:
        return f"sub-{self.subject}"

    def derivative(self, out_dir: Path, name: str) -> Path:
        """``out_dir/derivatives/isyb/<the file's folders>/<name>``."""
        return derivatives_dir(out_dir) / self.relative.parent / name


def parse_entities(name: str) -> tuple[dict[str, str], str]:
    """The ``key-value`` entities and the suffix of a BIDS file name (any extension)."""
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    return dict(p.split("-", 1) for p in parts[:-1] if "-" in p), parts[-1]


def strip_sub(labels: Iterable[str]) -> list[str]:
    """Participant labels without their ``sub-`` prefix."""
    return [label.removeprefix("sub-") for label in labels]


#: Top-level files that isyb reads itself: a link among them that leads outside the dataset
#: is refused (one line, exit 2), as nothing is read from outside through a link.
READ_AT_TOP = ("dataset_description.json", "participants.tsv", "participants.json", "README",
               "README.md", "CHANGES")


def read_description(bids_dir: Path) -> dict:
    """The dataset's ``dataset_description.json``; a missing or bad one, or a top-level file
    isyb reads that is a link leading outside the dataset, is a one-line error."""
    path = bids_dir / "dataset_description.json"
    if not bids_dir.is_dir():
        raise BIDSInputError(f"{bids_dir}: no such folder")
    root = bids_dir.resolve()
    outside = [name for name in READ_AT_TOP if (bids_dir / name).is_symlink()
               and root not in (bids_dir / name).resolve().parents]
    if outside:
        raise BIDSInputError(f"{bids_dir}: {', '.join(outside)}: link(s) leading outside the "
                             "dataset (isyb reads nothing through them)")
    if not path.is_file():
        raise BIDSInputError(f"{bids_dir}: not a BIDS dataset (no dataset_description.json)")
    return read_json(path)


def collect_participants(bids_dir: Path, participant_label: Iterable[str] | None = None,
                         ) -> list[str]:
    """Subject labels (without ``sub-``) of ``bids_dir``, sorted, or the requested ones.

    A requested label that has no ``sub-<label>`` folder is an error naming it
    (niworkflows' ``strict`` behaviour): a typo never silently shrinks a cohort.
    Every dataset mode starts here, so the inputs are checked here, before any work:
    the description, the form of ``participants.tsv`` (:func:`read_table`) and every JSON
    file at the top level and in the chosen subjects' folders (:func:`read_json`).
    """
    read_description(bids_dir)
    if (bids_dir / "participants.tsv").is_file():
        read_table(bids_dir / "participants.tsv")
    found = sorted(p.name[4:] for p in bids_dir.glob("sub-*") if p.is_dir())
    if participant_label is None:
        wanted = found
    else:
        wanted = list(dict.fromkeys(strip_sub(participant_label)))
        missing = [label for label in wanted if label not in found]
        if missing:
            raise BIDSInputError(f"participant label(s) not found in {bids_dir}: "
                                 f"{', '.join(missing)}")
    for sidecar in [*sorted(bids_dir.glob("*.json")),
                    *(p for label in wanted for p in sorted(
                        (bids_dir / f"sub-{label}").rglob("*.json")))]:
        if sidecar.is_file():
            read_json(sidecar)
    return wanted


def subject_files(bids_dir: Path, subject: str) -> Iterator[BIDSFile]:
    """Every file below ``sub-<subject>``, sorted by path."""
    for path in sorted((bids_dir / f"sub-{subject}").rglob("*")):
        if path.is_file():
            yield BIDSFile(path, path.relative_to(bids_dir), subject)


def is_image(path: Path) -> bool:
    """Whether ``path`` names a NIfTI or MGZ image (case-insensitive)."""
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def collect_runs(bids_dir: Path, subjects: Iterable[str],
                 wanted: dict[str, Iterable[str]]) -> list[BIDSFile]:
    """NIfTI images of ``subjects`` whose datatype folder and suffix are in ``wanted``.

    ``wanted`` maps a datatype folder to its suffixes, e.g.
    ``{"anat": ("T1w", "T2w"), "func": ("bold",)}``. Sorted by subject, then path.
    """
    chosen = {folder: set(suffixes) for folder, suffixes in wanted.items()}
    return [item for subject in subjects for item in subject_files(bids_dir, subject)
            if item.relative.name.lower().endswith((".nii", ".nii.gz"))
            and item.suffix in chosen.get(item.datatype, ())]


def metadata(bids_dir: Path, image: Path) -> dict:
    """The image's JSON metadata with BIDS inheritance (top level first, its own last).

    A JSON file applies when it sits in the dataset root or a folder above the
    image, has the image's suffix, and its entities are a subset of the
    image's. An image outside ``bids_dir`` (a single file given on the command
    line) gets its own sidecar only.
    """
    image = Path(image)
    try:
        relative = image.resolve().relative_to(Path(bids_dir).resolve())
    except ValueError:
        relative = None
    entities, suffix = parse_entities(image.name)
    if relative is None:
        folders = [image.parent]
    else:
        folders = [bids_dir] + [bids_dir / Path(*relative.parts[:i])
                                for i in range(1, len(relative.parts))]
    merged: dict = {}
    for folder in folders:
        for candidate in sorted(folder.glob(f"*{suffix}.json")):
            found, found_suffix = parse_entities(candidate.name)
            if found_suffix == suffix and all(entities.get(k) == v for k, v in found.items()):
                merged.update(read_json(candidate))
    return merged


#: Sidecar fields isyb computes with that must hold one number, and its lower bound (None:
#: any finite number): ``"RepetitionTime": "two"`` is an error, never silently replaced by
#: the header's guess. (Fields that BIDS allows to be arrays, such as ASL's
#: ``RepetitionTimePreparation``, which real data set to 0, are not listed.)
NUMERIC_FIELDS = {"RepetitionTime": 0.0}


class RepeatedKeyError(ValueError):
    """A JSON object that names a key twice (:func:`parse_json`)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise RepeatedKeyError(f"the key {key!r} appears more than once in one object")
        seen.add(key)
    return dict(pairs)


def parse_json(text: str) -> Any:
    """``json.loads`` that refuses (:class:`RepeatedKeyError`) an object naming a key
    twice. The standard reader keeps the last value, so such a sidecar would show the
    scrubber one value and a reader that keeps the first (or the raw bytes) another."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def read_json(path: Path) -> dict:
    """A JSON object from ``path`` (a sidecar or description); anything else, or a
    :data:`NUMERIC_FIELDS` value that is not a finite number above its bound, is a
    one-line error naming the file."""
    try:
        value = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise BIDSInputError(f"{path.name}: cannot be read as JSON ({exc})") from None
    if not isinstance(value, dict):
        raise BIDSInputError(f"{path.name}: expected a JSON object")
    for key, above in NUMERIC_FIELDS.items():
        number = value.get(key)
        if key in value and not (isinstance(number, int | float) and not isinstance(number, bool)
                                 and math.isfinite(number)
                                 and (above is None or number > above)):
            raise BIDSInputError(f"{path.name}: {key} must be a number"
                                 f"{'' if above is None else f' > {above:g}'}, got {number!r}")
    return value


def read_table(path: Path) -> list[list[str]]:
    """The rows of a BIDS TSV file (header first), refused with a one-line error naming the
    file unless it is UTF-8 text with a header of unique names and as many fields in every
    row (a binary or ragged ``participants.tsv`` must not reach pandas)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no column name
    except (OSError, UnicodeDecodeError) as exc:
        raise BIDSInputError(f"{path.name}: cannot be read as UTF-8 text ({exc})") from None
    if "\x00" in text:
        raise BIDSInputError(f"{path.name}: binary data, expected a tab-separated table")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or not all(rows[0]) or len(set(rows[0])) != len(rows[0]):
        raise BIDSInputError(f"{path.name}: expected a header row of unique column names")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise BIDSInputError(f"{path.name}: line {number} has {len(row)} fields, the "
                                 f"header {len(rows[0])}")
    return rows


def derivatives_dir(out_dir: Path) -> Path:
    """``out_dir/derivatives/isyb``."""
    return Path(out_dir) / DERIVATIVES


def check_separate(bids_in: Path, bids_out: Path) -> None:
    """Refuse an output folder that is the input, lies inside it, or contains it."""
    a, b = bids_in.resolve(), bids_out.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise BIDSInputError(f"{bids_out}: the output folder must not be inside the input or "
                             "contain it")


def file_stamp(path: Path) -> dict[str, int]:
    """Size and modification time of a file: what resume checks compare."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def unchanged_record(path: Path, expected: dict[str, Any]) -> dict | None:
    """The JSON record at ``path`` if this isyb version wrote it and each of ``expected``
    (the input stamps, an options digest...) is the same in it; else None, and the
    caller computes it again. What qc, derive and dataset deface resume from."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = isinstance(record, dict) and record.get("isyb_version") == __version__ and all(
        record.get(key) == value for key, value in expected.items())
    return record if same else None


def source_dataset(bids_dir: Path, description: dict) -> dict:
    """The input dataset as a ``SourceDatasets`` entry: its DOI when it has one, else its
    folder name (never the absolute local path, which can name a person or a site)."""
    if description.get("DatasetDOI"):
        return {"DOI": description["DatasetDOI"]}
    return {"URL": f"file:{bids_dir.resolve().name}"}


def describe_derivatives(out_dir: Path, bids_dir: Path, *, name: str,
                         generated_by: dict) -> None:
    """Write or merge ``out_dir/derivatives/isyb/dataset_description.json``.

    Each command adds its own ``GeneratedBy`` entry (keyed by its
    ``Description``; a rerun replaces its own entry) and keeps the others', so
    the description names every command that wrote into the folder, whichever
    ran first. ``name`` is the folder's ``Name`` when one command wrote it; with
    several it becomes ``isyb derivatives`` of the source dataset.
    """
    path = derivatives_dir(out_dir) / "dataset_description.json"
    source = source_dataset(bids_dir, read_description(bids_dir))
    existing = read_json(path) if path.is_file() else {}
    entries = [e for e in existing.get("GeneratedBy", [])
               if isinstance(e, dict) and e.get("Description") != generated_by["Description"]]
    entries.append(generated_by)
    sources = [s for s in existing.get("SourceDatasets", []) if s != source] + [source]
    description = {
        "Name": name if len(entries) == 1 else "isyb derivatives",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": entries,
        "SourceDatasets": sources,
    }
    text = json.dumps(description, indent=2) + "\n"
    if not path.is_file() or path.read_text() != text:
        write_text(path, text)


def read_policy(path: str | Path | None, shipped: str, what: str) -> tuple[Path, Any]:
    """A policy file's path and parsed JSON: ``path``, or isyb's own ``data/<shipped>``
    when None; a file that cannot be read as JSON is a one-line error naming ``what``."""
    path = Path(path) if path is not None else Path(str(resources.files("isyb") / "data"
                                                        / shipped))
    try:
        return path, json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IsybError(f"{path}: cannot read the {what} ({exc})") from None
