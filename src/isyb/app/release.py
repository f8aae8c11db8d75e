"""The BIDS-App pipeline: ``isyb BIDS_DIR OUTPUT_DIR participant|group``.

``OUTPUT_DIR`` becomes the **release**: a BIDS dataset with every subject's
files, anatomical images defaced, identifying metadata scrubbed
(:mod:`isyb.bids.scrub`), and ``derivatives/isyb`` (masks, provenance, QC).

Participant level, per subject, in four steps:

1. ``deface``: copy the subject's files that the release policy allows and
   deface every anatomical image (:func:`isyb.deface.dataset.run_subject`) into
   the staging folder ``WORK_DIR/stage/sub-<label>``; everything else is
   withheld (:mod:`isyb.bids.classify`, deny by default). ``--skip deface``
   copies the allowed images as they are (for data already defaced).
2. ``scrub``: JSON sidecars, NIfTI headers and tables of a fresh copy of the
   staged subject; the changes go to ``WORK_DIR/scrub/sub-<label>.tsv``.
   Only then are the files moved into ``OUTPUT_DIR``, so the release never
   holds an unscrubbed file, even after a kill. Never skipped: a release is
   not made without it.
3. ``qc``: MRIQC-style metrics of every T1w, T2w and BOLD run
   (:mod:`isyb.qc.dataset`), measured on the *released* images (defaced,
   scrubbed): the QC pages go into the release, so their pictures must never
   show a face the deface step removed, and each record's input size is the
   released file's.
4. ``derive``: ALFF, fALFF, ReHo, VMHC, FA, MD and CBF of the subject's
   BOLD, DWI and ASL runs (:mod:`isyb.derive.dataset`), computed on the
   *released* files (defaced T1w, scrubbed sidecars), with the default
   settings; normalisations are cached in ``WORK_DIR/derive``.

Group level: refused (exit 1, ``release_summary.json`` with ``"complete":
false`` and the subjects named) while any subject's participant level is
missing or unfinished; otherwise dataset-level files
(``dataset_description.json``, ``README`` and ``CHANGES`` written from isyb's
template, :mod:`isyb.app.dataset_files`; ``participants.tsv`` checked against
the subjects; the top-level sidecars and tables the release policy allows,
scrubbed), the group QC tables, exclusions and report, the group maps of the
derived metrics, ``derivatives/isyb/scrub_report.tsv``, the leak scan
(:mod:`isyb.bids.leaks`: every identifying value of the input searched for in
the whole release; a hit marks the release incomplete), and
``derivatives/isyb/release_summary.json`` (with the number of withheld files
per reason; the list itself, ``WORK_DIR/withheld.tsv``, stays out of the
release, as file names can identify people, e.g. by a date).

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
import math
import numbers
import os
import secrets
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from isyb import __version__
from isyb.app import dataset_files
from isyb.app.checks import check_executor, check_inputs
from isyb.app.gate import image_stamps, run_gate, subject_outputs, written_since
from isyb.app.references import withhold_faces
from isyb.bids.classify import (
    Item,
    classify_dataset,
    classify_subject,
    load_release_policy,
    withheld_counts,
    withheld_tsv,
)
from isyb.bids.layout import DERIVATIVES
from isyb.bids.leaks import dataset_needles, scan_release
from isyb.bids.scrub import REPORT_COLUMNS, load_policy, scrub_in_place
from isyb.deface.dataset import (
    DatasetJob,
    copy_allowed,
    copy_file,
    forget_input_stamps,
    run_subject,
)
from isyb.deface.engine import DefaceOptions
from isyb.derive.dataset import DeriveOptions
from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, Steps, run_tasks
from isyb.io import atomic_path, move_tree, sweep_partial, write_text
from isyb.templates.fetch import sha256_file
from isyb.templates.registry import Template

STEPS = ("deface", "scrub", "qc", "derive")
#: The deface step's record of a subject copied as it was (``--skip deface``).
COPIED_AS_IS = "copied without defacing (--skip deface)"
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
    release_policy: str | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.fd_threshold, numbers.Real) and math.isfinite(self.fd_threshold)
                and self.fd_threshold > 0):
            raise IsybError(f"--fd-threshold must be a finite number > 0 mm, got "
                            f"{self.fd_threshold!r}")
        unknown = set(self.skip) - set(SKIPPABLE)
        if unknown:
            raise IsybError(f"--skip {', '.join(sorted(unknown))}: only "
                            f"{', '.join(SKIPPABLE)} can be skipped")


def release_date() -> str:
    """The date written into the release's README and CHANGES (ISO 8601).

    Today's local date, unless ``SOURCE_DATE_EPOCH`` (the reproducible-builds.org
    convention: seconds since 1970 UTC) is set: then that moment's UTC date, so that
    rebuilding a release on another day, or on a cluster whose run crosses midnight,
    gives the same bytes. A value that is not an integer is a one-line error.
    """
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not epoch:
        return dt.date.today().isoformat()
    try:
        moment = dt.datetime.fromtimestamp(int(epoch), tz=dt.UTC)
    except (ValueError, OverflowError, OSError):
        raise IsybError(f"SOURCE_DATE_EPOCH must be whole seconds since 1970 UTC, "
                        f"got {epoch!r}") from None
    return moment.date().isoformat()


def default_work_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}_work"


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
    options = task.options
    release_policy = load_release_policy(options.release_policy)
    # What the release policy keeps (read from inside the dataset only) and what it withholds.
    files = {i.relative: sha256_file(i.source) if i.kind != "withheld" else i.reason
             for i in classify_subject(task.bids_dir, task.subject, release_policy)}
    files["release policy"] = Path(release_policy.source).read_text()
    policy = load_policy(options.policy)
    deface = _digest([__version__, json.dumps(files, sort_keys=True),
                      task.template.info["head_sha256"], repr(options.deface),
                      str("deface" in options.skip)])
    # The values redacted in this subject's text come from the whole dataset.
    needles = sorted(dataset_needles(task.bids_dir, policy).identifiers)
    scrub = _digest([deface, Path(policy.source).read_text(), *needles])
    return {
        "deface": deface,
        "scrub": scrub,
        "derive": _digest([scrub, __version__, options.derive.key()]),
        "qc": _digest([scrub, __version__, str(options.fd_threshold)]),
    }


def release_subject(task: SubjectTask) -> dict:
    """Participant level for one subject: deface, scrub, QC; skip steps already done.

    The subject is defaced (or copied) into ``WORK_DIR/stage/sub-<label>/defaced``, copied
    to ``scrubbed/`` and scrubbed there, and only then moved into OUTPUT_DIR, so OUTPUT_DIR
    never holds an unscrubbed file, even after a kill. A rerun scrubs a fresh copy of the
    defaced files, never a file twice (dates would move twice).
    """
    from isyb.bids.layout import collect_runs
    from isyb.qc.dataset import QC_RUNS, ParticipantJob, run_participant_job

    stage = task.work_dir / "stage" / f"sub-{task.subject}"  # defaced/, scrubbed/: as OUT
    for folder in (task.out_dir / f"sub-{task.subject}",  # left by a killed run
                   task.out_dir / DERIVATIVES / f"sub-{task.subject}", stage):
        sweep_partial(folder)
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
        record["steps"][step] = "done"

    def pending(step: str) -> bool:
        """Whether ``step`` runs now; a step skipped by ``--skip`` or done is recorded so."""
        if step in task.options.skip:
            record["steps"][step] = f"skipped (--skip {step})"
        elif done(step):
            record["steps"][step] = "skipped (done)"
        else:
            return True
        return False

    if done("deface") and (done("scrub") or (stage / "defaced").is_dir()):
        record["steps"]["deface"] = "skipped (done)"
    else:
        shutil.rmtree(stage, ignore_errors=True)
        if "deface" in task.options.skip:
            _copy_subject(task, stage / "defaced")
            result: dict = {"images": COPIED_AS_IS}
        else:
            job = DatasetJob(task.bids_dir, stage / "defaced", task.subject, task.template,
                             task.options.deface, task.options.release_policy)
            images = run_subject(job)["images"]
            forget_input_stamps(stage / "defaced", task.subject)
            result = {"defaced": sum(i["status"] == "ok" for i in images),
                      "failed": [{"file": i["file"], "error": i["error"]}
                                 for i in images if i["status"] != "ok"]}
        # Fail closed: a reference copied as it is must show no face (isyb.app.references).
        result["withheld"] = withhold_faces(stage / "defaced", task.subject,
                                            load_release_policy(task.options.release_policy))
        manifest.pop("scrub", None)  # the copies are new: scrub them again
        finish("deface", result)
    record["deface"] = {k: v for k, v in manifest["deface"].items()
                        if k in ("defaced", "failed", "images", "withheld")}

    if pending("scrub"):
        scrubbed = stage / "scrubbed"
        shutil.rmtree(scrubbed, ignore_errors=True)
        shutil.copytree(stage / "defaced", scrubbed)
        # The subject's copies and its derivatives: masks are written with the
        # source image's header, so they carry its descrip too.
        roots = (scrubbed / f"sub-{task.subject}",
                 scrubbed / DERIVATIVES / f"sub-{task.subject}")
        files = [p.relative_to(scrubbed) for root in roots
                 for p in sorted(root.rglob("*")) if p.is_file()]
        policy = load_policy(task.options.policy)
        changes = scrub_in_place(scrubbed, files, policy, task.key,
                                 needles=dataset_needles(task.bids_dir, policy))
        table = pd.DataFrame([c.__dict__ for c in changes], columns=REPORT_COLUMNS)
        with atomic_path(task.work_dir / "scrub" / f"sub-{task.subject}.tsv") as tmp:
            table.to_csv(tmp, sep="\t", index=False)
        _publish(scrubbed, task.out_dir, task.subject)
        finish("scrub", {"changes": len(changes)})
        shutil.rmtree(stage)

    if pending("qc"):
        # The released copies, never the source: the pages' pictures go into the release.
        runs = collect_runs(task.out_dir, [task.subject], QC_RUNS)
        results = [run_participant_job(ParticipantJob(task.out_dir, task.out_dir, run,
                                                      task.options.fd_threshold,
                                                      metadata_dir=task.bids_dir))
                   for run in runs]
        finish("qc", {"runs": len(results),
                      "failed": [r["source"] for r in results if r["status"] != "ok"]})
    if pending("derive"):
        from isyb.derive.dataset import RunJob, scan_subject
        from isyb.derive.dataset import run_subject as derive_subject

        subject = scan_subject(task.out_dir, f"sub-{task.subject}")
        results = derive_subject(RunJob(task.out_dir, task.out_dir, task.work_dir / "derive",
                                        subject, task.options.derive)) if subject.runs else []
        finish("derive", {"runs": len(results),
                          "failed": [{"file": r["source"], "error": r["error"]}
                                     for r in results if r["status"] != "ok"]})
    if "derive" in manifest:
        record["derive"] = {k: v for k, v in manifest["derive"].items()
                            if k in ("runs", "failed")}
    # What the steps wrote, for the release gate: recorded after the last step writes.
    manifest["outputs"] = subject_outputs(task.out_dir, task.subject)
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return record


def _copy_subject(task: SubjectTask, target: Path) -> None:
    """``--skip deface``: copy what the release policy allows into ``target``, anatomical
    images as they are."""
    items = classify_subject(task.bids_dir, task.subject,
                             load_release_policy(task.options.release_policy))
    written = {}
    for item in items:
        if item.kind == "deface":
            copy_file(item.source, target / item.output)
            written[item.relative] = item.output
    copy_allowed(items, target, written)


def _publish(staged: Path, out_dir: Path, subject: str) -> None:
    """Move every file of ``staged`` to the same place in ``out_dir`` (:func:`move_tree`),
    after removing the files of ``out_dir/sub-<subject>`` that this run did not stage (an
    earlier run's copy of an image whose defacing now failed, of a file no longer in the
    input)."""
    keep = {p.relative_to(staged) for p in staged.rglob("*") if p.is_file()}
    root = out_dir / f"sub-{subject}"
    for path in sorted(root.rglob("*")) if root.is_dir() else ():
        if path.is_file() and path.relative_to(out_dir) not in keep:
            path.unlink()
    move_tree(staged, out_dir)


def participant_tasks(bids_dir: Path, out_dir: Path, work_dir: Path, template: Template,
                      options: ReleaseOptions, labels: list[str] | None) -> list[SubjectTask]:
    """One task per subject (all, or ``labels``), after checking the inputs."""
    subjects = check_inputs(bids_dir, out_dir, work_dir, policy=options.policy,
                            release_policy=options.release_policy, labels=labels)
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
    check_executor(executor)
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


def release_group(bids_dir: Path, out_dir: Path, work_dir: Path, template: Template,
                  options: ReleaseOptions, *, strict: bool = False) -> dict:
    """Group level: dataset files, QC tables and report, scrub report, leak scan, the
    release gate (:mod:`isyb.app.gate`; ``strict``: a face on a render of a released
    anatomical image fails it) and the summary.

    While a subject's participant level is missing or unfinished, only a summary marked
    ``"complete": false`` is written (the caller exits 1). Otherwise ``complete`` is true
    only when the leak scan found nothing and the gate passed.
    """
    from isyb.deface.report import write_summary
    from isyb.qc.dataset import qc_group, read_records
    from isyb.qc.rules import ExclusionRules

    subjects = check_inputs(bids_dir, out_dir, work_dir, policy=options.policy,
                            release_policy=options.release_policy)
    policy = load_policy(options.policy)
    release_policy = load_release_policy(options.release_policy)
    manifests = {s: json.loads(p.read_text()) for s in subjects
                 if (p := work_dir / "manifest" / f"sub-{s}.json").is_file()}
    if not manifests:
        raise IsybError(f"{work_dir}: no participant-level results; run the participant "
                        "level first")
    unfinished = [s for s in subjects if "scrub" not in manifests.get(s, {})]
    if unfinished:
        summary = {"isyb_version": __version__, "complete": False, "subjects": len(subjects),
                   "participant_level_done": len(subjects) - len(unfinished),
                   "participant_level_missing": [f"sub-{s}" for s in unfinished]}
        write_text(out_dir / DERIVATIVES / "release_summary.json",
                   json.dumps(summary, indent=2) + "\n")
        return summary
    for path in sweep_partial(out_dir):
        log.warning("removed %s, left by an interrupted run", path)
    # An earlier run's "complete" must not outlive a group level that fails from here on.
    write_text(out_dir / DERIVATIVES / "release_summary.json", json.dumps(
        {"isyb_version": __version__, "complete": False, "group_level": "not finished"},
        indent=2) + "\n")
    before = image_stamps(out_dir)  # the gate accepts the images this run writes
    today = release_date()
    # Deny by default: only the top-level files the release policy allows; the list of
    # withheld files stays in the work folder (file names can identify people).
    items = dataset_files.withhold_other_readmes(classify_dataset(bids_dir, release_policy),
                                                 bids_dir)
    top = [i for i in items if i.kind == "top" and i.output not in dataset_files.WRITTEN_BY_ISYB]
    faces = [Item(w["path"], bids_dir / w["path"], "withheld", reason=w["reason"])
             for m in manifests.values() for w in m.get("deface", {}).get("withheld", [])]
    items = sorted([*items, *faces], key=lambda i: i.relative)
    write_text(work_dir / "withheld.tsv", withheld_tsv(items))
    needles = dataset_needles(bids_dir, policy)
    changes = dataset_files.publish_top_level(top, bids_dir, out_dir, work_dir / "stage" / "top",
                                              policy, scrub_key(work_dir), needles)
    description = dataset_files.write_description(bids_dir, out_dir, template, options, needles)
    dataset_files.write_readme_and_changes(bids_dir, out_dir, template, options, today, description)

    reports = [pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
               for p in sorted((work_dir / "scrub").glob("sub-*.tsv"))]
    reports.append(pd.DataFrame([c.__dict__ for c in changes], columns=REPORT_COLUMNS))
    scrub_report = pd.concat(reports, ignore_index=True)
    with atomic_path(out_dir / DERIVATIVES / "scrub_report.tsv") as tmp:
        scrub_report.to_csv(tmp, sep="\t", index=False)

    summary: dict = {"isyb_version": __version__, "complete": True, "date": today,
                     "template": template.name,
                     "method": options.deface.method, "subjects": len(subjects),
                     "participant_level_done": len(manifests),
                     "scrub_changes": len(scrub_report),
                     "withheld": withheld_counts(items)}
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
    leaks = scan_release(out_dir, needles, policy)
    summary["leak_scan"] = {"values_searched": len(needles),
                            "values_too_short_or_public": needles.skipped,
                            "findings": len(leaks), "where": leaks[:50]}
    recorded = {name: digest for m in manifests.values()
                for name, digest in m.get("outputs", {}).items()}
    gate = run_gate(out_dir, recorded, written=written_since(out_dir, before), strict=strict,
                    policy=release_policy, predefaced=[
                        s for s, m in manifests.items()
                        if m.get("deface", {}).get("images") == COPIED_AS_IS])
    summary["gate"] = gate.to_json()
    summary["complete"] = not leaks and gate.passed  # a leak or a gate violation: unfinished
    write_text(out_dir / DERIVATIVES / "release_summary.json",
               json.dumps(summary, indent=2) + "\n")
    return summary
