"""The local pool retries a task whose worker process died, as Dask does, within a bound."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch  # noqa: F401  (once here: forked workers, which set its threads, inherit it)

from isyb.errors import IsybError
from isyb.executor import ExecutorOptions, run_tasks

ITEMS = list(range(5))


@dataclass(frozen=True)
class _KillsItself:
    """Squares; item 2 kills its own process on its first ``deaths`` tries."""

    folder: Path
    deaths: int = 1

    def __call__(self, item: int) -> int:
        if item == 2:
            tries = len(list(self.folder.glob("tried-*")))
            (self.folder / f"tried-{tries}").touch()
            if tries < self.deaths:
                os.kill(os.getpid(), signal.SIGKILL)
        return item * item


def test_a_killed_pool_worker_costs_only_its_task_which_is_retried(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("isyb.executor")  # the CLI stops isyb's records at "isyb"
    logger.addHandler(caplog.handler)
    try:
        results = list(run_tasks(_KillsItself(tmp_path), ITEMS, ExecutorOptions(nprocs=2),
                                 progress=False))
    finally:
        logger.removeHandler(caplog.handler)
    assert sorted(results) == [item * item for item in ITEMS]
    assert len(list(tmp_path.glob("tried-*"))) == 2  # killed once, then done
    assert "worker process died" in caplog.text


def test_a_task_that_keeps_killing_its_worker_is_refused_after_the_retries(
        tmp_path: Path) -> None:
    task = _KillsItself(tmp_path, deaths=99)
    results = []
    with pytest.raises(IsybError, match="died 2 times while running task 3 of 5"):
        results.extend(run_tasks(task, ITEMS, ExecutorOptions(nprocs=2, retries=1),
                                 progress=False))
    assert len(list(tmp_path.glob("tried-*"))) == 2  # the first try and one retry
    assert set(results) <= {0, 1, 9, 16}  # the other tasks' results came out whole
