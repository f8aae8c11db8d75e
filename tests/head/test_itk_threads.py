"""ITK's threads: registrations run on one ITK thread whatever this process's ITK runs.

ITK fixes its thread count at a process's first ITK object, so every check runs in a
fresh Python process (``python -c``) with ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from isyb.executor import ITK_THREADS_ENV

#: Coregisters a 4 mm phantom head to a 5 % longer, shifted one after ITK started at the
#: environment's thread count, and prints the matrix, the thread counts and the pids.
SCRIPT = """
import json, os
import numpy as np
from isyb.derive.normalize import coregister
from isyb.head.ants import itk_threads, one_itk_thread, start_itk
from isyb.synthetic.phantom import make_phantom

fixed = make_phantom(voxel_size=4.0, seed=0)
moving = make_phantom(voxel_size=4.0, seed=1, length=fixed.length * 1.05)
shifted = moving.affine.copy()
shifted[:3, 3] += [3.0, -2.0, 4.0]
start_itk()
matrix = coregister(moving.image, shifted, fixed.image, fixed.affine, kind="Affine")
print(json.dumps({"matrix": matrix.tolist(), "here": itk_threads(),
                  "env": os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"],
                  "registered_in": one_itk_thread(os.getpid), "pid": os.getpid(),
                  "registration_threads": one_itk_thread(itk_threads)}))
"""


def _run(threads: int) -> dict:
    env = {**os.environ, ITK_THREADS_ENV: str(threads)}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def runs() -> dict[str, dict]:
    return {"one": _run(1), "two": _run(2), "two again": _run(2)}


def test_a_registration_gives_the_same_matrix_on_a_two_thread_itk_as_on_one(runs) -> None:
    # Before the helper, ANTs registered on the process's two threads: three runs gave
    # three matrices (x translations 2.99657-2.99668 mm), none the one-thread matrix.
    assert runs["two"]["matrix"] == runs["one"]["matrix"]
    assert runs["two again"]["matrix"] == runs["one"]["matrix"]


def test_the_registration_runs_in_a_one_thread_helper_and_the_policy_stays(runs) -> None:
    two = runs["two"]
    assert two["here"] == 2 and two["env"] == "2"  # nothing overrode the thread policy
    assert two["registration_threads"] == 1 and two["registered_in"] != two["pid"]
    one = runs["one"]
    assert one["here"] == 1 and one["registered_in"] == one["pid"]  # no helper needed


#: Kills the helper in its registration (``os.abort``), then registers again.
DYING = """
import os
from isyb.errors import RegistrationError
from isyb.head.ants import itk_threads, one_itk_thread, start_itk

start_itk()
try:
    one_itk_thread(os.abort)
except RegistrationError as exc:
    print("refused:", exc)
print("next:", one_itk_thread(itk_threads), one_itk_thread(os.getpid) != os.getpid())
"""


def test_a_helper_that_dies_gives_a_one_line_error_and_the_next_registration_a_new_one(
) -> None:
    env = {**os.environ, ITK_THREADS_ENV: "2"}
    done = subprocess.run([sys.executable, "-c", DYING], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        "refused: the one-thread registration helper process died (killed, or out of memory?)",
        "next: 1 True"]
