"""The progress bar counts steps inside running tasks (``run_tasks(steps=...)``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from isyb import executor
from isyb.executor import ExecutorOptions, Steps, run_tasks


def _two_steps(path: str) -> str:
    """A task that marks each of its two steps in a file, as the release's manifest does
    (atomically: a reader polling the file never sees it truncated and empty)."""
    for step in ("1", "2"):
        time.sleep(0.3)
        Path(path + ".part").write_text(step)
        os.replace(path + ".part", path)
    return path


def _done(path: str) -> int:
    return int(Path(path).read_text()) if Path(path).is_file() else 0


@pytest.mark.parametrize("nprocs", [1, 2])
def test_the_bar_moves_per_step_while_tasks_run(tmp_path: Path, nprocs: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(executor, "POLL_S", 0.05)
    positions: list[tuple[int, int]] = []
    real = executor._Progress.show

    def record(shown, running) -> None:
        real(shown, running)
        positions.append((shown.finished, shown.bar.n))

    monkeypatch.setattr(executor._Progress, "show", record)
    items = [str(tmp_path / f"task{i}") for i in range(2)]
    results = list(run_tasks(_two_steps, items, ExecutorOptions(nprocs=nprocs, threads=1),
                             steps=Steps(lambda _: 2, _done)))
    assert sorted(results) == items
    assert positions[-1] == (4, 4)
    # the bar counted steps of tasks that were still running
    assert any(shown > finished for finished, shown in positions)


def test_without_progress_nothing_is_polled(tmp_path: Path) -> None:
    def never(_: str) -> int:
        raise AssertionError("polled")

    items = [str(tmp_path / "a")]
    assert list(run_tasks(_two_steps, items, ExecutorOptions(threads=1), progress=False,
                          steps=Steps(lambda _: 2, never))) == items
