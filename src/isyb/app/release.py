"""The BIDS-App pipeline: ``isyb BIDS_DIR OUTPUT_DIR participant|group``.

``OUTPUT_DIR`` becomes the **release**: a BIDS dataset with every subject's
files, anatomical images defaced, identifying metadata scrubbed
(:mod:`isyb.bids.scrub`), and ``derivatives/isyb`` (masks, provenance, QC).

Participant level, per subject, in four steps:

1. ``deface``: copy the subject's files and deface every anatomical image
   (:func:`isyb.deface.dataset.run_subject`). ``--skip deface`` copies the
   images as they are (for data already defaced).
2. ``scrub``: JSON sidecars, NIfTI headers and ``scans.tsv`` of the copied
   subject, in place; the changes go to ``WORK_DIR/scrub/sub-<label>.tsv``.
   Never skipped: a release is not made without it.
3. ``qc``: MRIQC-style metrics of every T1w, T2w and BOLD run
   (:mod:`isyb.qc.dataset`), measured on the *released* images (defaced,
   scrubbed): the QC pages go into the release, so their pictures must never
   show a face the deface step removed, and each record's input size is the
   released file's.
4. ``derive``: ALFF, fALFF, ReHo, VMHC, FA, MD and CBF of the subject's
   BOLD, DWI and ASL runs (:mod:`isyb.derive.dataset`), computed on the
   *released* files (defaced T1w, scrubbed sidecars), with the default
   settings; normalisations are cached in ``WORK_DIR/derive``.

Group level: dataset-level files (``dataset_description.json`` with
``GeneratedBy`` and ``SourceDatasets``, ``participants.tsv`` checked against
the subjects, ``README``, ``CHANGES``, scrubbed top-level sidecars), the group
QC tables, exclusions and report, the group maps of the derived metrics,
``derivatives/isyb/scrub_report.tsv``, a scan of the whole release for keys the policy forbids,
the release gate (:mod:`isyb.app.gate`: every image accounted for, every anatomical image
past the brain guard, no face on any picture) and ``derivatives/isyb/release_summary.json``,
whose ``complete`` is false when the gate found a violation.

**Resuming.** Each finished subject × step is recorded in
``WORK_DIR/manifest/sub-<label>.json`` with a digest of its inputs (SHA-256
of every input file, the template, the options, the policy) and the isyb
version. A rerun skips a step whose digest is unchanged; a changed input
reruns that step and the steps that depend on it (scrub depends on deface).

**The work folder** holds the manifest, the per-subject scrub reports and the
secret key of the date shifts (``scrub.key``, mode 0600). It must stay out of
the release: it defaults to ``OUTPUT_DIR`` + ``_work`` beside it, and a
work folder inside ``OUTPUT_DIR`` is refused.

**Threads.** Each task uses one thread (torch, ITK; ``--omp-nthreads`` other
than 1 is refused); parallelism comes from running ``--nprocs`` tasks at once. This
keeps the results independent of the executor and of the number of processes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from isyb import __version__
from isyb.app.gate import image_stamps, run_gate, subject_outputs, written_since
from isyb.bids.layout import (
    BIDS_VERSION,
    DERIVATIVES,
    check_separate,
    collect_participants,
    describe_derivatives,
    read_description,
    source_dataset,
)
from isyb.bids.participants import validate_participants
from isyb.bids.scrub import REPORT_COLUMNS, find_leaks, load_policy, scrub_in_place
from isyb.deface.dataset import DatasetJob, copy_file, run_subject
from isyb.deface.engine import DefaceOptions
from isyb.derive.dataset import DeriveOptions
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, Steps, run_tasks
from isyb.io import atomic_path, sweep_partial, write_text
from isyb.templates.registry import Template

STEPS = ("deface", "scrub", "qc", "derive")
SKIPPABLE = ("deface", "qc", "derive")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReleaseOptions:
    """Settings of the pipeline (see ``isyb BIDS_DIR OUTPUT_DIR participant --help``)."""

    deface: DefaceOptions = field(default_factory=DefaceOptions)
    skip: frozenset[str] = frozenset()
    policy: str | None = None
    fd_threshold: float = 0.2
    derive: DeriveOptions = field(default_factory=DeriveOptions)

    def __post_init__(self) -> None:
        unknown = set(self.skip) - set(SKIPPABLE)
        if unknown:
            raise IsybError(f"--skip {', '.join(sorted(unknown))}: only "
                            f"{', '.join(SKIPPABLE)} can be skipped")


def default_work_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}_work"


def check_folders(bids_dir: Path, out_dir: Path, work_dir: Path) -> None:
    """Refuse a folder that is not a BIDS dataset, overlapping folders and a work folder
    inside the release."""
    read_description(bids_dir)
    check_separate(bids_dir, out_dir)
    release, work = out_dir.resolve(), work_dir.resolve()
    if work == release or release in work.parents:
        raise IsybError(f"{work_dir}: the work folder holds the secret date-shift key and "
                        "must not be inside OUTPUT_DIR")


def scrub_key(work_dir: Path) -> bytes:
    """The release's secret date-shift key, made once (random, 32 bytes) and kept."""
    path = work_dir / "scrub.key"
    if path.is_file():
        return bytes.fromhex(path.read_text().strip())
    work_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        stream.write(key.hex() + "\n")
    return key


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class SubjectTask:
    """Everything one subject's participant-level run needs (picklable, for any executor)."""

    bids_dir: Path
    out_dir: Path
    work_dir: Path
    subject: str
    template: Template
    options: ReleaseOptions
    key: bytes


def _manifest_path(task: SubjectTask) -> Path:
    return task.work_dir / "manifest" / f"sub-{task.subject}.json"


def _step_digests(task: SubjectTask) -> dict[str, str]:
    root = task.bids_dir / f"sub-{task.subject}"
    files = {p.relative_to(task.bids_dir).as_posix(): _sha256(p)
             for p in sorted(root.rglob("*")) if p.is_file()}
    options = task.options
    policy = load_policy(options.policy)
    deface = _digest([__version__, json.dumps(files, sort_keys=True),
                      task.template.info["head_sha256"], repr(options.deface),
                      str("deface" in options.skip)])
    scrub = _digest([deface, Path(policy.source).read_text()])
    return {
        "deface": deface,
        "scrub": scrub,
        "derive": _digest([scrub, __version__, options.derive.key()]),
        "qc": _digest([scrub, __version__, str(options.fd_threshold)]),
    }


def release_subject(task: SubjectTask) -> dict:
    """Participant level for one subject: deface, scrub, QC; skip steps already done."""
    from isyb.bids.layout import collect_runs
    from isyb.qc.dataset import QC_RUNS, ParticipantJob, run_participant_job

    sweep_partial(task.out_dir / f"sub-{task.subject}")  # left by a killed run
    sweep_partial(task.out_dir / DERIVATIVES / f"sub-{task.subject}")
    manifest_path = _manifest_path(task)
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    digests = _step_digests(task)
    record: dict = {"subject": task.subject, "steps": {}}

    def done(step: str) -> bool:
        return manifest.get(step, {}).get("digest") == digests[step]

    def finish(step: str, result: dict) -> None:
        manifest[step] = {"digest": digests[step], "isyb_version": __version__,
                          "finished": dt.datetime.now().astimezone().isoformat(
                              timespec="seconds"), **result}
        write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")

    if done("deface"):
        record["steps"]["deface"] = "skipped (done)"
    else:
        if "deface" in task.options.skip:
            _copy_subject(task)
            result = {"images": "copied without defacing (--skip deface)"}
        else:
            job = DatasetJob(task.bids_dir, task.out_dir, task.subject, task.template,
                             task.options.deface)
            images = run_subject(job)["images"]
            result = {"defaced": sum(i["status"] == "ok" for i in images),
                      "failed": [{"file": i["file"], "error": i["error"]}
                                 for i in images if i["status"] != "ok"]}
        manifest.pop("scrub", None)  # the copies are new: scrub them again
        finish("deface", result)
        record["steps"]["deface"] = "done"
    record["deface"] = {k: v for k, v in manifest["deface"].items()
                        if k in ("defaced", "failed", "images")}

    if done("scrub"):
        record["steps"]["scrub"] = "skipped (done)"
    else:
        # The subject's copies and its derivatives: masks are written with the
        # source image's header, so they carry its descrip too.
        roots = (task.out_dir / f"sub-{task.subject}",
                 task.out_dir / DERIVATIVES / f"sub-{task.subject}")
        files = [p.relative_to(task.out_dir) for root in roots
                 for p in sorted(root.rglob("*")) if p.is_file()]
        changes = scrub_in_place(task.out_dir, files, load_policy(task.options.policy), task.key)
        table = pd.DataFrame([c.__dict__ for c in changes], columns=REPORT_COLUMNS)
        with atomic_path(task.work_dir / "scrub" / f"sub-{task.subject}.tsv") as tmp:
            table.to_csv(tmp, sep="\t", index=False)
        finish("scrub", {"changes": len(changes)})
        record["steps"]["scrub"] = "done"

    if "qc" in task.options.skip:
        record["steps"]["qc"] = "skipped (--skip qc)"
    elif done("qc"):
        record["steps"]["qc"] = "skipped (done)"
    else:
        # The released copies, never the source: the pages' pictures go into the release.
        runs = collect_runs(task.out_dir, [task.subject], QC_RUNS)
        results = [run_participant_job(ParticipantJob(task.out_dir, task.out_dir, run,
                                                      task.options.fd_threshold,
                                                      metadata_dir=task.bids_dir))
                   for run in runs]
        finish("qc", {"runs": len(results),
                      "failed": [r["source"] for r in results if r["status"] != "ok"]})
        record["steps"]["qc"] = "done"
    if "derive" in task.options.skip:
        record["steps"]["derive"] = "skipped (--skip derive)"
    elif done("derive"):
        record["steps"]["derive"] = "skipped (done)"
    else:
        from isyb.derive.dataset import RunJob, scan_subject
        from isyb.derive.dataset import run_subject as derive_subject

        subject = scan_subject(task.out_dir, f"sub-{task.subject}")
        results = derive_subject(RunJob(task.out_dir, task.out_dir, task.work_dir / "derive",
                                        subject, task.options.derive)) if subject.runs else []
        finish("derive", {"runs": len(results),
                          "failed": [{"file": r["source"], "error": r["error"]}
                                     for r in results if r["status"] != "ok"]})
        record["steps"]["derive"] = "done"
    if "derive" in manifest:
        record["derive"] = {k: v for k, v in manifest["derive"].items()
                            if k in ("runs", "failed")}
    # What the steps wrote, for the release gate: recorded after the last step writes.
    manifest["outputs"] = subject_outputs(task.out_dir, task.subject)
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return record


def _copy_subject(task: SubjectTask) -> None:
    root = task.bids_dir / f"sub-{task.subject}"
    for path in sorted(root.rglob("*")):
        if path.is_file():
            copy_file(path, task.out_dir / path.relative_to(task.bids_dir))


def participant_tasks(bids_dir: Path, out_dir: Path, work_dir: Path, template: Template,
                      options: ReleaseOptions, labels: list[str] | None) -> list[SubjectTask]:
    """One task per subject (all, or ``labels``), after checking the inputs."""
    check_folders(bids_dir, out_dir, work_dir)
    validate_participants(bids_dir)
    load_policy(options.policy)
    subjects = collect_participants(bids_dir, labels or None)
    if not subjects:
        raise IsybError(f"{bids_dir}: no sub-* folders")
    key = scrub_key(work_dir)
    return [SubjectTask(bids_dir, out_dir, work_dir, s, template, options, key)
            for s in subjects]


def release_participants(bids_dir: Path, out_dir: Path, work_dir: Path, template: Template,
                         options: ReleaseOptions, *, labels: list[str] | None = None,
                         executor: ExecutorOptions | None = None,
                         progress: bool = True) -> list[dict]:
    """Participant level: every subject (all, or ``labels``) as a task of ``executor``
    (default: one local process), each with one thread; one :func:`release_subject`
    record per subject, in label order."""
    executor = executor or ExecutorOptions()
    if executor.threads not in (None, 1):
        raise IsybError("--omp-nthreads: the release runs one thread per task, so that its "
                        "files are the same on every executor")
    tasks = participant_tasks(bids_dir, out_dir, work_dir, template, options, labels)
    steps = Steps(lambda _: len(STEPS),
                  _StepsDone(dt.datetime.now().astimezone().replace(microsecond=0)))
    records = {record["subject"]: record for record in run_tasks(
        release_subject, tasks, replace(executor, threads=1), progress=progress,
        desc="release steps", steps=steps)}
    return [records[task.subject] for task in tasks]


@dataclass(frozen=True)
class _StepsDone:
    """Steps of a subject finished since ``since``, from its manifest (progress bar)."""

    since: dt.datetime

    def __call__(self, task: SubjectTask) -> int:
        try:
            manifest = json.loads(_manifest_path(task).read_text())
            return sum(dt.datetime.fromisoformat(manifest[step]["finished"]) >= self.since
                       for step in STEPS if step in manifest)
        except (OSError, ValueError, KeyError, TypeError):
            return 0


README_NOTE = """
## Release notes (isyb)

This release was prepared with isyb {version} on {date}:

- anatomical images: face masked with template `{template}`, method `{method}`,
  brain guard {guard} mm (per-image provenance under `derivatives/isyb`);
- metadata: identifying keys removed or dates shifted by a secret per-subject
  offset, as listed in `derivatives/isyb/scrub_report.tsv`;
- quality control: `derivatives/isyb/group_*.tsv`, `exclusions.tsv`,
  `group_qc.html`.
"""


def release_group(bids_dir: Path, out_dir: Path, work_dir: Path, template: Template,
                  options: ReleaseOptions, *, strict: bool = False) -> dict:
    """Group level: dataset files, QC tables and report, scrub report, leak scan, the
    release gate (:mod:`isyb.app.gate`; ``strict``: a face on a render of a released
    anatomical image fails it) and the summary, whose ``complete`` is the gate's verdict."""
    from isyb.deface.report import write_summary
    from isyb.qc.dataset import qc_group, read_records
    from isyb.qc.rules import ExclusionRules

    check_folders(bids_dir, out_dir, work_dir)
    validate_participants(bids_dir)
    policy = load_policy(options.policy)
    subjects = collect_participants(bids_dir)
    manifests = {s: json.loads(p.read_text()) for s in subjects
                 if (p := work_dir / "manifest" / f"sub-{s}.json").is_file()}
    if not manifests:
        raise IsybError(f"{work_dir}: no participant-level results; run the participant "
                        "level first")
    for path in sweep_partial(out_dir):
        log.warning("removed %s, left by an interrupted run", path)
    before = image_stamps(out_dir)  # the gate accepts the images this run writes
    today = dt.date.today().isoformat()
    top = [p for p in sorted(bids_dir.iterdir()) if p.is_file()
           and p.name not in ("dataset_description.json", "README", "README.md", "CHANGES")]
    for path in top:
        copy_file(path, out_dir / path.name)
    changes = scrub_in_place(out_dir, [Path(p.name) for p in top], policy, scrub_key(work_dir))
    _write_description(bids_dir, out_dir, template, options)
    _write_readme_and_changes(bids_dir, out_dir, template, options, today)

    reports = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
               for p in sorted((work_dir / "scrub").glob("sub-*.tsv"))]
    reports.append(pd.DataFrame([c.__dict__ for c in changes], columns=REPORT_COLUMNS))
    scrub_report = pd.concat(reports, ignore_index=True)
    with atomic_path(out_dir / DERIVATIVES / "scrub_report.tsv") as tmp:
        scrub_report.to_csv(tmp, sep="\t", index=False)

    summary: dict = {"isyb_version": __version__, "date": today, "template": template.name,
                     "method": options.deface.method, "subjects": len(subjects),
                     "participant_level_done": len(manifests),
                     "scrub_changes": len(scrub_report)}
    deface_records = [json.loads(p.read_text()) for s in subjects
                      if (p := out_dir / DERIVATIVES / "logs" / f"sub-{s}.json").is_file()]
    if deface_records:
        write_summary(out_dir / DERIVATIVES / "index.html", deface_records, out_dir / DERIVATIVES)
    summary["deface_failures"] = [{"subject": s, **f} for s, m in manifests.items()
                                  for f in m.get("deface", {}).get("failed", [])]
    if "qc" not in options.skip and read_records(out_dir):
        qc = qc_group(out_dir, ExclusionRules(fd_threshold=options.fd_threshold))
        inside = out_dir.resolve()  # paths inside the release: no local path is published
        qc["tables"] = [Path(p).resolve().relative_to(inside).as_posix() for p in qc["tables"]]
        for key in ("exclusions", "report"):
            qc[key] = Path(qc[key]).resolve().relative_to(inside).as_posix()
        summary["qc"] = qc
    if "derive" not in options.skip:
        from isyb.derive.dataset import derive_group
        from isyb.derive.dataset import read_records as derive_records

        summary["derive"] = derive_group(out_dir, space=options.derive.space,
                                         metrics=options.derive.metrics) \
            if derive_records(out_dir) else "no BOLD, DWI or ASL runs"
    leaks = find_leaks(out_dir, policy)
    summary["leak_scan"] = {"forbidden_keys_found": len(leaks), "findings": leaks[:50]}
    recorded = {name: digest for m in manifests.values()
                for name, digest in m.get("outputs", {}).items()}
    gate = run_gate(out_dir, recorded, written=written_since(out_dir, before), strict=strict)
    summary["gate"] = gate.to_json()
    summary["complete"] = gate.passed
    write_text(out_dir / DERIVATIVES / "release_summary.json",
               json.dumps(summary, indent=2) + "\n")
    return summary


def _write_description(bids_dir: Path, out_dir: Path, template: Template,
                       options: ReleaseOptions) -> None:
    """The release's ``dataset_description.json`` (the source's, with isyb added to
    ``GeneratedBy``) and isyb's entry in ``derivatives/isyb/dataset_description.json``
    (merged with the entries of other isyb commands that wrote there)."""
    source = read_description(bids_dir)
    generated = {"Name": "isyb", "Version": __version__,
                 "Description": f"face masking (template {template.name}, method "
                                f"{options.deface.method}), metadata scrubbing, QC"}
    release = dict(source)
    release["DatasetType"] = "raw"
    release.setdefault("BIDSVersion", BIDS_VERSION)
    release["GeneratedBy"] = [*source.get("GeneratedBy", []), generated]
    release["SourceDatasets"] = [source_dataset(bids_dir, source)]
    write_text(out_dir / "dataset_description.json", json.dumps(release, indent=2) + "\n")
    describe_derivatives(out_dir, bids_dir,
                         name=f"isyb outputs for {source.get('Name', 'the release')}",
                         generated_by=generated)


def _write_readme_and_changes(bids_dir: Path, out_dir: Path, template: Template,
                              options: ReleaseOptions, today: str) -> None:
    readme = next((bids_dir / n for n in ("README", "README.md") if (bids_dir / n).is_file()),
                  None)
    text = readme.read_text() if readme else f"# {out_dir.name}\n"
    note = README_NOTE.format(version=__version__, date=today, template=template.name,
                              method=options.deface.method, guard=options.deface.guard_mm)
    write_text(out_dir / (readme.name if readme else "README"), text.rstrip() + "\n" + note)
    changes = (bids_dir / "CHANGES").read_text() if (bids_dir / "CHANGES").is_file() else ""
    entry = (f"1.0.0 {today}\n  - Release prepared with isyb {__version__}: faces masked "
             f"(template {template.name}, method {options.deface.method}), identifying "
             "metadata scrubbed, quality control added under derivatives/isyb.\n")
    write_text(out_dir / "CHANGES", entry + ("\n" + changes if changes else ""))
