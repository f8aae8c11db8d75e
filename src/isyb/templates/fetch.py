"""Get template files: checked downloads, mirrors, trust on first use, TemplateFlow.

Downloads go through :mod:`urllib.request` (``http``, ``https`` and ``file``
URLs). They are streamed into a temporary file beside the destination while
their SHA-256 digest is computed, and renamed into place only when complete
and, if a digest was given, only when it matches. A failed or refused
download leaves nothing behind.

``ISYB_TEMPLATE_MIRROR`` names a base URL (or a local folder) that replaces
the upstream location of every template file: upstream ``U`` is fetched from
``{mirror}/{basename(U)}``. This is how offline sites and the tests serve
``CN200.nii.gz`` and ``CN2020.nii.gz``.

A file can be pinned by its SHA-256 digest or by its Git blob id (the SHA-1
of ``b"blob <size>\\0" + content``, the name Git gives the file's content:
``git hash-object FILE``), which is what a Git hosting site shows for a
file whose SHA-256 nobody published. When neither is known, :func:`fetch_pinned`
trusts the first copy it gets, records its digest in a ``.sha256`` sidecar
file beside it and warns; every later download of that file must match the
recorded digest.

TemplateFlow templates are looked up with :func:`templateflow_files`, which
imports ``templateflow.api`` lazily, because TemplateFlow reads
``TEMPLATEFLOW_HOME`` when it is imported.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib
import os
import posixpath
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from tqdm import tqdm

from isyb import __version__
from isyb.errors import IsybError
from isyb.io import atomic_path, write_text

MIRROR_ENV = "ISYB_TEMPLATE_MIRROR"
"""Environment variable naming a mirror (base URL or folder) for template downloads."""

SIDECAR_SUFFIX = ".sha256"
"""Suffix of the file beside a download that records its SHA-256 digest."""

TEMPLATEFLOW_ENV_DEFAULTS = {"TEMPLATEFLOW_AUTOUPDATE": "0"}
"""Environment set (unless already set) before TemplateFlow is imported.

``TEMPLATEFLOW_AUTOUPDATE=0`` stops older TemplateFlow releases from merging
their packaged skeleton into an existing home at import time, so that a sparse
or read-only local TemplateFlow folder is used as it is. (TemplateFlow 25 only
uses it when it populates an empty home; neither touches the network.)
"""

CHUNK_SIZE = 1 << 20
_SCHEMES = ("http", "https", "file")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")
_TEMPLATE_NAME = re.compile(r"[A-Za-z0-9]+")
_IMAGE_EXTENSIONS = [".nii.gz", ".nii"]


class DigestMismatchError(IsybError):
    """A downloaded file does not have the SHA-256 digest it was expected to have."""


class UnpinnedDigestWarning(UserWarning):
    """A file was accepted on first use because no SHA-256 digest is pinned for it."""


# --------------------------------------------------------------------------- helpers


def _one_line(text: object) -> str:
    """``text`` as a single line, runs of white space collapsed."""
    return " ".join(str(text).split())


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for a failed network or file operation."""
    if isinstance(exc, urllib.error.HTTPError):
        return _one_line(f"HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, OSError) and reason.strerror:
            return _one_line(reason.strerror)
        return _one_line(reason) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return _one_line(exc.strerror)
    return _one_line(exc) or type(exc).__name__


def _check_hex(value: str | None, pattern: re.Pattern, what: str) -> str | None:
    """Normalise a hexadecimal digest to lower case; refuse one that is not ``what``."""
    if value is None:
        return None
    digest = value.strip().lower()
    if not pattern.fullmatch(digest):
        raise IsybError(f"{value!r} is not {what}")
    return digest


def _check_digest(sha256: str | None) -> str | None:
    """Normalise a SHA-256 hex digest to lower case; refuse anything else."""
    return _check_hex(sha256, _SHA256, "a SHA-256 digest (64 hexadecimal digits)")


def _check_blob(git_blob: str | None) -> str | None:
    """Normalise a Git blob id (40 hexadecimal digits) to lower case; refuse anything else."""
    return _check_hex(git_blob, _SHA1, "a Git blob id (40 hexadecimal digits)")


def hash_file(path: str | os.PathLike, new: Callable[[], Any] = hashlib.sha256) -> str:
    """The hex digest of a file's bytes by the hash object ``new()`` (streamed, any size)."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, new).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 hex digest of a file's bytes."""
    return hash_file(path)


def git_blob_id(path: str | os.PathLike) -> str:
    """The Git blob id of a file: SHA-1 of ``b"blob <size>\\0"`` followed by its bytes.

    This is what ``git hash-object`` prints and what a Git repository names the
    file's content by (Git book, "Git Objects"); it identifies a file published
    in a Git repository without any SHA-256 being published for it.
    """
    header = f"blob {os.path.getsize(path)}\0".encode()
    return hash_file(path, lambda: hashlib.sha1(header))


def digest_sidecar(dest: str | os.PathLike) -> Path:
    """The file that records the SHA-256 digest of ``dest`` (``dest + '.sha256'``)."""
    dest = Path(dest)
    return dest.with_name(dest.name + SIDECAR_SUFFIX)


def _read_sidecar(sidecar: Path) -> str | None:
    """The digest recorded in ``sidecar`` (``sha256sum`` format), or None if there is none."""
    if not sidecar.exists():
        return None
    try:
        fields = sidecar.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as exc:
        raise IsybError(f"{sidecar}: cannot be read ({_reason(exc)}); delete it") from None
    digest = fields[0].lower() if fields else ""
    if not _SHA256.fullmatch(digest):
        raise IsybError(f"{sidecar}: does not hold a SHA-256 digest; delete it to record anew")
    return digest


def _record(sidecar: Path, dest: Path, digest: str) -> None:
    """Write ``digest`` beside ``dest`` in the format of ``sha256sum``."""
    try:
        write_text(sidecar, f"{digest}  {dest.name}\n")
    except OSError as exc:
        raise IsybError(f"cannot write {sidecar}: {_reason(exc)}") from None


def _content_length(response: Any) -> int | None:
    """The announced size of a response in bytes, if it announced a usable one."""
    value = response.headers.get("Content-Length") if response.headers else None
    try:
        size = int(value) if value is not None else None
    except ValueError:
        return None
    return size if size is not None and size >= 0 else None


def _progress_bar(total: int | None, name: str, progress: bool) -> tqdm:
    """A byte-count progress bar on stderr, shown only when stderr is a terminal."""
    stream = sys.stderr
    try:
        interactive = bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):
        interactive = False
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024,
                file=stream, disable=not (progress and interactive), leave=False)


def _read(response: Any, url: str) -> bytes:
    """The next chunk of a response; network errors become one-line IsybErrors."""
    try:
        return response.read(CHUNK_SIZE)
    except (OSError, http.client.HTTPException) as exc:
        raise IsybError(f"cannot download {url}: {_reason(exc)}") from None


# --------------------------------------------------------------------------- downloads


def resolve_url(url: str) -> str:
    """Where to fetch ``url`` from: itself, or its file name in the mirror.

    When ``ISYB_TEMPLATE_MIRROR`` is set (a base URL such as
    ``file:///srv/mirror`` or ``http://127.0.0.1:8000/x``, or a plain local
    folder), the result is ``{mirror}/{basename(url)}``. Query strings and
    fragments of ``url`` play no part in the name. Applying it twice gives the
    same URL.
    """
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    name = posixpath.basename(urllib.parse.urlsplit(url).path)
    if not name:
        raise IsybError(f"{url}: has no file name to look up in the mirror {mirror} ({MIRROR_ENV})")
    if "://" not in mirror:  # a plain folder
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return f"{mirror.rstrip('/')}/{name}"


def download(url: str, dest: str | os.PathLike, sha256: str | None, *, progress: bool = True,
             timeout: float = 60, git_blob: str | None = None) -> str:
    """Download ``url`` to ``dest`` and return the SHA-256 hex digest of its bytes.

    The bytes are streamed into a temporary file beside ``dest`` while their
    digest is computed, then renamed onto ``dest``. ``dest`` is only replaced
    by a complete file whose digest matches ``sha256`` (when given): on any
    failure the temporary file is removed and ``dest`` is left as it was.
    ``url`` is used as given (see :func:`resolve_url` for mirrors).

    Args:
        url: an ``http``, ``https`` or ``file`` URL.
        dest: the file to create or replace; its folder is created if needed.
        sha256: the expected hex digest, or None to accept any content.
        git_blob: the expected Git blob id (:func:`git_blob_id`), or None.
        progress: show a progress bar on stderr (only when it is a terminal).
        timeout: seconds to wait for the connection and for each read.

    Raises:
        DigestMismatchError: the content does not have the digest ``sha256``
            or the Git blob id ``git_blob``.
        IsybError: the URL cannot be read (network error, HTTP error, missing
            file, truncated transfer) or ``dest`` cannot be written.
    """
    dest = Path(dest)
    expected, blob = _check_digest(sha256), _check_blob(git_blob)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        raise IsybError(f"cannot download {url}: unsupported URL scheme (use http, https or file)")
    request = urllib.request.Request(url, headers={"User-Agent": f"isyb/{__version__}"})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise IsybError(f"cannot download {url}: {_reason(exc)}") from None
    with response:
        total = _content_length(response)
        hasher = hashlib.sha256()
        size = 0
        try:
            with atomic_path(dest) as tmp:
                with open(tmp, "wb") as out, _progress_bar(total, dest.name, progress) as bar:
                    while chunk := _read(response, url):
                        hasher.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
                        bar.update(len(chunk))
                if total is not None and size != total:
                    raise IsybError(f"cannot download {url}: transfer ended after {size} of "
                                    f"{total} bytes")
                actual = hasher.hexdigest()
                if expected is not None and actual != expected:
                    raise DigestMismatchError(f"{url}: SHA-256 mismatch, expected {expected}, "
                                              f"got {actual}")
                if blob is not None and (got := git_blob_id(tmp)) != blob:
                    raise DigestMismatchError(f"{url}: Git blob id mismatch, expected {blob}, "
                                              f"got {got}")
        except OSError as exc:
            raise IsybError(f"cannot write {dest}: {_reason(exc)}") from None
    return actual


def fetch_pinned(url: str, dest: str | os.PathLike, sha256: str | None, *,
                 progress: bool = True, timeout: float = 60,
                 git_blob: str | None = None) -> Path:
    """Make ``dest`` a verified copy of ``url`` and return it, downloading only if needed.

    The digest a file must have is ``sha256`` when it is pinned, otherwise the
    one recorded in the sidecar ``dest + '.sha256'`` on first use. A file
    already at ``dest`` with that digest is returned without any network
    access. Otherwise the file is fetched from :func:`resolve_url` of ``url``
    (so ``ISYB_TEMPLATE_MIRROR`` applies) and checked.

    A Git blob id ``git_blob`` pins the file like ``sha256`` does (the file at
    ``dest`` and every download must have it); the sidecar then only records
    the SHA-256 of the verified file.

    Trust on first use: when no digest is pinned and none is recorded yet, the
    first copy obtained (downloaded, or found at ``dest``) is accepted, its
    digest is recorded in the sidecar and an :class:`UnpinnedDigestWarning` is
    issued. Later downloads must match the recorded digest; delete the sidecar
    to accept a new upstream file.

    Raises:
        DigestMismatchError: the download does not match the pinned or
            recorded digest; nothing is left at ``dest``.
        IsybError: the file cannot be downloaded or written.
    """
    dest = Path(dest)
    pinned, blob = _check_digest(sha256), _check_blob(git_blob)
    sidecar = digest_sidecar(dest)
    recorded = _read_sidecar(sidecar)
    expected = pinned or (None if blob else recorded)
    if dest.is_file():
        try:
            actual = sha256_file(dest)
            blob_ok = blob is None or git_blob_id(dest) == blob
        except OSError as exc:
            raise IsybError(f"{dest}: cannot be read ({_reason(exc)})") from None
        if blob is not None and blob_ok and expected in (None, actual):
            if recorded != actual:
                _record(sidecar, dest, actual)
            return dest
        if expected is None and blob is None:  # put there by hand, or left by an interrupted run
            _record(sidecar, dest, actual)
            _warn_unpinned(url, dest, actual, sidecar)
            return dest
        if actual == expected and blob_ok:
            if recorded != actual:
                _record(sidecar, dest, actual)
            return dest
        dest.unlink()  # stale or damaged: it matches neither the pin nor the record
        if blob is not None:
            sidecar.unlink(missing_ok=True)  # the digest of a file that no longer verifies
    source = resolve_url(url)
    try:
        actual = download(source, dest, expected, progress=progress, timeout=timeout,
                          git_blob=blob)
    except DigestMismatchError as exc:
        if pinned is None and blob is None:
            raise DigestMismatchError(f"{exc} (recorded on first use in {sidecar}; delete that "
                                      "file to accept the new one)") from None
        raise
    if recorded != actual:
        _record(sidecar, dest, actual)
    if expected is None and blob is None:
        _warn_unpinned(source, dest, actual, sidecar)
    return dest


def _warn_unpinned(url: str, dest: Path, digest: str, sidecar: Path) -> None:
    """Say that ``dest`` was trusted on first use and where its digest was recorded."""
    warnings.warn(
        f"{dest.name}: no SHA-256 digest is pinned for {url}; recorded {digest} on first use "
        f"in {sidecar}, and later downloads must match it",
        UnpinnedDigestWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------- TemplateFlow


def _templateflow_home_from_env() -> Path:
    """The TemplateFlow home that a fresh import would use under the current environment."""
    try:
        from templateflow.conf.env import get_templateflow_home  # TemplateFlow >= 25
    except ImportError:
        default = Path.home() / ".cache" / "templateflow"
        return Path(os.getenv("TEMPLATEFLOW_HOME", str(default))).absolute()
    return get_templateflow_home()


def _templateflow_api() -> tuple[ModuleType, Path]:
    """Import ``templateflow.api`` for the current ``TEMPLATEFLOW_HOME``.

    TemplateFlow fixes its home when it is first imported. If
    ``TEMPLATEFLOW_HOME`` has changed since, its configuration and API modules
    are reloaded so that the current value takes effect.
    """
    for key, value in TEMPLATEFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    home = Path(os.environ.get("TEMPLATEFLOW_HOME", "the default TemplateFlow home"))
    try:
        with warnings.catch_warnings():
            # "repository not found ... populating a new TemplateFlow stub"
            warnings.simplefilter("ignore", ResourceWarning)
            import templateflow.api as api
            import templateflow.conf as conf

            home = _templateflow_home_from_env()
            if Path(conf.TF_HOME).absolute() != home:
                conf = importlib.reload(conf)
                api = importlib.reload(api)
            home = Path(conf.TF_HOME).absolute()
    except Exception as exc:  # ImportError, or OSError while writing a new home's skeleton
        raise IsybError(f"cannot set up the TemplateFlow home {home}: {_reason(exc)}") from None
    return api, home


def _templateflow_get(api: ModuleType, home: Path, name: str, resolution: int, *,
                      suffix: str, desc: str | None) -> Path | None:
    """One image of a template, downloaded by TemplateFlow if needed; None if it has none."""
    query: dict[str, Any] = {"resolution": resolution, "suffix": suffix, "desc": desc,
                             "extension": _IMAGE_EXTENSIONS}
    what = f"res-{resolution:02d}" + (f"_desc-{desc}" if desc else "") + f"_{suffix}"
    try:
        listed = [Path(p) for p in api.ls(name, **query)]
    except Exception as exc:  # pybids raises many types
        raise IsybError(f"cannot search TemplateFlow home {home} for template {name}: "
                        f"{_reason(exc)}") from None
    if not listed:
        return None
    if len(listed) > 1:
        raise IsybError(f"template {name}: {len(listed)} files match {what} in TemplateFlow home "
                        f"{home} (one per cohort?); expected exactly one")
    path = listed[0]
    was_missing = not path.exists() and not path.is_symlink()
    was_placeholder = not was_missing and path.is_file() and path.stat().st_size == 0
    try:
        got = api.get(name, **query)
        result = Path(got if isinstance(got, str | os.PathLike) else got[0])
        if not result.is_file() or result.stat().st_size == 0:
            raise RuntimeError(f"{result} is empty after the download")
    except Exception as exc:  # requests, RuntimeError, OSError, DataLad errors
        # TemplateFlow writes straight into the home: leave no partial file behind,
        # so that the next run downloads it again.
        try:
            if was_placeholder and path.is_file():
                path.write_bytes(b"")
            elif was_missing:
                path.unlink(missing_ok=True)
        except OSError:
            pass
        raise IsybError(f"template {name} ({what}) not found in TemplateFlow home {home} and it "
                        f"could not be downloaded: {_reason(exc)}") from None
    return result


def templateflow_files(name: str, resolution: int = 1) -> tuple[Path, Path | None]:
    """The head T1w image and brain mask of a TemplateFlow template.

    Looks ``name`` up with ``templateflow.api.get`` in the TemplateFlow home
    (``TEMPLATEFLOW_HOME``, else TemplateFlow's default cache folder):
    ``suffix='T1w', desc=None`` for the head, ``desc='brain', suffix='mask'``
    for the mask, both at ``resolution``. Files present in the home are used
    without network access; files that TemplateFlow lists but has not
    downloaded yet (empty placeholders of its skeleton) are downloaded by it
    from its S3 archive.

    Returns:
        ``(head, mask)``; ``mask`` is None when the template has no brain mask
        at that resolution.

    Raises:
        IsybError: the name is unknown in the home, the template has no T1w
            head at that resolution, or a file could not be downloaded.
    """
    if not isinstance(name, str) or not _TEMPLATE_NAME.fullmatch(name):
        raise IsybError(f"{name!r} is not a TemplateFlow template name (letters and digits only)")
    api, home = _templateflow_api()
    available = sorted(p.name[4:] for p in home.glob("tpl-*") if p.is_dir())
    if name not in available:
        raise IsybError(f"template {name} not found in TemplateFlow home {home} (templates there: "
                        f"{', '.join(available) or 'none'}); set TEMPLATEFLOW_HOME to a "
                        "TemplateFlow folder that has it")
    head = _templateflow_get(api, home, name, resolution, suffix="T1w", desc=None)
    if head is None:
        raise IsybError(f"template {name} has no res-{resolution:02d} T1w head image in "
                        f"TemplateFlow home {home}")
    mask = _templateflow_get(api, home, name, resolution, suffix="mask", desc="brain")
    return head, mask
