"""Executors: where per-subject tasks run. Local processes by default, Dask when asked.

``local`` is :class:`concurrent.futures.ProcessPoolExecutor` (or the calling
process itself for one worker). ``dask`` submits the same picklable function
to a ``dask.distributed`` client: a running scheduler (``--dask-scheduler
tcp://host:8786``), a SLURM cluster through dask-jobqueue (``--dask-cluster
slurm``; its queue, cores and memory come from dask's configuration, e.g.
``~/.config/dask/jobqueue.yaml``), or else a ``LocalCluster`` of ``nprocs``
single-threaded worker processes; the cluster starts per call, or once for the
calls in a :func:`shared_cluster` block (``isyb study``'s subjects and
re-identification). Tasks get ``retries`` so that a lost worker's task is run
again elsewhere; tasks are idempotent (atomic writes, outputs rewritten whole),
so a retry cannot leave a mixed result. The local pool does
the same: a worker process that dies (killed, out of memory) breaks the pool,
so a fresh pool runs every unfinished task again; a task that was running when
a worker died more than ``retries`` times is refused with a one-line error.

Threads: every task runs with :func:`limit_threads` set, before any library
work, to ``ExecutorOptions.threads`` (``--omp-nthreads``) or by default to its
share of the machine (``cores // nprocs``, at least 1; 1 under Dask, whose
workers are single-threaded). This is the only place isyb sets torch's and
ITK's thread counts; nothing else overrides them. ITK keeps the count a process
starts it with (:mod:`isyb.head.ants`), and ANTs' registration is reproducible
only on one thread, so every registration runs on one ITK thread: in the task's
process when its ITK runs one, else in a one-thread helper process
(:func:`isyb.head.ants.one_itk_thread`). Other multi-threaded sums (torch's)
may still depend on the count, so outputs are compared byte for
byte at a fixed count: the release always runs ``threads=1``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import multiprocessing
import os
import platform
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from functools import partial
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from tqdm import tqdm

from isyb.errors import IsybError

EXECUTORS = ("local", "dask")

log = logging.getLogger(__name__)


#: Environment variable ITK (and so ANTsPy) reads for its thread count, once per process
#: (:mod:`isyb.head.ants`).
ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


#: The thread count of :func:`limit_threads` in this process (None: not limited).
_task_threads: int | None = None


def task_threads() -> int:
    """This process's thread count (:func:`limit_threads`; the cores when never limited),
    for libraries isyb hands it to itself (scipy's ``workers``)."""
    return _task_threads or os.cpu_count() or 1


def limit_threads(threads: int) -> None:
    """Run torch, BLAS (numpy's ``@``) and ITK (ANTs) with ``threads`` threads in this process.

    ITK reads its variable when a process makes its first ITK object and keeps that
    count (:func:`isyb.head.ants.start_itk`), so this is called at the start of every
    task, before any ITK work; registrations still run on one ITK thread
    (:func:`isyb.head.ants.one_itk_thread`). BLAS matters too: once
    torch is loaded, numpy's OpenBLAS with two threads spent 0.15 CPU s on a
    (430 000, 3) @ (3, 3) product that takes 0.003 s on one (the renderer's
    boundary voxels, nine views per defaced head); the results are the same.

    torch is limited here when this process has loaded it, and otherwise when isyb
    loads it (:func:`load_torch`): importing it costs about 2 CPU s, which a
    worker that never runs a network (QC, derive, release tasks) does not pay.
    """
    global _task_threads
    threads = max(1, int(threads))
    _task_threads = threads
    os.environ[ITK_THREADS_ENV] = str(threads)
    import numpy  # noqa: F401  (its BLAS must be loaded for threadpoolctl to limit it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads, user_api="blas")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


def load_torch() -> ModuleType:
    """torch, on this process's thread count (:func:`limit_threads`) when one was set.

    Every network of isyb (deepbet, MTCNN) gets torch here, so a torch loaded after
    :func:`limit_threads` runs on the task's threads, not on torch's default (the cores).
    """
    import torch

    if _task_threads is not None:
        torch.set_num_threads(_task_threads)
    return torch


#: glibc ``mallopt`` parameters (``malloc.h``): ``M_TRIM_THRESHOLD``, ``M_TOP_PAD``,
#: ``M_MMAP_THRESHOLD``, ``M_MMAP_MAX``.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
#: glibc's default ``M_MMAP_MAX``: how many blocks may be served by ``mmap`` at once.
MMAP_MAX_DEFAULT = 65536
#: Largest ``M_MMAP_THRESHOLD`` glibc accepts on 64-bit systems (``HEAP_MAX_SIZE / 2``), bytes.
MMAP_THRESHOLD_MAX = 32 * 2**20
#: Free memory kept at the heap top, and extra asked for at each growth, bytes.
HEAP_TOP_PAD = 256 * 2**20


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux (whose ``mallopt`` isyb tunes), else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


@contextlib.contextmanager
def heap_allocations() -> Iterator[None]:
    """Serve every allocation from glibc's heap, none from fresh ``mmap`` pages, meanwhile.

    For a network's forward pass: torch allocates each layer's output anew (hundreds
    of MB on deepbet's 256³ crop) and frees it a layer later, and above glibc's
    ``mmap`` threshold (32 MB at most) each one is fresh pages that the kernel
    zeroes again. From the heap the pass reuses what the last layers freed: deepbet
    on colin27, one thread, 0.9-1.4 s of kernel time per call before, 0.04 after, the
    same user time and the same bytes, with 0.1-0.5 GB more peak memory (the heap's
    fragments; ``isyb deface`` of a 256³ head peaks at 1.4-1.8 GB instead of 1.3).
    Not for numpy code: ``np.zeros`` then clears heap pages itself in
    user time where the kernel handed zeroed pages before, a wash. Afterwards glibc's
    default (:data:`MMAP_MAX_DEFAULT`) holds again. Linux with glibc only; elsewhere it
    does nothing.
    """
    libc = _glibc()
    if libc is None or libc.mallopt(_M_MMAP_MAX, 0) != 1:
        yield
        return
    try:
        yield
    finally:
        libc.mallopt(_M_MMAP_MAX, MMAP_MAX_DEFAULT)


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of handing it back to Linux.

    A head's processing allocates and frees arrays of a few to tens of MB many
    times (masks, distance maps, resampled copies). glibc's defaults serve
    each one from fresh pages (``mmap`` above its threshold, and a trimmed heap
    top), which the kernel zeroes on first touch: of a T1w QC of colin27 on one
    thread (31 CPU s), 3.2 s were spent in the kernel, 1.85 s with this, with
    the same user time and 1.5 % more peak memory. Here blocks up to 32 MB
    (the most glibc allows) come from the heap, and its freed top is kept.
    Called by the CLI and by every local task (:class:`_Limited`; Dask workers
    keep their nanny's trimming); it changes only where memory comes from, never
    a result. Linux with glibc only; returns
    whether it applied.
    """
    libc = _glibc()
    if libc is None:
        return False
    settings = ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, 2**31 - 1),
                (_M_TOP_PAD, HEAP_TOP_PAD))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


def threads_per_task(nprocs: int, n_tasks: int | None = None) -> int:
    """Each task's share of the cores when ``nprocs`` tasks (or fewer) run at once."""
    running = max(1, min(nprocs, n_tasks or nprocs))
    return max(1, (os.cpu_count() or 1) // running)


@dataclass(frozen=True)
class _Limited:
    """``function`` run after :func:`limit_threads` (picklable, for pools and Dask), and
    after :func:`keep_freed_memory` when ``keep_memory``: not in Dask workers, whose nanny
    asks glibc to trim freed memory (``MALLOC_TRIM_THRESHOLD_``) because it pauses a
    worker whose process memory stays above 80 % of its limit between tasks."""

    function: Callable[[Any], Any]
    threads: int
    keep_memory: bool = True

    def __call__(self, item: Any) -> Any:
        if self.keep_memory:
            keep_freed_memory()
        limit_threads(self.threads)
        return self.function(item)


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run tasks (see ``isyb BIDS_DIR OUTPUT_DIR participant --help``).

    ``executor``: ``local`` or ``dask``; ``nprocs``: tasks at once (local
    processes, Dask workers or SLURM jobs); ``dask_scheduler``: the address of a
    running scheduler; ``dask_cluster``: ``slurm`` for dask-jobqueue workers;
    ``retries``: reruns of a Dask task that raised (a lost worker's tasks are
    rerun by the scheduler anyway), and of a local task whose worker process
    died while it ran; ``threads``: torch and ITK threads of every
    task (None: ``cores // nprocs`` locally, 1 under Dask). A bad value raises
    :class:`~isyb.errors.IsybError` with a one-line message.
    """

    executor: str = "local"
    nprocs: int = 1
    dask_scheduler: str | None = None
    dask_cluster: str | None = None
    retries: int = 2
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise IsybError(f"unknown executor {self.executor!r}: use local or dask")
        if not isinstance(self.nprocs, int) or self.nprocs < 1:
            raise IsybError(f"--nprocs must be a whole number ≥ 1, got {self.nprocs!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise IsybError(f"--omp-nthreads must be a whole number ≥ 1, got {self.threads!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise IsybError(f"retries must be a whole number ≥ 0, got {self.retries!r}")
        if self.executor == "local" and (self.dask_scheduler or self.dask_cluster):
            raise IsybError("--dask-scheduler and --dask-cluster need --executor dask")
        if self.dask_scheduler and self.dask_cluster:
            raise IsybError("give --dask-scheduler or --dask-cluster, not both")
        if self.dask_cluster not in (None, "slurm"):
            raise IsybError(f"unknown --dask-cluster {self.dask_cluster!r}: use slurm")


def check_scheduler(options: ExecutorOptions, timeout: float = 5.0) -> None:
    """Refuse, before any work, a ``dask_scheduler`` address that is malformed or where no
    TCP server answers (a tcp:// or tls:// address; others are left to Dask)."""
    address = options.dask_scheduler
    if not address:
        return
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    if parts.scheme not in ("tcp", "tls"):
        return
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise IsybError(f"--dask-scheduler {address}: expected tcp://HOST:PORT")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise IsybError(f"cannot reach the dask scheduler {address}: {exc}") from None


#: Seconds between two looks at the steps of running tasks (``run_tasks(steps=...)``).
POLL_S = 1.0


@dataclass(frozen=True)
class Steps:
    """Progress inside tasks: ``total(item)`` steps per task, of which ``done(item)`` are
    finished so far, counted from what the task writes (e.g. its manifest), so that it
    works whichever process or machine runs the task."""

    total: Callable[[Any], int]
    done: Callable[[Any], int]


def run_tasks(function: Callable[[Any], Any], items: Sequence[Any], options: ExecutorOptions,
              *, progress: bool = True, desc: str = "subjects",
              steps: Steps | None = None) -> Iterator[Any]:
    """Run ``function`` on every item; yield results as they complete.

    Each call runs under :func:`limit_threads` with ``options.threads`` threads,
    by default its share of the cores (1 under Dask). With ``steps``, the progress
    bar counts steps and moves while tasks run: the running tasks' ``steps.done``
    are polled every ``POLL_S`` seconds. No items start nothing: no pool, no cluster.
    """
    if not items:
        return
    total = sum(steps.total(item) for item in items) if steps else len(items)
    bar = tqdm(total=total, desc=desc, unit="step" if steps else "task",
               disable=not progress, file=sys.stderr)
    threads = options.threads or (1 if options.executor == "dask" else
                                  threads_per_task(options.nprocs, len(items)))
    task = _Limited(function, threads, keep_memory=options.executor != "dask")
    shown = _Progress(bar, steps if progress else None)
    try:
        if options.executor == "dask":
            yield from _dask(task, items, options, shown)
        elif (options.nprocs <= 1 or len(items) <= 1) and shown.steps is None:
            for item in items:
                yield task(item)
                shown.finish(item)
        elif options.nprocs <= 1 or len(items) <= 1:
            yield from _in_thread(task, items, shown)
        else:
            yield from _local_pool(task, items, options, shown)
    finally:
        bar.close()


class _Progress:
    """The bar of :func:`run_tasks`: finished tasks' steps plus, when polled, the
    finished steps of the tasks still running."""

    def __init__(self, bar: tqdm, steps: Steps | None) -> None:
        self.bar, self.steps, self.finished = bar, steps, 0

    def finish(self, item: Any) -> None:
        self.finished += self.steps.total(item) if self.steps else 1
        self.show(())

    def show(self, running: Iterable[Any]) -> None:
        position = self.finished
        if self.steps:
            position += sum(min(self.steps.total(item), self.steps.done(item))
                            for item in running)
        if position > self.bar.n:
            self.bar.update(position - self.bar.n)


def _local_wait(futures: list) -> None:
    wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)


def _as_done(pending: dict, shown: _Progress,
             wait_some: Callable[[list], None]) -> Iterator[tuple[Any, Any]]:
    """``(future, item)`` pairs of ``pending`` (future -> item, concurrent or Dask
    futures) as they finish; between two, the running tasks' steps are shown."""
    while pending:
        done = [future for future in pending if future.done()]
        for future in done:
            yield future, pending.pop(future)
        if not done:
            shown.show(pending.values())
            wait_some(list(pending))


def _in_thread(task: Callable[[Any], Any], items: Sequence[Any],
               shown: _Progress) -> Iterator[Any]:
    """Run the items one after another in a helper thread, so that the bar can poll
    their steps meanwhile."""
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        futures = {pool.submit(task, item): item for item in items}
        for future, item in _as_done(futures, shown, _local_wait):
            result = future.result()
            shown.finish(item)
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


#: Set in each local pool worker: where a task says that it started.
_started = None


def _watch(queue) -> None:
    global _started
    _started = queue


def _run_marked(task: Callable[[Any], Any], index: int, item: Any) -> Any:
    """Run ``task(item)`` in a pool worker after telling the parent that item ``index``
    started, so that a dead worker is charged only to the tasks that were running."""
    _started.put(index)
    return task(item)


def _local_pool(task: Callable[[Any], Any], items: Sequence[Any], options: ExecutorOptions,
                shown: _Progress) -> Iterator[Any]:
    """Run the items in a process pool; when a worker dies (BrokenProcessPool), run the
    unfinished items again in a fresh pool, at most ``options.retries`` times each."""
    pending = dict(enumerate(items))
    charged = dict.fromkeys(pending, 0)
    context = multiprocessing.get_context()
    while pending:
        started = context.SimpleQueue()
        broken = False
        with ProcessPoolExecutor(max_workers=min(options.nprocs, len(pending)),
                                 mp_context=context, initializer=_watch,
                                 initargs=(started,)) as pool:
            index_of = {pool.submit(_run_marked, task, index, item): index
                        for index, item in pending.items()}
            running = {future: items[index] for future, index in index_of.items()}
            for future, item in _as_done(running, shown, _local_wait):
                index = index_of[future]
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                del pending[index]
                shown.finish(item)
                yield result
        if not broken:
            break
        ran = set()
        while not started.empty():
            ran.add(started.get())
        running = (ran & pending.keys()) or set(pending)
        for index in running:
            charged[index] += 1
        lost = sorted(i for i in running if charged[i] > options.retries)
        if lost:
            raise IsybError(f"a worker process died {options.retries + 1} times while running "
                            f"task {lost[0] + 1} of {len(items)} (killed, or out of memory?); "
                            "finished results are kept, rerun to resume")
        log.warning("a worker process died (killed, or out of memory?); running %d "
                    "unfinished task(s) again", len(pending))


@contextlib.contextmanager
def shared_cluster(options: ExecutorOptions) -> Iterator[ExecutorOptions]:
    """Options under which several :func:`run_tasks` calls share one Dask cluster.

    Under ``--executor dask`` without ``--dask-scheduler``, the cluster (SLURM jobs, or a
    ``LocalCluster`` of ``nprocs`` single-threaded worker processes) starts here, once; the
    calls connect to it as to a given scheduler, and it closes when the block ends. It starts
    on entry, even if no task follows. A call outside such a block starts its own. Other
    options come back as they are.
    """
    if options.executor != "dask" or options.dask_scheduler:
        yield options
        return
    slurm = options.dask_cluster == "slurm"
    cluster = (_slurm_cluster() if slurm else
               _distributed().LocalCluster(n_workers=options.nprocs, threads_per_worker=1,
                                           processes=True, dashboard_address=None))
    try:
        if slurm:
            cluster.scale(jobs=options.nprocs)
        yield replace(options, dask_scheduler=cluster.scheduler_address, dask_cluster=None)
    finally:
        cluster.close()


def _distributed() -> ModuleType:
    try:
        import distributed
    except ImportError:
        raise IsybError("--executor dask needs dask.distributed: pip install "
                        "'dask[distributed]'") from None
    return distributed


def _dask(function: Callable[[Any], Any], items: Sequence[Any], options: ExecutorOptions,
          shown: _Progress) -> Iterator[Any]:
    distributed = _distributed()
    with shared_cluster(options) as connected:
        try:
            client = distributed.Client(connected.dask_scheduler)
        except (OSError, ValueError) as exc:
            raise IsybError(f"cannot reach the dask scheduler {connected.dask_scheduler}: "
                            f"{exc}") from None
        try:
            futures = client.map(function, list(items), pure=False, retries=options.retries)
            for future, item in _as_done(dict(zip(futures, items, strict=True)), shown,
                                         partial(_dask_wait, distributed.wait)):
                result = future.result()
                shown.finish(item)
                yield result
        finally:
            client.close()


def _dask_wait(dask_wait: Callable, futures: list) -> None:
    with contextlib.suppress(TimeoutError):
        dask_wait(futures, timeout=POLL_S, return_when="FIRST_COMPLETED")


def _slurm_cluster():
    """A dask-jobqueue ``SLURMCluster``, not yet scaled (:func:`shared_cluster` asks for the
    jobs inside the block that closes it), configured by dask's ``jobqueue.slurm``
    settings (a YAML file or ``DASK_JOBQUEUE__SLURM__*`` variables)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise IsybError("--dask-cluster slurm needs dask-jobqueue: pip install "
                        "dask-jobqueue") from None
    try:
        cluster = SLURMCluster()
    except (OSError, ValueError, RuntimeError) as exc:
        raise IsybError(f"cannot start the SLURM cluster (set cores, memory, queue... in "
                        f"dask's jobqueue.slurm configuration): {exc}") from None
    return cluster
