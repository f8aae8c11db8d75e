"""The release's dataset-level text: ``dataset_description.json``, README and CHANGES.

All three are **written by isyb, never copied** from the source dataset: a
source README, CHANGES or description can hold a contact's phone number, a
participant's name or a scan date. What the release takes from the source
is its ``Name``, ``License`` and ``Authors`` (set them in the source's
``dataset_description.json``); a value among them that holds one of the
dataset's identifying values (:mod:`isyb.bids.leaks`) is redacted.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from isyb import __version__
from isyb.bids.classify import Item
from isyb.bids.identifiers import REDACTED, Needles
from isyb.bids.layout import BIDS_VERSION, describe_derivatives, read_description, source_dataset
from isyb.bids.scrub import Change, Policy, redact_text, scrub_in_place
from isyb.deface.dataset import copy_file
from isyb.io import move_tree, write_text
from isyb.templates.registry import Template

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from isyb.app.release import ReleaseOptions

README_NOTE = """
## Release notes (isyb)

This release was prepared with isyb {version} on {date}:

- anatomical images: face masked with template `{template}`, method `{method}`,
  brain guard {guard} mm (per-image provenance under `derivatives/isyb`);
- metadata: only the acquisition parameters and table columns of the
  scrubbing policy kept, identifying text redacted, dates shifted by a secret
  per-subject offset, as listed in `derivatives/isyb/scrub_report.tsv`; the
  release searched for every identifying value of the source (`leak_scan` in
  `derivatives/isyb/release_summary.json`);
- quality control: `derivatives/isyb/group_*.tsv`, `exclusions.tsv`,
  `group_qc.html`.
"""


DESCRIPTION_FIELDS = ("Name", "License", "Authors")
#: The names BIDS allows for a dataset's README. The release's README is written by isyb
#: under the first of them the source uses (:func:`readme_name`); no source README is
#: copied, and the source's other READMEs are withheld.
README_NAMES = ("README.md", "README.rst", "README.txt", "README")
#: The top-level files that isyb writes for the release instead of copying the source's.
WRITTEN_BY_ISYB = ("dataset_description.json", *README_NAMES, "CHANGES")


def readme_name(bids_dir: Path) -> str:
    """The name of the release's README: the first of :data:`README_NAMES` in ``bids_dir``."""
    return next((n for n in README_NAMES if (bids_dir / n).is_file()), "README")


def withhold_other_readmes(items: list[Item], bids_dir: Path) -> list[Item]:
    """``items`` with each source README that the release's README does not replace
    marked withheld (free text, like the one replaced)."""
    replaced = readme_name(bids_dir)
    return [Item(i.relative, i.source, "withheld",
                 reason="another README (the release's README is written by isyb)")
            if i.kind == "top" and i.output in README_NAMES and i.output != replaced else i
            for i in items]


def publish_top_level(top: list[Item], bids_dir: Path, out_dir: Path, stage: Path,
                      policy: Policy, key: bytes, needles: Needles) -> list[Change]:
    """Copy the top-level files ``top`` into a fresh ``stage`` folder, scrub them there
    (:func:`isyb.bids.scrub.scrub_in_place`) and move them into the release: an error or a
    kill before the scrub has finished leaves no unscrubbed file in the release, as the
    participant level's staging does for the subjects' files. Any other file at the top
    of the release (one an earlier run or an older isyb published, now withheld) is
    removed, but for those isyb writes itself. Returns the scrub's changes."""
    keep = {i.output for i in top} | {"dataset_description.json", "CHANGES",
                                      readme_name(bids_dir)}
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else ():
        if path.is_file() and path.name not in keep:
            log.warning("removed %s from the release: no longer in it", path.name)
            path.unlink()
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    for item in top:
        copy_file(item.source, stage / item.output)
    changes = scrub_in_place(stage, [Path(i.output) for i in top], policy, key,
                             needles=needles)
    move_tree(stage, out_dir)
    return changes


def write_description(bids_dir: Path, out_dir: Path, template: Template,
                       options: ReleaseOptions, needles: Needles | None = None) -> dict:
    """Write and return the release's ``dataset_description.json``: built by isyb from
    the source's ``Name``, ``License`` and ``Authors`` (a value holding one of the
    dataset's identifying values is redacted), never copied, so no other field of the
    source (acknowledgements, ethics approvals, contacts) reaches the release; and
    isyb's entry in ``derivatives/isyb/dataset_description.json`` (merged with the
    entries of other isyb commands that wrote there)."""
    source = read_description(bids_dir)
    generated = {"Name": "isyb", "Version": __version__,
                 "Description": f"face masking (template {template.name}, method "
                                f"{options.deface.method}), metadata scrubbing, QC"}
    release: dict = {"Name": source.get("Name") or "isyb release", "BIDSVersion": BIDS_VERSION,
                     "DatasetType": "raw"}
    release.update({k: source[k] for k in DESCRIPTION_FIELDS[1:] if source.get(k)})
    for key in DESCRIPTION_FIELDS:
        values = release.get(key)
        if isinstance(values, list):
            release[key] = [REDACTED if redact_text(str(v), False, needles) else v
                            for v in values]
        elif values is not None and redact_text(str(values), False, needles):
            release[key] = REDACTED
    release["GeneratedBy"] = [generated]
    release["SourceDatasets"] = [source_dataset(bids_dir, source)]
    write_text(out_dir / "dataset_description.json", json.dumps(release, indent=2) + "\n")
    describe_derivatives(out_dir, bids_dir,
                         name=f"isyb outputs for {release['Name']}",
                         generated_by=generated)
    return release


README_TEMPLATE = """# {name}

This dataset was released with isyb. This README, CHANGES and
`dataset_description.json` are written by isyb from its template and the
source dataset's `Name`, `License` and `Authors`; no other text of the source
is copied.

- License: {license}
- Authors: {authors}
"""


def write_readme_and_changes(bids_dir: Path, out_dir: Path, template: Template,
                              options: ReleaseOptions, today: str, description: dict) -> None:
    """README and CHANGES from isyb's templates (the source's are never copied: they
    can hold names, phone numbers, dates). The README keeps the source's file name."""
    readme = readme_name(bids_dir)
    authors = description.get("Authors") or ["not given"]
    text = README_TEMPLATE.format(name=description["Name"],
                                  license=description.get("License", "not given"),
                                  authors=", ".join(map(str, authors)))
    note = README_NOTE.format(version=__version__, date=today, template=template.name,
                              method=options.deface.method, guard=options.deface.guard_mm)
    write_text(out_dir / readme, text + note)
    entry = (f"1.0.0 {today}\n  - Release prepared with isyb {__version__}: faces masked "
             f"(template {template.name}, method {options.deface.method}), identifying "
             "metadata scrubbed, quality control added under derivatives/isyb.\n")
    write_text(out_dir / "CHANGES", entry)
