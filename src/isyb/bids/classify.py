"""Deny by default: what of an input BIDS dataset may go into a release.

Every entry of the dataset is classified, by place, name *and* content, as

* ``deface``: an anatomical head image (``anat/``, a suffix of the policy's
  ``deface`` list, NIfTI content) that isyb defaces;
* ``copy``: an image of an allowed datatype and suffix, or a sidecar, table,
  ``bval``/``bvec`` that goes with a kept image, or a subject-level table;
* ``top``: a file of the dataset root (description, README, participants...);
* ``withheld``, with a reason: anything else.

The policy's ``allow`` patterns admit more paths outside the ``sub-*``
folders (``code/*.py``); subject files are admitted by ``datatypes``.

A **release policy** (JSON; the default ships as
``isyb/data/release_policy.json``) names what is allowed; anything it does
not name is withheld (fail closed). Rules that no policy relaxes:

* every path is resolved: a symlink that leads outside the dataset (or to a
  folder, or nowhere) is withheld, and nothing is read through it; a link to a
  file inside the dataset is read from its target (and copied as a file);
* every file whose content is NIfTI, MGH/MGZ or DICOM (by magic bytes, gzip
  or not, whatever its name) is opened: image content under a non-image name,
  DICOM, and a single 3-D volume under a suffix that is neither defaced nor a
  ``single_volume`` reference are withheld (an undefaced head);
* ``sourcedata/``, the input's own ``derivatives/``, hidden files, backup
  copies (``.orig``, ``~``, ``old/``...), files listed in ``.bidsignore`` and
  images outside a datatype folder are withheld.

Extensions are matched case-insensitively; the output name has its extension
in lower case (``sub-01_T1w.NII.GZ`` is released as ``sub-01_T1w.nii.gz``).

>>> split_name("sub-01_T1w.NII.GZ")
('sub-01_T1w', '.nii.gz')
"""

from __future__ import annotations

import fnmatch
import gzip
import os
import re
import stat
import zlib
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from isyb.bids.layout import (
    BIDSInputError,
    RepeatedKeyError,
    parse_entities,
    parse_json,
    read_policy,
    read_table,
)
from isyb.errors import IsybError

WITHHELD_COLUMNS = ("path", "reason")
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ENTITY = re.compile(r"^[A-Za-z0-9]+-[A-Za-z0-9]+$")
_BACKUP_SUFFIXES = (".orig", ".bak", ".old", ".backup", ".swp", ".tmp", "~")
_BACKUP_FOLDERS = {"old", "orig", "bak", "backup", "backups", "archive", "tmp"}


@dataclass(frozen=True)
class ReleasePolicy:
    """A parsed release policy (see the module docstring and the default file)."""

    deface: frozenset[str]
    datatypes: dict[str, frozenset[str]]
    single_volume: frozenset[str]
    image_extensions: tuple[str, ...]
    other_extensions: tuple[str, ...]
    top_level: frozenset[str]
    subject_tables: frozenset[str]
    max_sidecar_bytes: int
    allow: tuple[str, ...]
    source: str

    def allowed(self, datatype: str) -> frozenset[str]:
        """Suffixes kept in ``datatype`` (anat: the defaced ones plus any listed)."""
        extra = self.deface if datatype == "anat" else frozenset()
        return self.datatypes.get(datatype, frozenset()) | extra

    @property
    def all_suffixes(self) -> frozenset[str]:
        return frozenset().union(self.deface, *self.datatypes.values())


@dataclass(frozen=True)
class Item:
    """One classified entry: ``relative`` (input path, POSIX), ``source`` (what to read,
    the link target for a symlink inside), ``kind``, ``output`` (path in the release),
    ``reason`` (why withheld)."""

    relative: str
    source: Path
    kind: str
    output: str = ""
    reason: str = ""


def default_release_policy_path() -> Path:
    return Path(str(resources.files("isyb") / "data" / "release_policy.json"))


def load_release_policy(path: str | Path | None = None) -> ReleasePolicy:
    """Read and check a release policy file (default: the one shipped with isyb)."""
    path, raw = read_policy(path, "release_policy.json", "release policy")
    try:
        datatypes = {str(k): frozenset(map(str, v)) for k, v in raw["datatypes"].items()}
        extensions = raw["extensions"]
        image = tuple(e.lower() for e in extensions["image"])
        other = tuple(e.lower() for e in extensions["other"])
        size = int(raw.get("max_sidecar_bytes", 1 << 20))
        policy = ReleasePolicy(
            frozenset(map(str, raw["deface"])), datatypes,
            frozenset(map(str, raw.get("single_volume", ()))), image, other,
            frozenset(map(str, raw["top_level"])),
            frozenset(map(str, raw.get("subject_tables", ()))), size,
            tuple(map(str, raw.get("allow", ()))), str(path))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise IsybError(f"{path}: not a release policy (needs deface, datatypes, extensions, "
                        f"top_level; {type(exc).__name__}: {exc})") from None
    bad = [e for e in image + other if not e.startswith(".")]
    if bad or size <= 0:
        raise IsybError(f"{path}: extensions must start with a dot and max_sidecar_bytes "
                        "must be positive")
    return policy


def split_name(name: str) -> tuple[str, str]:
    """``(stem, extension)`` of a file name: the extension is everything from the first
    dot, in lower case."""
    stem, dot, extension = name.partition(".")
    return stem, (dot + extension).lower()


def sniff(path: Path) -> str | None:
    """What ``path``'s content is, by magic bytes (gzip or not): ``nifti1``, ``nifti2``,
    ``mgh``, ``dicom``, or None for anything else (text, tables, unknown binary)."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(600)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(path, "rb") as stream:
                head = stream.read(600)
    except (OSError, EOFError, zlib.error):  # damaged gzip: no image content seen
        return None
    if len(head) >= 348 and head[344:347] in (b"n+1", b"ni1"):
        return "nifti1"
    if len(head) >= 8 and head[4:7] in (b"n+2", b"ni2"):
        return "nifti2"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if len(head) >= 28 and int.from_bytes(head[:4], "big") == 1:
        dims = [int.from_bytes(head[i:i + 4], "big") for i in range(4, 20, 4)]
        kind = int.from_bytes(head[20:24], "big")
        if all(0 < d < 1 << 15 for d in dims) and kind in (0, 1, 3, 4):
            return "mgh"
    return None


def volumes(path: Path, kind: str) -> tuple[int, ...] | None:
    """The data shape from the header of an image ``sniff`` recognised; None if unreadable.

    Reads the header only, from the bytes (so any name or extension case works)."""
    import nibabel as nib

    header_class = {"nifti1": nib.Nifti1Header, "nifti2": nib.Nifti2Header,
                    "mgh": nib.freesurfer.mghformat.MGHHeader}.get(kind)
    if header_class is None:
        return None
    try:
        with open(path, "rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as stream:
            return tuple(int(d) for d in header_class.from_fileobj(stream).get_data_shape())
    except Exception:  # nibabel raises many types for corrupt headers
        return None


def single_volume(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` holds one volume (3-D, or 4-D+ with one frame)."""
    return all(d == 1 for d in shape[3:])


def read_bidsignore(root: Path) -> list[str]:
    path = root / ".bidsignore"
    if not path.is_file() or path.is_symlink():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Whether ``relative`` matches a ``.bidsignore`` pattern (gitignore-style globs)."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for pattern in patterns:
        anchored = pattern.startswith("/")
        body = pattern.strip("/")
        for candidate in prefixes:
            if fnmatch.fnmatchcase(candidate, body):
                return True
            if not anchored and "/" not in body and fnmatch.fnmatchcase(
                    candidate.rsplit("/", 1)[-1], body):
                return True
    return False


def _walk(root: Path, start: Path) -> list[tuple[str, Path]]:
    """``(relative, path)`` of every entry under ``start`` that is not a folder, plus
    symlinks to folders (not followed), sorted."""
    found = []
    for folder, dirs, files in os.walk(start, followlinks=False):
        here = Path(folder)
        for name in list(dirs):
            if (here / name).is_symlink():
                dirs.remove(name)
                files.append(name)
        for name in files:
            path = here / name
            found.append((path.relative_to(root).as_posix(), path))
    return sorted(found)


class Classifier:
    """Classify the entries of one dataset ``root`` with ``policy``."""

    def __init__(self, root: Path, policy: ReleasePolicy) -> None:
        self.root = Path(root).resolve()
        self.policy = policy
        self.ignore = read_bidsignore(self.root)

    def dataset(self, subjects: list[str] | None = None) -> list[Item]:
        """Every entry of the dataset (or only the top level and ``subjects``)."""
        items = []
        for relative, path in _walk(self.root, self.root):
            first = relative.split("/", 1)[0]
            if subjects is not None and first.startswith("sub-") and "/" in relative \
                    and first[4:] not in subjects:
                continue
            items.append(self._entry(relative, path))
        return _companions(_collisions(items))

    def subject(self, subject: str) -> list[Item]:
        """The entries below ``sub-<subject>``."""
        start = self.root / f"sub-{subject}"
        if start.is_symlink() or not start.is_dir():
            return []
        return _companions(_collisions([self._entry(r, p) for r, p in _walk(self.root, start)]))

    def _entry(self, relative: str, path: Path) -> Item:
        def withheld(reason: str) -> Item:
            return Item(relative, path, "withheld", reason=reason)

        if path.is_symlink():
            try:
                target = path.resolve(strict=True)
            except (OSError, RuntimeError):
                return withheld("broken symlink")
            if target != self.root and self.root not in target.parents:
                return withheld("symlink leading outside the dataset")
            if target.is_dir():
                return withheld("symlink to a folder")
            path = target
        mode = path.lstat().st_mode
        if not stat.S_ISREG(mode):
            return withheld("not a regular file")
        parts = relative.split("/")
        if parts[0] == "sourcedata":
            return withheld("sourcedata/")
        if parts[0] == "derivatives":
            return withheld("the input's own derivatives/")
        if any(p.startswith(".") for p in parts):
            return withheld("hidden file or folder")
        if ignored(relative, self.ignore):
            return withheld("listed in .bidsignore")
        lowered = parts[-1].lower()
        if lowered.endswith(_BACKUP_SUFFIXES) or _BACKUP_FOLDERS & {p.lower() for p in parts[:-1]}:
            return withheld("backup copy")
        content = sniff(path)
        if content == "dicom":
            return withheld("DICOM file")
        item = self._by_place(relative, path, parts, content)
        why = unscrubbable(path, item.output) if item.kind in ("top", "copy") else None
        return withheld(why) if why else item

    def _by_place(self, relative: str, path: Path, parts: list[str],
                  content: str | None) -> Item:
        policy = self.policy
        stem, extension = split_name(parts[-1])
        output = "/".join([*parts[:-1], stem + extension])
        named_image = extension in policy.image_extensions

        def withheld(reason: str) -> Item:
            return Item(relative, path, "withheld", reason=reason)

        if content is not None and not named_image:
            return withheld(f"{content} image content under a non-image name")
        if len(parts) == 1 or not parts[0].startswith("sub-"):
            if len(parts) == 1 and parts[0] in policy.top_level and content is None:
                return Item(relative, path, "top", output=relative)
            if any(fnmatch.fnmatchcase(relative, p) for p in policy.allow) and content is None:
                return Item(relative, path, "top", output=relative)
            if named_image:
                return withheld("image outside a datatype folder")
            if len(parts) == 1 and self._inherited(stem, extension):
                return Item(relative, path, "top", output=stem + extension)
            return withheld("not in the release policy" if len(parts) == 1
                            else f"folder {parts[0]}/ not in the release policy")
        subject = parts[0]
        depth = 2 if len(parts) > 2 and parts[1].startswith("ses-") else 1
        prefix = subject + (f"_{parts[1]}" if depth == 2 else "")
        if not _STEM.match(stem) or not (stem == prefix or stem.startswith(prefix + "_")):
            return withheld(f"name does not start with {prefix}_")
        suffix = parse_entities(stem)[1]
        if any(not _ENTITY.match(p) for p in stem.split("_")[:-1]):
            return withheld("not a BIDS file name")
        if len(parts) == depth + 1:  # beside the datatype folders
            if named_image:
                return withheld("image outside a datatype folder")
            if suffix in policy.subject_tables and extension in (".tsv", ".json"):
                return Item(relative, path, "copy", output=output)
            if extension == ".json" and suffix in policy.all_suffixes:
                return self._sidecar(relative, path, output)
            return withheld("not in the release policy")
        if len(parts) != depth + 2:
            return withheld("file in a subfolder of a datatype folder")
        datatype = parts[depth]
        if datatype not in policy.datatypes:
            return withheld(f"datatype folder {datatype}/ not in the release policy")
        if suffix not in policy.allowed(datatype):
            return withheld(f"suffix {suffix} not allowed in {datatype}/")
        if named_image:
            return self._image(relative, path, output, datatype, suffix, content)
        if extension not in policy.other_extensions:
            return withheld(f"extension {extension or '(none)'} not in the release policy")
        if extension == ".json":
            return self._sidecar(relative, path, output)
        return Item(relative, path, "copy", output=output)

    def _image(self, relative: str, path: Path, output: str, datatype: str, suffix: str,
               content: str | None) -> Item:
        if content not in ("nifti1", "nifti2"):
            return Item(relative, path, "withheld", reason="not a NIfTI image")
        shape = volumes(path, content)
        if shape is None:
            return Item(relative, path, "withheld", reason="image header cannot be read")
        if datatype == "anat" and suffix in self.policy.deface:
            return Item(relative, path, "deface", output=output)
        if single_volume(shape) and suffix not in self.policy.single_volume:
            return Item(relative, path, "withheld",
                        reason=f"single 3-D volume as {suffix} (a head isyb does not deface)")
        return Item(relative, path, "copy", output=output)

    def _sidecar(self, relative: str, path: Path, output: str) -> Item:
        size = path.stat().st_size
        if size > self.policy.max_sidecar_bytes:
            return Item(relative, path, "withheld",
                        reason=f"sidecar larger than {self.policy.max_sidecar_bytes} bytes")
        kind = "top" if "/" not in relative else "copy"
        return Item(relative, path, kind, output=output)

    def _inherited(self, stem: str, extension: str) -> bool:
        """A top-level sidecar or table inherited by the runs (``task-rest_bold.json``)."""
        if extension not in (".json", ".tsv") or not _STEM.match(stem):
            return False
        parts = stem.split("_")
        return parts[-1] in self.policy.all_suffixes and \
            all(_ENTITY.match(p) and not p.startswith("sub-") for p in parts[:-1])


def unscrubbable(path: Path, output: str) -> str | None:
    """Why a table or JSON file cannot go into a release as the scrub would read it
    (None: it can). A ``.tsv`` must be UTF-8 with unique column names and as many fields
    in every row (:func:`isyb.bids.layout.read_table`): in a ragged table, pandas takes the
    extra first field for a row label, so a name there would pass the column allow-list
    unseen. A ``.tsv.gz`` (BIDS physiological and stimulus recordings: no header, columns
    named in the sidecar) must hold numbers only (``n/a``, ``nan`` and empty cells
    allowed), since no column of it can be checked; a corrupt one is withheld too.
    A ``.json`` must be one object that names no key twice."""
    import pandas as pd

    if output.endswith(".tsv"):
        try:
            read_table(path)
        except BIDSInputError:
            return "table is not UTF-8 with one header and as many fields in every row"
    elif output.endswith(".tsv.gz"):
        try:
            pd.read_csv(path, sep="\t", header=None, dtype=float, compression="gzip",
                        na_values=["n/a", "nan", "NaN", ""], keep_default_na=False)
        except (OSError, EOFError, ValueError, UnicodeDecodeError, zlib.error):
            return "compressed table that holds more than numbers"
    elif output.endswith(".json"):
        try:
            value = parse_json(path.read_text(encoding="utf-8"))
        except RepeatedKeyError:
            return "JSON object that names a key twice"
        except (OSError, UnicodeDecodeError, ValueError):
            value = None
        if not isinstance(value, dict):
            return "not a JSON object"
    return None


def _collisions(items: list[Item]) -> list[Item]:
    """Withhold a file whose output name another kept file already has (extension case)."""
    seen: set[str] = set()
    out = []
    for item in sorted(items, key=lambda i: (i.relative != i.output, i.relative)):
        if item.kind != "withheld" and item.output in seen:
            item = Item(item.relative, item.source, "withheld",
                        reason="same name as another file but for the extension's case")
        seen.add(item.output)
        out.append(item)
    return sorted(out, key=lambda i: i.relative)


def _companions(items: list[Item]) -> list[Item]:
    """Withhold a sidecar, table or gradient file of a datatype folder that goes with no
    kept image there (same folder, the image's entities include its entities)."""
    images: dict[str, list[dict[str, str]]] = {}
    policy_images = (".nii.gz", ".nii")
    for item in items:
        if item.kind in ("deface", "copy") and item.output.endswith(policy_images):
            folder, name = item.output.rsplit("/", 1)
            images.setdefault(folder, []).append(parse_entities(name)[0])
    out = []
    for item in items:
        parts = item.output.split("/")
        in_datatype = parts[0].startswith("sub-") and len(parts) >= 3 and \
            not parts[-2].startswith(("sub-", "ses-"))
        if item.kind == "copy" and in_datatype and not item.output.endswith(policy_images):
            folder, name = item.output.rsplit("/", 1)
            wanted = parse_entities(name)[0]
            if not any(all(e.get(k) == v for k, v in wanted.items())
                       for e in images.get(folder, [])):
                item = Item(item.relative, item.source, "withheld",
                            reason="sidecar or table without its image")
        out.append(item)
    return out


def classify_dataset(root: Path, policy: ReleasePolicy,
                     subjects: list[str] | None = None) -> list[Item]:
    """Every entry of ``root`` (or the top level and ``subjects``), classified, by path."""
    return Classifier(root, policy).dataset(subjects)


def classify_subject(root: Path, subject: str, policy: ReleasePolicy) -> list[Item]:
    """The entries below ``root/sub-<subject>``, classified, by path."""
    return Classifier(root, policy).subject(subject)


def filter_scans(text: str, folder: str, outputs: dict[str, str]) -> str:
    """A ``scans.tsv`` table with only the rows of files that are in the output, named as
    they are there.

    ``folder`` is the table's folder and ``outputs`` maps each input path written to the
    output to its output path (both POSIX, relative to the dataset). A row of a withheld
    file would name a file that is not there (a validator error) and its name can identify
    a person, so it is dropped. A table without a ``filename`` column is returned as is.
    """
    lines = text.splitlines()
    if not lines or "filename" not in lines[0].split("\t"):
        return text
    column = lines[0].split("\t").index("filename")
    rows = [lines[0]]
    for line in lines[1:]:
        cells = line.split("\t")
        if len(cells) <= column:
            continue
        output = outputs.get(f"{folder}/{cells[column]}")
        if output is not None:
            cells[column] = output.removeprefix(f"{folder}/")
            rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"


def withheld_counts(items: list[Item]) -> dict[str, int]:
    """How many entries were withheld, per reason (sorted by reason)."""
    return dict(sorted(Counter(i.reason for i in items if i.kind == "withheld").items()))


def withheld_tsv(items: list[Item]) -> str:
    """``withheld.tsv``: one ``path<TAB>reason`` row per withheld entry."""
    rows = ["\t".join(WITHHELD_COLUMNS)]
    rows += [f"{_cell(i.relative)}\t{i.reason}" for i in items if i.kind == "withheld"]
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """A path as one TSV cell (tabs and line breaks in names escaped)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace(
        "\r", "\\r")
