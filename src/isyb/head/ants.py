"""The one ANTs bridge: isyb's RAS arrays to ANTs images, ANTs transform files to RAS matrices.

isyb's images are arrays with a voxel->world ``affine`` in RAS millimetres
(nibabel's convention). ANTs (ITK) places an image in LPS physical space by
its origin, spacing and direction cosines, and writes affine transforms as
ITK ``MatrixOffsetTransformBase`` parameters (a 3×3 matrix, a translation and
a centre) that map a *fixed* physical point to a *moving* one. A RAS point
``(x, y, z)`` is the LPS point ``(-x, -y, z)``: :data:`FLIP`, its own inverse.

Every function takes ``flip=False`` for callers that hand ANTs their own
working frame as physical space (:mod:`isyb.head.register`): then the affine
or the matrix is used as it is.

**ITK's threads.** ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once,
when a process makes its first ITK object (an ``ants.from_numpy`` is enough),
and keeps that count for the life of the process: setting the variable later
changes nothing (measured: ANTs' N4 after the variable went from 2 to 1 still ran
1.8 cores, and the other way round one). ANTs' registration is reproducible
only on one thread: on two, two runs of the same SyN normalisation of
colin27, or of the affine before it, wrote different transform files every
time, while N4 + Atropos labels and DiReCT thickness are the same on 1, 2, 4
and 8 threads. ANTsPy's ``set_ants_deterministic`` sets the variable to 1,
which only works before the first ITK object, and then holds every later
ITK filter of the process (DiReCT, ANTs' Atropos) to one thread. So isyb starts ITK in
one place, :func:`start_itk`, at the count of the thread policy
(:func:`isyb.executor.limit_threads`), and runs each registration through
:func:`one_itk_thread`: here when this process's ITK runs one thread (or has
not started: it then starts on one, as ``set_ants_deterministic`` did), else
in a helper process forked before ITK started here, whose ITK runs one. ITK
work started outside isyb (a notebook's own ``ants`` calls before isyb's) is
not seen.

>>> import numpy as np
>>> affine = np.diag([2.0, 2.0, 2.0, 1.0]); affine[:3, 3] = [-90.0, -126.0, -72.0]
>>> geometry = ants_geometry(affine)
>>> geometry["origin"], geometry["spacing"]
((90.0, 126.0, -72.0), (2.0, 2.0, 2.0))
>>> geometry["direction"].diagonal().tolist()
[-1.0, -1.0, 1.0]
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.util import Finalize
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from isyb.errors import RegistrationError
from isyb.executor import ITK_THREADS_ENV, keep_freed_memory

if TYPE_CHECKING:
    from types import ModuleType

    import ants

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: ITK's thread count in this process once :func:`start_itk` has started it.
_started: int | None = None
#: The one-thread helper process of :func:`submit_one_itk_thread` (:func:`_start_helper`).
_helper: ProcessPoolExecutor | None = None

#: RAS <-> LPS world flip (4×4, its own inverse).
FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def _threads_from_env() -> int:
    """The count ITK takes from the environment (its default: the cores)."""
    value = os.environ.get(ITK_THREADS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def start_itk() -> ModuleType:
    """ANTsPy, with ITK's thread count in this process fixed now at the environment's
    (see the module docstring); every ANTs call of isyb gets the module here.

    With more than one thread, the one-thread helper of :func:`submit_one_itk_thread`
    is forked first, while ITK has not started here, so that it starts its own on one.
    """
    global _started
    import ants

    if _started is None:
        threads = _threads_from_env()
        if threads > 1:
            _start_helper()
        _started = threads
        ants.from_numpy(np.zeros((1, 1, 1), dtype=np.float32))
    return ants


def itk_threads() -> int:
    """ITK's thread count in this process: the one it started with, or the one it would
    start with now."""
    return _started if _started is not None else _threads_from_env()


def _start_helper() -> ProcessPoolExecutor | None:
    """The one-thread helper process, started now if it is not running: a fork of this
    process while ITK has not started here (no re-import, and the caller's script is
    never re-run), else a spawned one (as in a fork of a process whose ITK had
    started). None in a daemonic process, which cannot have children."""
    global _helper
    if _helper is None and not multiprocessing.current_process().daemon:
        method = "fork" if _started is None else "spawn"
        _helper = ProcessPoolExecutor(max_workers=1, initializer=_helper_start,
                                      mp_context=multiprocessing.get_context(method))
        Finalize(_helper, _stop_helper, exitpriority=10)
        _helper.submit(int).result()  # the process starts with the first task
    return _helper


def _helper_start() -> None:
    """The helper process's start: ITK and BLAS on one thread (it never runs torch)."""
    from threadpoolctl import threadpool_limits

    keep_freed_memory()
    threadpool_limits(1, user_api="blas")
    os.environ[ITK_THREADS_ENV] = "1"
    start_itk()


def _forget_helper() -> None:
    """In a forked child: the parent's helper is not this process's."""
    global _helper
    _helper = None


os.register_at_fork(after_in_child=_forget_helper)


def _stop_helper() -> None:
    if _helper is not None:
        _helper.shutdown(wait=True)
        _forget_helper()


def registers_here() -> bool:
    """Whether :func:`one_itk_thread` runs its function in this process: when ITK here
    runs one thread or has not started."""
    return _started in (None, 1)


def submit_one_itk_thread(function: Callable[..., _T], /, *args: Any,
                          **kwargs: Any) -> Future[_T]:
    """Run ``function(*args, **kwargs)``, an ANTs registration, on one ITK thread; the
    future of its result.

    In this process (done when this returns) when its ITK runs one thread or has not
    started (it then starts on one); else in the helper process (:func:`start_itk`
    forks it) whose ITK runs one, while this process goes on (``function`` and its
    arguments must pickle). A daemonic process (a Dask worker under its nanny given
    more than one thread) cannot have a helper: it registers on its own threads and
    says so, as the result may then differ between runs.
    """
    helper = None if registers_here() else _start_helper()
    if helper is not None:
        return helper.submit(function, *args, **kwargs)
    if _started is None:
        with _environment(ITK_THREADS_ENV, "1"):
            start_itk()
    if _started != 1:
        log.warning("ITK runs %d threads in this daemonic process, which cannot start a "
                    "one-thread helper: the registration may differ between runs", _started)
    done: Future[_T] = Future()
    try:
        done.set_result(function(*args, **kwargs))
    except BaseException as exc:  # handed to the caller through the future, as a pool does
        done.set_exception(exc)
    return done


def one_itk_thread(function: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
    """:func:`submit_one_itk_thread`, waiting for the result (:func:`registered`)."""
    return registered(submit_one_itk_thread(function, *args, **kwargs))


def registered(pending: Future[_T]) -> _T:
    """The result of :func:`submit_one_itk_thread`'s future. A helper process that died
    (killed, out of memory) raises :class:`~isyb.errors.RegistrationError` with one line,
    and the next registration starts a new helper."""
    try:
        return pending.result()
    except BrokenProcessPool:
        _forget_helper()
        raise RegistrationError("the one-thread registration helper process died (killed, "
                                "or out of memory?)") from None


@contextlib.contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name]`` set to ``value`` inside the block, as it was after it."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def seed_ants(seed: int) -> ModuleType:
    """ANTsPy with ``seed`` as ANTs' random seed (``ants.config.set_ants_deterministic``,
    without its change of the thread variable: ITK has started by then)."""
    ants = start_itk()
    with _environment(ITK_THREADS_ENV, os.environ.get(ITK_THREADS_ENV, "")):
        ants.config.set_ants_deterministic(True, seed)
    return ants


def ants_geometry(affine: np.ndarray, *, flip: bool = True) -> dict[str, object]:
    """``origin``, ``spacing`` and ``direction`` (``ants.from_numpy`` keywords) of a voxel->world
    ``affine`` in RAS mm (``flip=False``: already in ANTs' physical mm)."""
    physical = FLIP @ affine if flip else np.asarray(affine, dtype=float)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    return {
        "origin": tuple(float(v) for v in physical[:3, 3]),
        "spacing": tuple(float(v) for v in zooms),
        "direction": physical[:3, :3] / zooms,
    }


def to_ants(data: np.ndarray, affine: np.ndarray, *, flip: bool = True) -> ants.ANTsImage:
    """A 3-D array (any dtype, stored as float32) as an ANTs image placed by its RAS ``affine``."""
    ants = start_itk()
    return ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32),
                           **ants_geometry(affine, flip=flip))


def from_ants(image: ants.ANTsImage, *, flip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """An ANTs image as its array and voxel->world affine in RAS mm (the inverse of
    :func:`to_ants`)."""
    physical = np.eye(4)
    physical[:3, :3] = np.asarray(image.direction, dtype=float) @ np.diag(image.spacing)
    physical[:3, 3] = image.origin
    return image.numpy(), FLIP @ physical if flip else physical


def read_affine(path: str, *, flip: bool = True) -> np.ndarray:
    """An ANTs affine transform file as a 4×4 map of fixed to moving world mm (RAS; with
    ``flip=False`` ANTs' own physical mm).

    ITK's centred form ``y = A (x - c) + t + c`` becomes the homogeneous
    matrix ``[A | t + c - A c]``.
    """
    transform = start_itk().read_transform(path)
    params = np.asarray(transform.parameters, dtype=float)
    center = np.asarray(transform.fixed_parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    physical = np.eye(4)
    physical[:3, :3] = matrix
    physical[:3, 3] = params[9:12] + center - matrix @ center
    return FLIP @ physical @ FLIP if flip else physical
