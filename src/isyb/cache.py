"""A content-addressed cache of deterministic, expensive results (``ISYB_CACHE_DIR``).

Brain extraction (deepbet, about 3.4 CPU s per image whatever its size) and
template registration (ANTs, 1-5 CPU s) are pure functions of their input
arrays and settings: the same bytes in give the same bytes out. Registration
runs on one ITK thread with a fixed seed (:func:`isyb.head.register.register_template`);
deepbet's mask is the same bytes at 1, 2 and 4 torch threads. When the
environment variable ``ISYB_CACHE_DIR`` names a folder, their results are
kept there under a digest of everything they depend on: the input arrays'
dtypes, shapes and bytes, every setting, isyb's version and the version of
the library that computed them. The same computation later reuses the
result: ``isyb qc`` or ``isyb derive`` of a T1w that ``isyb deface`` already
saw, a deface rerun with another method, the release's QC and derive of the
same image.

Like fMRIPrep's work directory, the cache is off unless asked for, and the
folder can be deleted at any time. The key holds isyb's *version*, not its
code: after editing isyb's numerics, empty the folder. Entries are written
atomically (a temporary file, then a rename), so two processes that compute
the same entry at once both succeed; an entry that cannot be read is
computed again and replaced. A failed computation (an exception) stores
nothing. Entries are compressed (``numpy.savez_compressed``): a 256³ brain mask
takes tens of kB instead of 16 MB, for about 0.1 s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path

import numpy as np

from isyb import __version__
from isyb.io import atomic_path

CACHE_ENV = "ISYB_CACHE_DIR"

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The cache folder named by ``ISYB_CACHE_DIR``, or None when the cache is off."""
    where = os.environ.get(CACHE_ENV, "").strip()
    return Path(where).expanduser() if where else None


@functools.cache
def package_version(name: str) -> str:
    """The installed version of distribution ``name`` (``"absent"`` when not installed)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def _feed(digest: hashlib.blake2b, part: object) -> None:
    """Feed one key part to ``digest`` unambiguously (type, shape and length first)."""
    if isinstance(part, np.ndarray):
        digest.update(f"ndarray:{part.dtype.str}:{part.shape}:".encode())
        digest.update(np.ascontiguousarray(part).data)
    elif isinstance(part, (tuple, list)):
        digest.update(f"seq:{len(part)}:".encode())
        for item in part:
            _feed(digest, item)
    elif isinstance(part, (str, int, float, bool, type(None), np.generic)):
        text = repr(part.item() if isinstance(part, np.generic) else part)
        digest.update(f"{type(part).__name__}:{len(text)}:{text}".encode())
    else:
        raise TypeError(f"cannot key the cache on a {type(part).__name__}")


def cache_key(kind: str, parts: tuple) -> str:
    """Hex digest (BLAKE2b, 32 bytes) of ``kind``, isyb's version and every key part."""
    digest = hashlib.blake2b(digest_size=32)
    _feed(digest, (kind, __version__, *parts))
    return digest.hexdigest()


def cached(kind: str, parts: tuple,
           compute: Callable[[], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, from the cache when an entry for ``(kind, parts)`` exists.

    ``parts`` must hold everything the result depends on (arrays, settings,
    library versions). Without ``ISYB_CACHE_DIR`` this is ``compute()``.
    """
    folder = cache_dir()
    if folder is None:
        return dict(compute())
    path = folder / kind / f"{cache_key(kind, parts)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as entry:
                result = {name: entry[name] for name in entry.files}
            log.debug("reused %s from %s", kind, path)
            return result
        except (OSError, ValueError, EOFError) as error:
            log.warning("cache entry %s is unreadable (%s); computing it again", path, error)
    result = dict(compute())
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as stream:
            np.savez_compressed(stream, **result)
    except OSError as error:
        log.warning("could not write cache entry %s (%s); going on without it", path, error)
    return result


def encode_json(record: object) -> np.ndarray:
    """A JSON record as a 0-d unicode array, for :func:`cached`'s arrays."""
    return np.array(json.dumps(record))


def decode_json(array: np.ndarray) -> object:
    """The record that :func:`encode_json` stored."""
    return json.loads(str(array[()]))
