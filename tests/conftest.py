"""Fixtures shared by the isyb tests.

Real data (scans and templates) live outside the repository, in
``../shared/data`` seen from the project root, or wherever ``ISYB_TEST_DATA``
points. Tests that need them skip with a reason when the folder is missing.

``--cpu-durations=N`` (on in pyproject's addopts) lists the N test phases that took most
CPU time and the CPU time of every test module: the suite is CPU-bound on 2 cores, so this,
not the wall time of a loaded machine, says where its time goes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from filelock import FileLock

#: Thread pools of torch (OpenMP), BLAS and ITK (ANTs) that a pytest-xdist worker runs with.
#: ``pytest -n auto`` starts a worker per core; with each worker's libraries also starting a
#: thread per core, the cores are oversubscribed and the idle threads spin: deepbet + N4 +
#: Atropos of a real head took 20.2 s user + 2.8 s system at two threads and 16.7 + 2.2 at one
#: (same wall). Set before torch, numpy or ants are imported; a variable already set wins, and
#: the executor still sets each task's threads (``isyb.executor.limit_threads``).
WORKER_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                           "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _variable in WORKER_THREAD_VARIABLES:
        os.environ.setdefault(_variable, "1")

# The allocator policy of isyb's own processes (the CLI and every task) for the test
# processes too, which call the library directly: test_qc_anat_real_scans.py spent 12.4 s
# of 105 CPU s in the kernel, mostly zeroing pages that glibc had handed back; 7.0 with it.
# Every release of a run carries the date the run started (isyb.app.release.release_date):
# the tests that compare two releases byte for byte must not fail when the run crosses
# midnight. Set here, before pytest-xdist starts its workers, which inherit it.
os.environ.setdefault("SOURCE_DATE_EPOCH", str(int(time.time())))

from isyb.cache import CACHE_ENV  # noqa: E402
from isyb.executor import keep_freed_memory  # noqa: E402

keep_freed_memory()


# CPU time per test (``--cpu-durations``)
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-durations", type=int, default=None, metavar="N",
                     help="show the N test phases that took most CPU time (user + system "
                          "seconds of the test process and of the children it waited for) "
                          "and the CPU time of every test module; 0 shows every phase")


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that were waited for."""
    own, children = (resource.getrusage(who) for who in
                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_PHASE_START = pytest.StashKey[float]()
_CPU_ROWS: list[tuple[float, float, str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Put the phase's CPU seconds on its report as ``cpu_s`` (pytest-xdist carries the
    attribute to the controller): from the start of the phase (the hooks below, which run
    before pytest's own) to its report. Processes the test started but did not wait for
    (a Dask worker, a daemon) are not counted."""
    cpu = _cpu_seconds() - item.stash.get(_PHASE_START, _cpu_seconds())
    outcome = yield
    outcome.get_result().cpu_s = cpu


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_PHASE_START] = _cpu_seconds()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> None:
    item.stash[_PHASE_START] = _cpu_seconds()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    item.stash[_PHASE_START] = _cpu_seconds()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    cpu = getattr(report, "cpu_s", None)
    if cpu is not None:
        _CPU_ROWS.append((cpu, report.duration, report.when, report.nodeid))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    count = config.getoption("--cpu-durations")
    if count is None or not _CPU_ROWS:
        return
    write = terminalreporter.write_line
    rows = sorted(_CPU_ROWS, reverse=True)
    terminalreporter.write_sep("=", f"{'all' if count == 0 else count} largest CPU times "
                                    "(cpu s, wall s, phase, test)")
    for cpu, wall, when, nodeid in rows[:count or None]:
        write(f"{cpu:8.2f} {wall:8.2f} {when:8s} {nodeid}")
    modules: dict[str, list[float]] = {}
    for cpu, wall, _, nodeid in rows:
        total = modules.setdefault(nodeid.split("::")[0], [0.0, 0.0])
        total[0] += cpu
        total[1] += wall
    cpu_total = sum(row[0] for row in rows)
    terminalreporter.write_sep("=", f"CPU time per test module (cpu s, wall s; all modules "
                                    f"{cpu_total:.0f} cpu s)")
    for module, (cpu, wall) in sorted(modules.items(), key=lambda kv: kv[1], reverse=True):
        write(f"{cpu:8.1f} {wall:8.1f} {module}")


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT.parent / "shared" / "data"

TEMPLATEFLOW_FILES: dict[str, tuple[str, ...]] = {
    "MNI152NLin6Asym": (
        "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz",
        "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz",
    ),
    "MNI152NLin2009cAsym": (
        "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
        "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz",
    ),
}
"""Template files of ``<data root>/templates`` that make up the test TemplateFlow home."""


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real test data folder: ``$ISYB_TEST_DATA``, else ``../shared/data``."""
    env = os.environ.get("ISYB_TEST_DATA")
    root = Path(env).expanduser().resolve() if env else DEFAULT_DATA_ROOT
    if not root.is_dir():
        pytest.skip(f"real test data folder {root} not found "
                    "(set ISYB_TEST_DATA to the shared data folder)")
    return root


def build_templateflow_home(data_root: Path, home: Path,
                            templates: Mapping[str, Sequence[str]] = TEMPLATEFLOW_FILES) -> Path:
    """Lay out a sparse TemplateFlow home in ``home`` from ``<data_root>/templates``.

    Each file is symlinked (copied where symlinks are not possible) into
    ``home/tpl-<name>/``, with a minimal ``template_description.json`` per
    template and a ``dataset_description.json`` at the top. Skips the test if
    a file is missing.
    """
    source_dir = data_root / "templates"
    for name, files in templates.items():
        folder = home / f"tpl-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        for filename in files:
            source = source_dir / filename
            if not source.is_file():
                pytest.skip(f"template file {source} not found in the test data")
            target = folder / filename
            try:
                target.symlink_to(source)
            except OSError:
                shutil.copyfile(source, target)
        description = {"Identifier": name, "Name": f"{name} (isyb test subset)"}
        (folder / "template_description.json").write_text(json.dumps(description))
    dataset = {"Name": "TemplateFlow (isyb test subset)", "BIDSVersion": "1.1.0"}
    (home / "dataset_description.json").write_text(json.dumps(dataset))
    return home


@pytest.fixture
def templateflow_home(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local TemplateFlow home with MNI152NLin6Asym and MNI152NLin2009cAsym at res-01.

    ``TEMPLATEFLOW_HOME`` points at it for the duration of the test and
    ``TEMPLATEFLOW_AUTOUPDATE`` is off, so TemplateFlow uses it as it is.
    """
    home = build_templateflow_home(data_root, tmp_path / "templateflow")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    return home


@pytest.fixture
def templateflow_pinned(templateflow_home: Path, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> Path:
    """:func:`templateflow_home` with its files listed as verified local copies.

    The shared test copies are recompressed, not TemplateFlow's bytes, so
    isyb refuses them against the upstream digests (issue 17); a user who
    verified a copy lists its SHA-256 in ``$ISYB_TEMPLATEFLOW_PINS``, as this does.
    """
    from isyb.templates.fetch import sha256_file
    from isyb.templates.verify import PINS_ENV

    pins = tmp_path / "templateflow_pins.sha256"
    pins.write_text("".join(f"{sha256_file(path)}  {path.name}\n"
                            for path in sorted(templateflow_home.glob("tpl-*/*.nii.gz"))))
    monkeypatch.setenv(PINS_ENV, str(pins))
    return templateflow_home


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """A folder that every pytest-xdist worker of this run sees (the run's own temporary
    folder without xdist). Build things there once with :func:`build_once`."""
    base = tmp_path_factory.getbasetemp()
    return base if worker_id == "master" else base.parent


def build_once(shared: Path, name: str, build: Callable[[Path], object]) -> Path:
    """``shared/name``, built by ``build(folder)`` by the first worker that asks for it.

    The others wait on a file lock and reuse it, so an expensive fixture (a defaced
    dataset, a prepared template) costs once per test run, not once per worker.
    """
    folder = shared / name
    with FileLock(str(folder) + ".lock"):
        done = folder / ".built"
        if not done.is_file():
            if folder.exists():
                shutil.rmtree(folder)  # a build that failed in another worker
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def isyb_home(shared_dir: Path) -> Iterator[Path]:
    """A run-wide ``ISYB_HOME`` shared by the workers, so each template is prepared once."""
    home = shared_dir / "isyb_home"
    home.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ISYB_HOME", str(home))
        yield home


@pytest.fixture(scope="session", autouse=True)
def work_cache(shared_dir: Path) -> Iterator[Path]:
    """A run-wide ``ISYB_CACHE_DIR`` (:mod:`isyb.cache`) shared by the workers and the
    ``isyb`` processes the tests start: a brain mask or registration that one test
    computed is reused by the next test that asks for the same bytes (the demo dataset
    is defaced by a dozen tests; 42 of 78 deepbet calls and 42 of 95 registrations in a
    traced run were repeats). The cache is new for every run, so it never holds results
    of older code. Tests of the cached computations themselves use
    :func:`without_work_cache`."""
    cache = shared_dir / "work_cache"
    cache.mkdir(exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(cache))
        yield cache


@pytest.fixture
def without_work_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compute brain masks and registrations afresh in this test."""
    monkeypatch.delenv(CACHE_ENV, raising=False)


@pytest.fixture(scope="session")
def default_template(isyb_home: Path):
    """The default (pydeface mean head) template, prepared once in the shared ISYB_HOME."""
    from isyb.templates.registry import resolve

    with FileLock(str(isyb_home) + ".lock"):
        return resolve("default")


def run_cli(*args: object) -> SimpleNamespace:
    """Run ``isyb ARGS`` in this process (no 8-s start-up); ``returncode``, ``stdout`` and
    ``stderr`` as from :func:`subprocess.run`. Usable in fixtures, unlike ``capsys``."""
    from isyb.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


#: Voxel size (mm) of the demo T1w heads where a test checks plumbing (executors, faults,
#: resume, dataset mode), not anatomy: the demo's 1.5 mm heads cost about 25 cpu s each
#: through the release (deface 9, QC with N4 + Atropos most of the rest), the same heads at
#: 3 mm about 10. The real-scan release (:func:`real_release`) is the run at full resolution.
PLUMBING_T1W_MM = 3.0


def coarser_demo_t1w(bids: Path, n_subjects: int, voxel_mm: float) -> None:
    """Rewrite each demo subject's T1w as the same phantom head on a ``voxel_mm`` grid, with
    the demo's orientation and origin (its BOLD, DWI and ASL runs share that world frame, so
    they stay aligned with it)."""
    from isyb.synthetic.demo import DEMO_SUBJECTS
    from isyb.synthetic.phantom import make_phantom, to_nifti

    for index in range(n_subjects):
        spec = DEMO_SUBJECTS[index]
        phantom = make_phantom(voxel_size=voxel_mm, length=spec.length, width=spec.width,
                               height=spec.height, seed=index)
        label = f"sub-{index + 1:02d}"
        to_nifti(phantom, spec.orientation, spec.origin_shift_mm).to_filename(
            str(bids / label / "anat" / f"{label}_T1w.nii.gz"))


@pytest.fixture(scope="session")
def demo_release(shared_dir: Path, default_template) -> dict[str, Path]:
    """The 2-subject demo dataset, its heads at :data:`PLUMBING_T1W_MM`, taken through both
    BIDS-App levels once per test run (local executor, 2 processes): ``bids``, ``release``
    and its ``work`` folder. The validator, executor (Dask, SLURM) and fault tests compare
    with it.

    Shared by every worker and module: treat it as read-only (copy it to change it).
    """
    from isyb.synthetic.demo import build_demo_dataset

    def build(folder: Path) -> None:
        bids = build_demo_dataset(folder / "bids", n_subjects=2)
        coarser_demo_t1w(bids, 2, PLUMBING_T1W_MM)
        for level in (["participant", "--quiet", "--nprocs", "2"], ["group", "--quiet"]):
            run = run_cli(bids, folder / "release", *level)
            assert run.returncode == 0, run.stderr[-3000:]

    folder = build_once(shared_dir, "demo_release", build)
    return {"root": folder, "bids": folder / "bids", "release": folder / "release",
            "work": folder / "release_work"}


@pytest.fixture(scope="session")
def modalities_release(shared_dir: Path, default_template) -> dict[str, Path]:
    """A 1-subject demo dataset with every modality the demo makes (T1w, BOLD, DWI, pCASL),
    released once per test run (participant level in process, ``--skip derive``:
    normalisation is the expensive part and writes only under ``derivatives/``): ``bids``,
    ``release``, ``work``. Shared by the validators and the release gate's tests; read-only
    (copy it to change it)."""
    from isyb.app.release import ReleaseOptions, release_group, release_participants
    from isyb.synthetic.demo import build_demo_dataset

    def build(folder: Path) -> None:
        bids = build_demo_dataset(folder / "bids", n_subjects=1,
                                  modalities=("anat", "func", "dwi", "perf"))
        options = ReleaseOptions(skip=frozenset({"derive"}))
        release, work = folder / "release", folder / "release_work"
        release_participants(bids, release, work, default_template, options, progress=False)
        release_group(bids, release, work, default_template, options)

    folder = build_once(shared_dir, "modalities_release", build)
    return {"root": folder, "bids": folder / "bids", "release": folder / "release",
            "work": folder / "release_work"}


#: A fake name and birth date planted in the real release's input (see :func:`real_release`).
PLANTED_NAME = "Wang^Planted"
PLANTED_DATE = "1990-01-02"


@pytest.fixture(scope="session")
def real_release(shared_dir: Path, data_root: Path, default_template) -> dict:
    """A release of real scans, built once per test run and shared by every worker and module
    (read-only): sub-01 has a real T1w head (myconnectome) and the real pCASL run, with a fake
    name and birth date planted in the ASL sidecar and the T1w header; sub-02 a real
    2x2x3 mm head (itk-kmeans); sub-03 only a truncated gzip as its T1w, which must fail alone.

    Returns ``bids``, ``release``, ``original_asl`` (the planted input sidecar) and
    ``participant`` (``returncode`` and ``stderr`` of the participant level, 2 processes).
    """
    import nibabel as nib

    asl = json.loads((data_root / "asl" / "perf" / "sub-01_asl.json").read_text())
    asl.update(PatientName=PLANTED_NAME, PatientBirthDate=PLANTED_DATE)

    def build(root: Path) -> None:
        bids = root / "bids"
        for folder in ("sub-01/anat", "sub-01/perf", "sub-02/anat", "sub-03/anat"):
            (bids / folder).mkdir(parents=True)
        (bids / "dataset_description.json").write_text(json.dumps(
            {"Name": "isyb real-data release test", "BIDSVersion": "1.9.0",
             "DatasetType": "raw", "Authors": ["isyb tests", "shared data contributors"]}))
        (bids / "participants.json").write_text(json.dumps(
            {"age": {"Description": "age", "Units": "year"},
             "sex": {"Description": "sex", "Levels": {"M": "male", "F": "female"}}}))
        (bids / "README").write_text("Real test scans from ../shared/data.\n")
        (bids / "sub-01" / "perf" / "sub-01_asl.json").write_text(json.dumps(asl, indent=2))
        for name in ("sub-01_asl.nii.gz", "sub-01_aslcontext.tsv"):
            shutil.copyfile(data_root / "asl" / "perf" / name, bids / "sub-01" / "perf" / name)
        head = nib.load(str(data_root / "heads" / "myconnectome_T1w_1p6mm.nii.gz"))
        head.header["descrip"] = f"{PLANTED_NAME} {PLANTED_DATE}".encode()
        head.to_filename(str(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
        kmeans = data_root / "heads" / "itk-kmeans_T1w_LSA_2x2x3mm.nii.gz"
        shutil.copyfile(kmeans, bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz")
        whole = kmeans.read_bytes()
        (bids / "sub-03" / "anat" / "sub-03_T1w.nii.gz").write_bytes(whole[: len(whole) // 2])
        (bids / "participants.tsv").write_text("participant_id\tage\tsex\nsub-01\t25\tM\n"
                                               "sub-02\tn/a\tn/a\nsub-03\t31\tF\n")
        participant = run_cli(bids, root / "release", "participant", "--quiet", "--nprocs", "2")
        (root / "participant.json").write_text(json.dumps(
            {"returncode": participant.returncode, "stderr": participant.stderr}))
        group = run_cli(bids, root / "release", "group", "--quiet")
        assert group.returncode == 0, group.stderr[-3000:]

    root = build_once(shared_dir, "real_release", build)
    participant = json.loads((root / "participant.json").read_text())
    return {"bids": root / "bids", "release": root / "release", "original_asl": asl,
            "participant": SimpleNamespace(**participant)}


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Check a CLI failure: exit 2 and exactly one ``isyb: error:`` line naming ``fragments``."""
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("isyb: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def run_isyb_killing_a_dask_worker(args: Sequence[str]) -> None:
    """Run ``isyb ARGS --executor dask`` on a 2-worker LocalCluster, SIGKILL the worker of the
    first task that starts, and check that the run still succeeds (the task is retried)."""
    import signal
    import subprocess
    import time

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster:
        run = subprocess.Popen(["isyb", *args, "--executor", "dask", "--dask-scheduler",
                                cluster.scheduler_address], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and not any(
                ws.processing for ws in cluster.scheduler.workers.values()):
            time.sleep(0.2)
        busy = [ws for ws in cluster.scheduler.workers.values() if ws.processing]
        assert busy, "no task started"
        nanny = next(n for n in cluster.workers.values() if n.worker_address == busy[0].address)
        time.sleep(2.0)
        os.kill(nanny.process.process.pid, signal.SIGKILL)
        _, err = run.communicate(timeout=900)
        assert run.returncode == 0, err[-3000:]


# study
@pytest.fixture(scope="session")
def study_simulation(shared_dir: Path, data_root: Path, isyb_home: Path) -> dict:
    """The simulated two-population study (:func:`isyb.study.simulate.run_simulation`) run
    once per test run and shared by every worker and module (read-only: copy it to change
    it). 2 phantoms per population at 3 mm; ``study``: templates ``ref`` and ``cn200``,
    design pingouin, ``remove`` with the template face region and a 3 mm margin;
    ``control``: ``ref`` and a byte-identical copy; ``isyb``: ``--design isyb`` on
    ``ref`` and ``cn200``, ``isyb_margin`` the same with a 3 mm face margin; all on one
    work cache, without the face detectors and
    re-identification (tests/study/test_study_face_checks.py covers those).

    Returns ``root``, ``bids``, the three study folders, ``names`` (population ->
    template name) and ``templates`` (population, or ``refcopy``, -> head path).
    """
    if not (data_root / "transforms" / "CAPIIO_to_CN200.mat").is_file():
        pytest.skip(f"{data_root}/transforms/CAPIIO_to_CN200.mat not found in the test data")

    def build(folder: Path) -> None:
        from isyb.study.simulate import run_simulation

        result = run_simulation(data_root, folder, phantoms_per_population=2, strength=2.0,
                                voxel_mm=3.0, nprocs=1, threads=1, seed=0, detectors=False,
                                reid=False, isyb_design=True)
        (folder / "names.json").write_text(json.dumps(
            {"names": result["names"],
             "templates": {k: str(v) for k, v in result["templates"].items()}}))

    root = build_once(shared_dir, "study_simulation", build)
    saved = json.loads((root / "names.json").read_text())
    return {"root": root, "bids": root / "bids", "study": root / "study",
            "control": root / "control", "isyb": root / "isyb",
            "isyb_margin": root / "isyb_margin", "names": saved["names"],
            "templates": {k: Path(v) for k, v in saved["templates"].items()}}
