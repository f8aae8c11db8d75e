"""Helpers shared by the benchmark scripts: child-process timing, machine and source state.

Wall time is measured around each child; peak memory is the child's
``ru_maxrss`` from ``os.wait4`` (that child and the descendants it waited for).
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def default_data() -> Path:
    env = os.environ.get("ISYB_TEST_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def script(name: str) -> list[str]:
    """The console script ``name`` of this interpreter (no pyenv or conda shim in between)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return [str(path)]
    if name == "isyb":
        return [sys.executable, "-m", "isyb.cli"]
    return [sys.executable, "-m", name]


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"nproc": usable, "cpu_count": os.cpu_count(), "cpu_model": model,
            "mem_total_gib": mem_gib, "platform": platform.platform(),
            "python": platform.python_version()}


def run_child(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd``; return wall seconds, the child's peak RSS (MiB) and its exit code."""
    with open(log, "wb") as sink:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    rss_kib = usage.ru_maxrss / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {"wall_s": round(wall, 3), "max_rss_mib": round(rss_kib / 1024, 1)}


def timed(label: str, cmd: list[str], repeats: int, env: dict[str, str], logs: Path) -> dict:
    """Run ``cmd`` ``repeats`` times; per-run figures plus the median, min, max and peak."""
    runs = []
    for i in range(repeats):
        log = logs / f"{label}_{i}.log"
        run = run_child(cmd, env, log)
        if "preparing template" in log.read_text(errors="replace"):
            run["prepared_template"] = True
            print(f"  WARNING: {label} run {i + 1} prepared a template (cache miss; did the "
                  "isyb sources change?); its time is not comparable", flush=True)
        print(f"  {label} run {i + 1}/{repeats}: {run['wall_s']:.2f} s, "
              f"{run['max_rss_mib']:.0f} MiB", flush=True)
        runs.append(run)
    walls = [r["wall_s"] for r in runs]
    return {"command": cmd, "runs": runs, "median_s": round(statistics.median(walls), 3),
            "min_s": min(walls), "max_s": max(walls),
            "max_rss_mib": max(r["max_rss_mib"] for r in runs)}


def source_state() -> dict:
    """The git commit of the isyb sources and a digest of their current bytes."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "src" / "isyb").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes())
    try:
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = "unknown", ""
    return {"commit": commit, "src_modified": bool(dirty),
            "src_sha256": digest.hexdigest()[:16]}


def isyb_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("isyb")
    except PackageNotFoundError:
        return "unknown"


def detect(path: Path) -> dict:
    """Face detection on ``path``: the boolean and the number of yaws with a face."""
    from isyb.io import load_volume
    from isyb.viz.faces import face_detected

    volume = load_volume(path)
    found = face_detected(volume.data, volume.zooms)
    return {"detected": bool(found["detected"]),
            "yaws_with_face": sum(bool(boxes) for boxes in found["yaws"].values()),
            "yaws": len(found["yaws"])}
