"""Executors: where per-subject tasks run. Local processes by default, Dask when asked.

``local`` is :class:`concurrent.futures.ProcessPoolExecutor` (or the calling
process itself for one worker). ``dask`` submits the same picklable function
to a ``dask.distributed`` client: a running scheduler (``--dask-scheduler
tcp://host:8786``), a SLURM cluster through dask-jobqueue (``--dask-cluster
slurm``; its queue, cores and memory come from dask's configuration, e.g.
``~/.config/dask/jobqueue.yaml``), or else a ``LocalCluster`` of ``nprocs``
single-threaded worker processes. Tasks get ``retries`` so that a lost worker's
task is run again elsewhere; tasks are idempotent (atomic writes, outputs
rewritten whole), so a retry cannot leave a mixed result.

Threads: every task runs with :func:`limit_threads` set, before any library
work, to ``ExecutorOptions.threads`` (``--omp-nthreads``) or by default to its
share of the machine (``cores // nprocs``, at least 1; 1 under Dask, whose
workers are single-threaded). This is the only place isyb sets torch's and
ITK's thread counts; nothing else overrides them. ITK's multi-threaded metric
sums in an order that depends on the thread count, so registrations (and every
output after them) are the same on every executor only with a fixed count: the
release always runs ``threads=1``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from isyb.errors import IsybError

EXECUTORS = ("local", "dask")


#: Environment variable ITK (and so ANTsPy) reads for its default thread count.
ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


def limit_threads(threads: int) -> None:
    """Run torch and ITK (ANTs) with ``threads`` threads in this process.

    ITK reads its variable when it first builds a filter, so this is called at
    the start of every task, before any registration.
    """
    threads = max(1, int(threads))
    os.environ[ITK_THREADS_ENV] = str(threads)
    import torch

    torch.set_num_threads(threads)


def threads_per_task(nprocs: int, n_tasks: int | None = None) -> int:
    """Each task's share of the cores when ``nprocs`` tasks (or fewer) run at once."""
    running = max(1, min(nprocs, n_tasks or nprocs))
    return max(1, (os.cpu_count() or 1) // running)


@dataclass(frozen=True)
class _Limited:
    """``function`` run after :func:`limit_threads` (picklable, for pools and Dask)."""

    function: Callable[[Any], Any]
    threads: int

    def __call__(self, item: Any) -> Any:
        limit_threads(self.threads)
        return self.function(item)


@dataclass(frozen=True)
class ExecutorOptions:
    """How to run tasks (see ``isyb BIDS_DIR OUTPUT_DIR participant --help``).

    ``executor``: ``local`` or ``dask``; ``nprocs``: tasks at once (local
    processes, Dask workers or SLURM jobs); ``dask_scheduler``: the address of a
    running scheduler; ``dask_cluster``: ``slurm`` for dask-jobqueue workers;
    ``retries``: reruns of a Dask task that raised (a lost worker's tasks are
    rerun by the scheduler anyway); ``threads``: torch and ITK threads of every
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
    are polled every ``POLL_S`` seconds.
    """
    total = sum(steps.total(item) for item in items) if steps else len(items)
    bar = tqdm(total=total, desc=desc, unit="step" if steps else "task",
               disable=not progress, file=sys.stderr)
    threads = options.threads or (1 if options.executor == "dask" else
                                  threads_per_task(options.nprocs, len(items)))
    task = _Limited(function, threads)
    polled = steps if progress else None
    try:
        if options.executor == "dask":
            yield from _dask(task, items, options, bar, polled)
        elif (options.nprocs <= 1 or len(items) <= 1) and polled is None:
            for item in items:
                yield task(item)
                bar.update()
        else:
            pool = ThreadPoolExecutor(max_workers=1) if options.nprocs <= 1 or len(items) <= 1 \
                else ProcessPoolExecutor(max_workers=min(options.nprocs, len(items)))
            try:
                futures = [pool.submit(task, item) for item in items]
                yield from _as_done(futures, items, bar, polled)
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _as_done(futures: list, items: Sequence[Any], bar: tqdm,
             steps: Steps | None) -> Iterator[Any]:
    """Results of ``futures`` (concurrent or Dask) as they finish; the bar moves per step."""
    pending = dict(zip(futures, items, strict=True))
    finished = 0
    while pending:
        done = [future for future in pending if future.done()]
        for future in done:
            finished += steps.total(pending.pop(future)) if steps else 1
            result = future.result()
            _show(bar, finished, pending, steps)
            yield result
        if not done:
            _show(bar, finished, pending, steps)
            time.sleep(POLL_S)


def _show(bar: tqdm, finished: int, running: dict, steps: Steps | None) -> None:
    """Move the bar to the finished tasks' steps plus the running tasks' finished steps."""
    position = finished
    if steps:
        position += sum(min(steps.total(item), steps.done(item)) for item in running.values())
    if position > bar.n:
        bar.update(position - bar.n)


def _dask(function: Callable[[Any], Any], items: Sequence[Any], options: ExecutorOptions,
          bar: tqdm, steps: Steps | None) -> Iterator[Any]:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise IsybError("--executor dask needs dask.distributed: pip install "
                        "'dask[distributed]'") from None
    cluster = None
    if options.dask_scheduler:
        try:
            client = Client(options.dask_scheduler)
        except (OSError, ValueError) as exc:
            raise IsybError(f"cannot reach the dask scheduler {options.dask_scheduler}: "
                            f"{exc}") from None
    elif options.dask_cluster == "slurm":
        cluster = _slurm_cluster(options.nprocs)
        client = Client(cluster)
    else:
        cluster = LocalCluster(n_workers=options.nprocs, threads_per_worker=1,
                               processes=True, dashboard_address=None)
        client = Client(cluster)
    try:
        futures = client.map(function, list(items), pure=False, retries=options.retries)
        yield from _as_done(futures, items, bar, steps)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _slurm_cluster(jobs: int):
    """A dask-jobqueue ``SLURMCluster`` of ``jobs`` worker jobs, configured by dask's
    ``jobqueue.slurm`` settings (a YAML file or ``DASK_JOBQUEUE__SLURM__*`` variables)."""
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
    cluster.scale(jobs=jobs)
    return cluster
