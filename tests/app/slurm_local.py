"""A single-node SLURM cluster on localhost, for the ``--dask-cluster slurm`` test.

:func:`local_slurm` starts ``munged`` (its own key and socket), ``slurmctld``
and ``slurmd`` in the foreground from a minimal ``slurm.conf`` written into a
scratch folder (one node ``localhost`` with 2 CPUs, one partition, no cgroups:
``proctrack/linuxproc``, ``task/none``; fit for a container), waits until the
node is idle, and yields the environment that points ``sbatch``, ``squeue``
and dask-jobqueue's ``SLURMCluster`` at it. The daemons are stopped (by the
process ids it started) when the context ends. Anything that keeps the
cluster from coming up raises :class:`SlurmUnavailable` with the reason.

Run by hand: ``python tests/app/slurm_local.py`` brings the cluster up,
runs ``srun hostname`` and stops it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: What must be installed (Debian: ``apt-get install slurm-wlm munge``).
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel")
#: CPUs of the one node (at most the machine's).
NODE_CPUS = 2

SLURM_CONF = """\
ClusterName=isybtest
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=isyb Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class SlurmUnavailable(RuntimeError):
    """The local SLURM cluster cannot start here; the message says why."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 5) -> str:
    if not path.is_file():
        return f"(no {path.name})"
    return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])


def _wait(check, seconds: float, what: str, log: Path, daemons: list) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, process in daemons:
            if process.poll() is not None:
                raise SlurmUnavailable(f"{name} exited with status {process.returncode}: "
                                       f"{_tail(log)}")
        if check():
            return
        time.sleep(0.5)
    raise SlurmUnavailable(f"{what} within {seconds:g} s: {_tail(log)}")


def _stop(daemons: list[tuple[str, subprocess.Popen]]) -> None:
    for _, process in reversed(daemons):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for _, process in reversed(daemons):
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def local_slurm(root: Path, *, timeout_s: float = 60.0) -> Iterator[dict[str, str]]:
    """Run munged, slurmctld and slurmd under ``root``; yield the environment to use them."""
    missing = [p for p in PROGRAMS if shutil.which(p) is None]
    if missing:
        raise SlurmUnavailable(f"not installed: {', '.join(missing)} "
                               "(apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("slurmd must run as root to start jobs; not root here")
    root = Path(root).resolve()
    for folder in ("munge", "state", "spool", "log"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "munge", 0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    conf = root / "slurm.conf"
    conf.write_text(SLURM_CONF.format(root=root, ctld_port=_free_port(),
                                      slurmd_port=_free_port(),
                                      cpus=min(NODE_CPUS, os.cpu_count() or 1)))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons: list[tuple[str, subprocess.Popen]] = []

    def start(name: str, *args: str) -> None:
        stream = open(root / "log" / f"{name}.out", "wb")  # noqa: SIM115 (lives with the daemon)
        daemons.append((name, subprocess.Popen([name, *args], env=env, stdout=stream,
                                               stderr=subprocess.STDOUT,
                                               start_new_session=True)))
        stream.close()

    try:
        munge = root / "munge"
        start("munged", "--foreground", "--force", f"--socket={munge}/munge.socket",
              f"--key-file={key}", f"--pid-file={munge}/munged.pid",
              f"--log-file={root}/log/munged.log", f"--seed-file={munge}/munged.seed")
        _wait(lambda: (munge / "munge.socket").exists(), timeout_s, "munged did not start",
              root / "log" / "munged.log", daemons)
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-N", "localhost", "-f", str(conf))

        def idle() -> bool:
            state = subprocess.run(["sinfo", "-h", "-n", "localhost", "-o", "%t"], env=env,
                                   capture_output=True, text=True, timeout=20).stdout
            return state.strip().rstrip("*") in ("idle", "mix")

        _wait(idle, timeout_s, "the node did not become idle", root / "log" / "slurmd.log",
              daemons)
        yield {"SLURM_CONF": str(conf)}
    finally:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, timeout=20,
                           capture_output=True)
        _stop(daemons)


if __name__ == "__main__":
    scratch = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/isyb-slurm")
    started = time.monotonic()
    with local_slurm(scratch) as extra:
        print(f"slurm up in {time.monotonic() - started:.1f} s: SLURM_CONF={extra['SLURM_CONF']}")
        print(subprocess.run(["srun", "hostname"], env={**os.environ, **extra},
                             capture_output=True, text=True, timeout=60))
