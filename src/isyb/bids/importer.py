"""``isyb import``: a flat folder of dcm2niix outputs into a BIDS dataset.

Input: one folder with ``<stem>.nii[.gz]`` + ``<stem>.json`` pairs (and
``<stem>.bval``/``<stem>.bvec`` for diffusion, and any ``<stem>_<name>.tsv``
such as an ``aslcontext.tsv`` prepared by hand), as dcm2niix writes them.

A **mapping table** (TSV, one row per rule, first match wins) turns a series
into a BIDS name:

=================== ==========================================================
``series``          wildcard pattern (``fnmatch``, case-insensitive) on the
                    sidecar's ``SeriesDescription`` (else ``ProtocolName``)
``datatype``        ``anat``, ``func``, ``dwi``, ``perf``, ``fmap``...
``suffix``          ``T1w``, ``bold``, ``dwi``, ``asl``...
``entities``        optional, e.g. ``task-rest`` or ``acq-highres``
=================== ==========================================================

The subject (and optionally the session) comes from the file name through a
regular expression with a named group (``--subject-pattern``, default: the
text before the first ``_``); labels keep only letters and digits. Series of a
subject that map to the same name get ``run-1``, ``run-2``... in
``SeriesNumber`` order. A ``func`` series without ``TaskName`` gets it from its
``task`` entity. Series that no rule matches are reported and left out, never
guessed. Files are copied, never moved; an existing target is left alone when
identical and is an error otherwise. Scrubbing happens later, in the release
pipeline: the imported dataset is the lab's raw data.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from isyb import __version__
from isyb.bids.layout import BIDS_VERSION, check_separate, read_description, read_json, read_table
from isyb.errors import IsybError
from isyb.io import atomic_path, write_text

DEFAULT_SUBJECT_PATTERN = r"^(?P<subject>[^_]+)_"
MAP_COLUMNS = ("series", "datatype", "suffix")
#: The ``GeneratedBy`` name of the datasets ``isyb import`` makes (see :func:`import_flat`).
IMPORTER = "isyb import"


@dataclass(frozen=True)
class Rule:
    series: str
    datatype: str
    suffix: str
    entities: str


@dataclass(frozen=True)
class Series:
    """One dcm2niix output: its image, sidecar and the BIDS name it will get."""

    image: Path
    sidecar: Path
    subject: str
    session: str | None
    rule: Rule
    number: int


def read_map(path: Path) -> list[Rule]:
    """The mapping table, checked.

    A file that is not a tab-separated UTF-8 table (empty, binary, unreadable) is a
    one-line error naming it, raised before :func:`import_flat` writes anything.
    """
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as exc:
        raise IsybError(f"{path}: cannot read the mapping table; expected tab-separated "
                        f"UTF-8 text with a header row ({exc})") from None
    missing = [c for c in MAP_COLUMNS if c not in table]
    if missing:
        raise IsybError(f"{path}: mapping table lacks column(s) {', '.join(missing)} "
                        "(needs series, datatype, suffix, and optionally entities)")
    rules = []
    for row in table.itertuples():
        entities = str(getattr(row, "entities", "") or "").strip()
        if entities in ("n/a", "-"):
            entities = ""
        for part in filter(None, entities.split("_")):
            if not re.fullmatch(r"[a-z]+-[A-Za-z0-9]+", part):
                raise IsybError(f"{path}: bad entity {part!r} in row {row.Index + 2}; "
                                "expected key-value like task-rest")
        if not re.fullmatch(r"[A-Za-z0-9]+", row.suffix) or not re.fullmatch(r"[a-z]+",
                                                                              row.datatype):
            raise IsybError(f"{path}: row {row.Index + 2}: bad datatype or suffix")
        rules.append(Rule(row.series, row.datatype, row.suffix, entities))
    if not rules:
        raise IsybError(f"{path}: the mapping table has no rows")
    return rules


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def find_series(source: Path, rules: list[Rule], subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
                session_pattern: str | None = None) -> tuple[list[Series], list[str]]:
    """The series of ``source`` that a rule maps, and the names of those none maps."""
    if not source.is_dir():
        raise IsybError(f"{source}: not a folder")
    try:
        subject_re = re.compile(subject_pattern)
        session_re = re.compile(session_pattern) if session_pattern else None
    except re.error as exc:
        raise IsybError(f"bad --subject-pattern or --session-pattern ({exc})") from None
    if "subject" not in subject_re.groupindex:
        raise IsybError("--subject-pattern needs a named group (?P<subject>...)")
    found, unmatched = [], []
    for image in sorted(source.iterdir()):
        if not image.name.endswith((".nii.gz", ".nii")):
            continue
        stem = image.name.removesuffix(".gz").removesuffix(".nii")
        sidecar = image.with_name(f"{stem}.json")
        if not sidecar.is_file():
            unmatched.append(f"{image.name} (no JSON sidecar)")
            continue
        metadata = read_json(sidecar)
        description = str(metadata.get("SeriesDescription") or metadata.get("ProtocolName")
                          or "")
        rule = next((r for r in rules if fnmatch.fnmatch(description.lower(),
                                                          r.series.lower())), None)
        match = subject_re.search(image.name)
        if rule is None or match is None or not _label(match.group("subject")):
            why = "no subject in the name" if rule is not None else f"series {description!r}"
            unmatched.append(f"{image.name} ({why})")
            continue
        session = None
        if session_re is not None:
            found_session = session_re.search(image.name)
            session = _label(found_session.group("session")) if found_session else None
        found.append(Series(image, sidecar, _label(match.group("subject")), session, rule,
                            int(metadata.get("SeriesNumber", 0) or 0)))
    return found, unmatched


def bids_names(series: list[Series]) -> dict[Path, Path]:
    """Relative BIDS path (without extension) for every series' image."""
    groups: dict[tuple, list[Series]] = {}
    for item in series:
        key = (item.subject, item.session, item.rule.datatype, item.rule.entities,
               item.rule.suffix)
        groups.setdefault(key, []).append(item)
    names = {}
    for (subject, session, datatype, entities, suffix), members in groups.items():
        members.sort(key=lambda s: (s.number, s.image.name))
        for run, item in enumerate(members, start=1):
            parts = [f"sub-{subject}"] + ([f"ses-{session}"] if session else [])
            parts += [p for p in entities.split("_") if p]
            if len(members) > 1:
                parts.append(f"run-{run}")
            folder = Path(f"sub-{subject}") / (f"ses-{session}" if session else "") / datatype
            names[item.image] = folder / "_".join([*parts, suffix])
    return names


def _copy(source: Path, target: Path) -> None:
    if target.exists():
        if target.read_bytes() == source.read_bytes():
            return
        raise IsybError(f"{target}: exists and differs from {source.name}; not overwritten")
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _made_by_import(bids_dir: Path) -> bool:
    """Whether ``bids_dir`` is new, empty, or a dataset ``isyb import`` made."""
    if not bids_dir.exists() or (bids_dir.is_dir() and not any(bids_dir.iterdir())):
        return True
    try:
        generated = json.loads((bids_dir / "dataset_description.json").read_text()).get(
            "GeneratedBy", [])
        return any(isinstance(g, dict) and g.get("Name") == IMPORTER for g in generated)
    except (OSError, ValueError, AttributeError):
        return False


def import_flat(source: Path, bids_dir: Path, map_path: Path, *,
                subject_pattern: str = DEFAULT_SUBJECT_PATTERN,
                session_pattern: str | None = None, name: str | None = None,
                merge: bool = False) -> dict:
    """Copy the mapped series of ``source`` into the BIDS dataset ``bids_dir``.

    ``bids_dir`` is made (with a ``dataset_description.json`` named ``name``, whose
    ``GeneratedBy`` names ``isyb import``) when new or empty. A non-empty folder that
    ``isyb import`` did not make is refused unless ``merge``: importing into another
    dataset by mistake would silently mix two cohorts. A folder it made is filled
    again (a rerun resumes). An existing dataset must be readable. Neither folder may
    contain the other.

    An existing ``dataset_description.json`` is kept as it is, never rewritten or merged
    into: it is the dataset's own (``Name``, ``License``, ``Authors``, its ``GeneratedBy``,
    or what the lab added to one ``isyb import`` made, and ``name`` is then ignored). No
    ``isyb import`` entry is added to it either, as that would make a dataset imported
    into with ``merge`` pass as one ``isyb import`` made, and later imports would no
    longer need ``merge``.
    """
    check_separate(source, bids_dir)
    if not merge and not _made_by_import(bids_dir):
        raise IsybError(f"{bids_dir}: exists, is not empty and was not made by isyb import; "
                        "choose a new folder, or pass --merge to add to this dataset")
    series, unmatched = find_series(source, read_map(map_path), subject_pattern,
                                    session_pattern)
    if not series:
        raise IsybError(f"{source}: no series matched the mapping table "
                        f"({len(unmatched)} left out)")
    names = bids_names(series)
    description = bids_dir / "dataset_description.json"
    if description.is_file():
        read_description(bids_dir)  # a broken one is an error, not silently kept
    # every input is read before the first file is written
    sidecars = {item.sidecar: read_json(item.sidecar) for item in series}
    participants = bids_dir / "participants.tsv"
    if participants.is_file() and "participant_id" not in read_table(participants)[0]:
        raise IsybError(f"{participants}: no participant_id column")
    if not description.is_file():
        write_text(description, json.dumps({"Name": name or bids_dir.name,
                                            "BIDSVersion": BIDS_VERSION,
                                            "DatasetType": "raw",
                                            "GeneratedBy": [{"Name": IMPORTER,
                                                             "Version": __version__}]},
                                           indent=2) + "\n")
    copied = []
    for item in series:
        target = bids_dir / names[item.image]
        extension = ".nii.gz" if item.image.name.endswith(".gz") else ".nii"
        _copy(item.image, Path(f"{target}{extension}"))
        metadata = dict(sidecars[item.sidecar])
        task = re.search(r"(?:^|_)task-([A-Za-z0-9]+)", item.rule.entities)
        if item.rule.datatype == "func" and task and "TaskName" not in metadata:
            metadata["TaskName"] = task.group(1)
        sidecar = Path(f"{target}.json")
        text = json.dumps(metadata, indent=2) + "\n"
        if sidecar.exists() and sidecar.read_text() != text:
            raise IsybError(f"{sidecar}: exists and differs; not overwritten")
        write_text(sidecar, text)
        stem = item.image.name.removesuffix(".gz").removesuffix(".nii")
        for extra in (".bval", ".bvec"):
            if (item.image.parent / f"{stem}{extra}").is_file():
                _copy(item.image.parent / f"{stem}{extra}", Path(f"{target}{extra}"))
        base = str(target)[: -len(item.rule.suffix)]
        for table in sorted(item.image.parent.glob(f"{stem}_*.tsv")):
            _copy(table, Path(f"{base}{table.name[len(stem) + 1:]}"))
        copied.append(str(target.relative_to(bids_dir)) + extension)
    subjects = sorted({f"sub-{s.subject}" for s in series})
    if participants.is_file():
        table = pd.read_csv(participants, sep="\t", dtype=str, keep_default_na=False)
        new = [s for s in subjects if s not in set(table["participant_id"])]
        table = pd.concat([table, pd.DataFrame({"participant_id": new})], ignore_index=True)
    else:
        table = pd.DataFrame({"participant_id": subjects})
    write_text(participants, table.fillna("n/a").to_csv(sep="\t", index=False))
    return {"subjects": len(subjects), "images": len(copied), "files": copied,
            "left_out": unmatched}
