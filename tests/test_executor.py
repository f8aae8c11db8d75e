"""The executor with cheap tasks: local and Dask agree, lost workers are retried, every task
runs under the one thread policy, and bad options are one-line errors."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from isyb.cli import main
from isyb.errors import IsybError
from isyb.executor import (
    ITK_THREADS_ENV,
    ExecutorOptions,
    keep_freed_memory,
    limit_threads,
    run_tasks,
    shared_cluster,
)

ITEMS = list(range(6))


def _report(item: int) -> dict:
    """A cheap task: its result, the threads it ran with, and whether its process keeps
    freed memory (:func:`keep_freed_memory` was called in it)."""
    return {"item": item, "square": item * item, "torch": torch.get_num_threads(),
            "itk": os.environ.get(ITK_THREADS_ENV),
            "kept_memory": keep_freed_memory.cache_info().currsize == 1,
            "blas": sorted({pool["num_threads"] for pool in threadpool_info()
                            if pool["user_api"] == "blas"})}


def _report_after_deepbet(item: int) -> dict:
    """:func:`_report` after loading deepbet's model, as brain extraction does."""
    from isyb.head.brain import _deepbet_model

    _deepbet_model()
    return _report(item)


@dataclass(frozen=True)
class _Faulty:
    """Squares; on the first try, item 2 kills its own process and item 3 raises."""

    folder: Path

    def __call__(self, item: int) -> int:
        marker = self.folder / f"tried-{item}"
        if item in (2, 3) and not marker.exists():
            marker.touch()
            if item == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            raise RuntimeError("a transient failure")
        return item * item


@pytest.fixture
def own_threads(monkeypatch: pytest.MonkeyPatch):
    """Give back this process's torch, BLAS and ITK threads after an in-process task."""
    monkeypatch.setenv(ITK_THREADS_ENV, os.environ.get(ITK_THREADS_ENV, "1"))
    before = torch.get_num_threads()
    with threadpool_limits(None):
        yield
    torch.set_num_threads(before)


def _by_item(results) -> list[dict]:
    return sorted(results, key=lambda r: r["item"])


def test_local_and_dask_give_the_same_results_and_dask_tasks_run_single_threaded(
        own_threads) -> None:
    local = _by_item(run_tasks(_report, ITEMS, ExecutorOptions(), progress=False))
    dask = _by_item(run_tasks(_report, ITEMS, ExecutorOptions("dask", nprocs=2),
                              progress=False))
    assert [(r["item"], r["square"]) for r in dask] == [(r["item"], r["square"]) for r in local]
    assert {(r["torch"], r["itk"]) for r in dask} == {(1, "1")}
    cores = os.cpu_count() or 1  # one local process: the task gets every core
    assert {(r["torch"], r["itk"]) for r in local} == {(cores, str(cores))}
    # glibc keeps freed memory in local tasks; Dask workers keep their nanny's trimming
    assert {r["kept_memory"] for r in local} == {True}
    assert {r["kept_memory"] for r in dask} == {False}


def test_no_items_start_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """A study whose templates each have fewer than two subjects has no re-identification
    task: nothing may start a Dask (or SLURM) cluster for it. (A local run never started a
    pool for fewer than two items.)"""
    def refuse(*args, **kwargs):
        raise AssertionError("started workers for no task")

    monkeypatch.setattr("isyb.executor._local_pool", refuse)
    monkeypatch.setattr("isyb.executor._dask", refuse)
    assert list(run_tasks(_report, [], ExecutorOptions(executor="dask", nprocs=2),
                          progress=False)) == []


def _pid(item: int) -> int:
    return os.getpid()


def test_calls_in_a_shared_cluster_run_on_its_workers_and_it_closes_after() -> None:
    """Two calls, one cluster of two workers: every task of both ran in one of that
    cluster's worker processes (a cluster per call has others), and no scheduler is left
    after the block."""
    from distributed import Client

    with shared_cluster(ExecutorOptions(nprocs=2)) as local:
        assert local == ExecutorOptions(nprocs=2)
    with shared_cluster(ExecutorOptions("dask", nprocs=2)) as shared:
        assert shared.dask_scheduler and shared.dask_cluster is None
        with Client(shared.dask_scheduler) as client:
            cluster_workers = set(client.run(os.getpid).values())
        assert len(cluster_workers) == 2 and os.getpid() not in cluster_workers
        for _ in range(2):
            assert set(run_tasks(_pid, ITEMS, shared, progress=False)) <= cluster_workers
    with pytest.raises((OSError, TimeoutError)):
        Client(shared.dask_scheduler, timeout="2s")


def test_a_slurm_cluster_is_closed_when_its_jobs_cannot_be_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``SLURMCluster`` whose ``scale`` raises (sbatch refused the jobs) is closed, not
    left with its scheduler running; one that scales is closed after the block."""
    import types

    events: list[str] = []

    class FakeSLURMCluster:
        scheduler_address = "tcp://127.0.0.1:1"

        def scale(self, jobs: int) -> None:
            events.append(f"scale {jobs}")
            if refuse:
                raise RuntimeError("sbatch: error: invalid partition")

        def close(self) -> None:
            events.append("close")

    monkeypatch.setitem(sys.modules, "dask_jobqueue",
                        types.SimpleNamespace(SLURMCluster=FakeSLURMCluster))
    options = ExecutorOptions("dask", nprocs=3, dask_cluster="slurm")
    refuse = True
    with pytest.raises(RuntimeError, match="invalid partition"), shared_cluster(options):
        raise AssertionError("the block ran without jobs")
    assert events == ["scale 3", "close"]
    refuse, events[:] = False, []
    with shared_cluster(options) as shared:
        assert shared.dask_scheduler == FakeSLURMCluster.scheduler_address
        assert events == ["scale 3"]
    assert events == ["scale 3", "close"]


def test_a_killed_or_failing_dask_task_is_retried(tmp_path: Path) -> None:
    results = run_tasks(_Faulty(tmp_path), ITEMS, ExecutorOptions("dask", nprocs=2),
                        progress=False)
    assert sorted(results) == [item * item for item in ITEMS]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tried-2", "tried-3"]


def test_local_pool_tasks_get_their_share_of_the_cores_and_deepbet_keeps_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """8 cores, 2 processes: 4 threads per task, still 4 after deepbet's model is loaded
    (it used to set torch to every core)."""
    monkeypatch.setattr("isyb.executor.os.cpu_count", lambda: 8)
    results = run_tasks(_report_after_deepbet, [0, 1], ExecutorOptions(nprocs=2),
                        progress=False)
    assert {(r["torch"], r["itk"]) for r in results} == {(4, "4")}


def test_a_caller_can_fix_the_threads_of_every_task(own_threads) -> None:
    results = run_tasks(_report, [0], ExecutorOptions(threads=3), progress=False)
    assert [(r["torch"], r["itk"], r["blas"]) for r in results] == [(3, "3", [3])]


def test_loading_deepbet_does_not_change_the_thread_count(own_threads) -> None:
    from isyb.head.brain import _deepbet_model

    limit_threads(1)
    _deepbet_model.cache_clear()
    _deepbet_model()
    assert torch.get_num_threads() == 1
    assert os.environ[ITK_THREADS_ENV] == "1"


def test_a_task_loads_torch_only_for_a_network_and_then_on_its_threads() -> None:
    """In a fresh process (a pool's or Dask's worker), :func:`limit_threads` leaves torch
    unloaded (about 2 CPU s a worker that never runs a network saves), and deepbet's
    model, loaded afterwards, runs on the task's thread count, not torch's default."""
    script = ("import sys; from isyb.executor import limit_threads; limit_threads(3); "
              "print('torch' in sys.modules); from isyb.head.brain import _deepbet_model; "
              "_deepbet_model(); import torch; print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.split() == ["False", "3"]


@pytest.mark.parametrize(("options", "message"), [
    ({"executor": "spark"}, "unknown executor 'spark'"),
    ({"nprocs": 0}, "--nprocs must be a whole number ≥ 1"),
    ({"retries": -1}, "retries must be"),
    ({"threads": 0}, "--omp-nthreads must be"),
    ({"dask_scheduler": "tcp://127.0.0.1:8786"}, "need --executor dask"),
    ({"executor": "dask", "dask_scheduler": "tcp://127.0.0.1:8786", "dask_cluster": "slurm"},
     "not both"),
    ({"executor": "dask", "dask_cluster": "pbs"}, "unknown --dask-cluster 'pbs'"),
])
def test_bad_executor_options_are_errors(options: dict, message: str) -> None:
    with pytest.raises(IsybError, match=message):
        ExecutorOptions(**options)


def test_an_unreachable_scheduler_is_an_error() -> None:
    import dask

    options = ExecutorOptions("dask", dask_scheduler="tcp://127.0.0.1:9")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(IsybError, match="cannot reach the dask scheduler"):
        list(run_tasks(_report, ITEMS, options, progress=False))


def test_options_the_executor_refuses_are_one_line_cli_errors(tmp_path: Path, capsys) -> None:
    from conftest import assert_one_line_error

    code = main(["study", str(tmp_path), str(tmp_path / "out"), "--templates", "a,b",
                 "--dask-scheduler", "tcp://127.0.0.1:8786"])
    assert_one_line_error(code, capsys.readouterr().err, "need --executor dask")
    code = main([str(tmp_path), str(tmp_path / "out"), "participant", "--executor", "dask",
                 "--dask-scheduler", "tcp://127.0.0.1:8786", "--dask-cluster", "slurm"])
    assert_one_line_error(code, capsys.readouterr().err, "not both")


_FAULTS_CHILD = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from isyb.executor import keep_freed_memory
    assert keep_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for megabytes in range(1, 31):  # temporaries of 1, 2, ..., 30 MB, one after the other
    block = np.empty(megabytes * 2**20 // 8)
    block[::512] = 1.0  # touch every page
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's mallopt")
def test_freed_memory_is_reused_rather_than_faulted_in_again() -> None:
    """Temporaries of 1 to 30 MB, one after the other: with glibc's defaults each is
    above the threshold the last one set, so it is fresh pages from the kernel (faulted in
    and zeroed); after :func:`keep_freed_memory` they come from the heap, whose pages the
    earlier ones already touched."""
    import subprocess
    import sys

    # Without numpy's huge pages, which the kernel may or may not grant (2 MB faults)
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}
    faults = {mode: int(subprocess.run([sys.executable, "-c", _FAULTS_CHILD, mode], env=env,
                                       capture_output=True, text=True, check=True).stdout)
              for mode in ("default", "keep")}
    assert faults["default"] > 5 * faults["keep"], faults  # 119040 and 7598 found


_HEAP_CHILD = """
import ctypes, resource
import numpy as np
from isyb.executor import heap_allocations, keep_freed_memory
keep_freed_memory()

class MallInfo(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo

def faults() -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):  # a network's layer outputs: 96 MB, freed before the next
        block = np.empty(96 * 2**20 // 8)
        block[::512] = 1.0  # touch every page
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

def mapped(gib: int) -> int:  # blocks glibc adds from mmap to hold a block (never touched)
    before = libc.mallinfo2().hblks
    block = np.empty(gib * 2**30, dtype=np.uint8)
    added = libc.mallinfo2().hblks - before
    del block
    return added

with heap_allocations():
    inside = faults(), mapped(1)
print(*inside, mapped(2))  # more than the heap kept free
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's mallopt")
def test_a_network_reuses_freed_blocks_and_later_code_gets_mmap_again() -> None:
    """Blocks of 96 MB (above any ``mmap`` threshold) allocated and freed one after the
    other: inside :func:`heap_allocations` the heap serves them, so only the first is
    faulted in (with glibc's defaults each is fresh pages), and even 1 GiB comes from the
    heap; after it glibc maps a block that the heap's free memory cannot hold, as before."""
    env = {**os.environ, "NUMPY_MADVISE_HUGEPAGE": "0"}
    env.pop("GLIBC_TUNABLES", None)
    inside_faults, inside_mapped, after_mapped = map(int, subprocess.run(
        [sys.executable, "-c", _HEAP_CHILD], env=env, capture_output=True, text=True,
        check=True).stdout.split())
    assert inside_faults < 2 * (96 * 2**20 // 4096), inside_faults  # 24 495 found
    assert (inside_mapped, after_mapped) == (0, 1)
