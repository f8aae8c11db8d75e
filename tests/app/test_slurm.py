"""A real SLURM cluster: the release through ``--executor dask --dask-cluster slurm`` is
byte-identical to the local release.

The cluster is one node on localhost (:mod:`slurm_local`: munged, slurmctld and
slurmd, stopped afterwards); dask-jobqueue's ``SLURMCluster`` gets its settings
from ``DASK_JOBQUEUE__SLURM__*`` variables, as a user's ``jobqueue.yaml`` would
give them. Skips, with the reason, where SLURM cannot start (not installed, not
root).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

#: JSON fields that record when or how long something ran, or which versions ran it
#: (provenance timings, dates, versions, and the modification time of the released image
#: that a QC record stamps): the only bytes that may change between runs.
VOLATILE_KEYS = {"timings_s", "created", "finished", "date", "versions", "isyb_version",
                 "mtime_ns"}


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``; JSON files without :data:`VOLATILE_KEYS`."""
    digests = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix == ".json":
            data = json.dumps(_stable(json.loads(data)), sort_keys=True).encode()
        digests[path.relative_to(root).as_posix()] = hashlib.sha256(data).hexdigest()
    return digests


def _release(bids: Path, out: Path, env: dict[str, str], *extra: str) -> None:
    for level in ("participant", "group"):
        args = [] if level == "group" else ["--quiet", *extra]
        run = subprocess.run(["isyb", str(bids), str(out), level, *args], env=env,
                             cwd=out.parent, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, run.stderr[-3000:]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    """The environment of a running one-node SLURM cluster, or a skip saying why not."""
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed "
                        "(pip install dask-jobqueue)")
    sys.path.insert(0, str(Path(__file__).parent))
    from slurm_local import SlurmUnavailable, local_slurm

    root = tmp_path_factory.mktemp("slurm")
    try:
        with local_slurm(root) as extra:
            print(f"SLURM up: {extra['SLURM_CONF']}")
            yield {"root": root, **extra}
    except SlurmUnavailable as exc:
        print(f"SLURM test skipped: {exc}")
        pytest.skip(f"cannot start a local SLURM cluster: {exc}")


def test_a_release_on_slurm_is_byte_identical_to_the_local_one(
        slurm, demo_release: dict[str, Path], tmp_path: Path) -> None:
    """The local release is the run's shared demo release (conftest ``demo_release``: the
    2-subject demo, local executor); SLURM releases a copy of its input."""
    bids = tmp_path / "bids"
    shutil.copytree(demo_release["bids"], bids)
    env = {**os.environ, "SLURM_CONF": slurm["SLURM_CONF"]}
    jobqueue = {"QUEUE": "isyb", "CORES": "1", "PROCESSES": "1", "MEMORY": "2GB",
                "WALLTIME": "00:30:00", "JOB_DIRECTIVES_SKIP": '["--mem"]',
                "LOG_DIRECTORY": str(tmp_path / "jobs"), "PYTHON": sys.executable}
    env.update({f"DASK_JOBQUEUE__SLURM__{k}": v for k, v in jobqueue.items()})
    started = time.monotonic()
    _release(bids, tmp_path / "slurm", env, "--executor", "dask", "--dask-cluster", "slurm",
             "--nprocs", "2")
    print(f"release on SLURM: {time.monotonic() - started:.0f} s")
    jobs = sorted((tmp_path / "jobs").glob("*.err")) + sorted((tmp_path / "jobs").glob("*.out"))
    assert jobs, "no SLURM job ran"  # the subjects really went through sbatch
    local, remote = _digests(demo_release["release"]), _digests(tmp_path / "slurm")
    assert local.keys() == remote.keys()
    assert [name for name in local if local[name] != remote[name]] == []
