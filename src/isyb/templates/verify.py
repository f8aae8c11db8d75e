"""Digests that template files are checked against: TemplateFlow's, and isyb's own caches.

**TemplateFlow files.** TemplateFlow's template repositories (GitHub
``templateflow/tpl-<name>``) are DataLad/git-annex datasets: each image in Git
is an annex pointer whose key is the published identity of its content.
:data:`TEMPLATEFLOW_PINS` copies those keys for the files isyb uses (the res-01
T1w head and brain mask):

* ``MNI152NLin6Asym``: ``MD5E-s<size>--<md5>`` keys, so the size in bytes and
  the MD5 of the file are pinned (TemplateFlow publishes no SHA-256 for them).
* ``MNI152NLin2009cAsym``: the pointers read had ``URL-s<size>--<url>`` keys
  (the file was registered from its OSF address), which carry the size but no
  digest; only the size is pinned, and together with the grid check
  (:func:`check_templateflow_grid`) that is all the identity upstream
  publishes for them.

A copy that is not byte-identical to upstream (re-compressed by another
package, say) is refused. A site that has verified such a copy itself names a
pin list in ``ISYB_TEMPLATEFLOW_PINS``: a file in ``sha256sum`` format
(``<sha256>  <file name>`` per line). A TemplateFlow file whose name is listed
there must have that SHA-256 instead of the upstream pin.

**Caches.** :func:`verified_arrays` keeps an ``.npz`` cache with a ``.sha256``
sidecar, as the prepared template files are kept with the digests in
``template.json`` (:mod:`isyb.templates.registry`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isyb.errors import IsybError
from isyb.io import cached_arrays, load_image, write_text
from isyb.templates.fetch import (
    DigestMismatchError,
    digest_sidecar,
    hash_file,
    sha256_file,
)

PINS_ENV = "ISYB_TEMPLATEFLOW_PINS"
"""Environment variable naming a ``sha256sum``-format list of locally verified copies."""


@dataclass(frozen=True)
class Pin:
    """What TemplateFlow publishes for a file: its size in bytes and, if known, its MD5."""

    size: int
    md5: str | None


#: Upstream identity of the TemplateFlow files isyb uses, from the git-annex keys of the
#: ``templateflow/tpl-<name>`` repositories (see the module docstring).
TEMPLATEFLOW_PINS: dict[str, Pin] = {
    "tpl-MNI152NLin6Asym_res-01_T1w.nii.gz": Pin(11027773, "a50c78510a328cbb12d37e7d566109fe"),
    "tpl-MNI152NLin6Asym_res-01_desc-brain_mask.nii.gz":
        Pin(149930, "f74c778d0bac6b6132d510cedb1a6efa"),
    "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz": Pin(13685075, None),
    "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz": Pin(159538, None),
}

#: Grids of the TemplateFlow res-01 files (shape; 1 mm voxels; world position of voxel
#: (0, 0, 0) in mm), as TemplateFlow's template_description.json publishes them and as its
#: T1w and brain-mask files have them. A file with another grid is another template's.
TEMPLATEFLOW_GRIDS: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "MNI152NLin6Asym": ((182, 218, 182), (-91.0, -126.0, -72.0)),
    "MNI152NLin2009cAsym": ((193, 229, 193), (-96.0, -132.0, -78.0)),
}


def check_templateflow_grid(name: str, path: Path) -> None:
    """Refuse a TemplateFlow file whose grid is not the one published for ``name`` at res-01."""
    shape, origin = TEMPLATEFLOW_GRIDS[name]
    img = load_image(path)
    expected = np.eye(4)
    expected[:3, 3] = origin
    if tuple(img.shape[:3]) != shape or not np.allclose(img.affine, expected, atol=1e-3):
        got = tuple(float(x) for x in np.round(img.affine[:3, 3], 2))
        raise IsybError(f"{path}: not TemplateFlow's {name} res-01 file: grid {img.shape[:3]} "
                        f"with origin {got} mm, expected {shape} with origin {origin} mm "
                        "(another template's file under this name?)")


def _md5() -> hashlib._Hash:
    """MD5, the digest of git-annex MD5E keys (an identity check here, not a security one)."""
    return hashlib.md5(usedforsecurity=False)


def local_pins() -> dict[str, str]:
    """The SHA-256 of each file name listed in ``ISYB_TEMPLATEFLOW_PINS`` (empty if unset)."""
    where = os.environ.get(PINS_ENV, "").strip()
    if not where:
        return {}
    try:
        lines = Path(where).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise IsybError(f"{where} ({PINS_ENV}): cannot be read ({exc})") from None
    pins = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        digest = fields[0].lower()
        if len(fields) != 2 or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise IsybError(f"{where} ({PINS_ENV}) line {number}: expected '<sha256>  <file "
                            "name>' as sha256sum writes it")
        pins[Path(fields[1].lstrip("*")).name] = digest
    return pins


def check_templateflow_file(name: str, path: Path) -> None:
    """Refuse a file of TemplateFlow template ``name`` that is not the one upstream published.

    Checks the grid (:func:`check_templateflow_grid`), then the bytes: against
    the SHA-256 listed for its file name in ``ISYB_TEMPLATEFLOW_PINS`` when
    there is one, else against :data:`TEMPLATEFLOW_PINS` (size, and MD5 where
    upstream publishes one).

    Raises:
        DigestMismatchError: the bytes are not the pinned ones.
        IsybError: another grid, or no pin for this file name.
    """
    check_templateflow_grid(name, path)
    hint = f"list the SHA-256 of a copy you verified yourself in the file named by {PINS_ENV}"
    try:
        local = local_pins().get(path.name)
        if local is not None:
            if (actual := sha256_file(path)) != local:
                raise DigestMismatchError(f"{path}: SHA-256 {actual}, but {os.environ[PINS_ENV]} "
                                          f"pins {local}")
            return
        pin = TEMPLATEFLOW_PINS.get(path.name)
        if pin is None:
            raise IsybError(f"{path}: no digest is pinned for this TemplateFlow file; {hint}")
        size = path.stat().st_size
        if size != pin.size:
            raise DigestMismatchError(f"{path}: {size} bytes, but TemplateFlow publishes "
                                      f"{pin.size} for {path.name}; {hint}")
        if pin.md5 is not None and (actual := hash_file(path, _md5)) != pin.md5:
            raise DigestMismatchError(f"{path}: MD5 {actual}, but TemplateFlow publishes "
                                      f"{pin.md5} for {path.name}; {hint}")
    except OSError as exc:
        raise IsybError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def verified_arrays(path: Path, stamp: str,
                    build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """:func:`isyb.io.cached_arrays`, trusting an ``.npz`` only with its ``.sha256`` sidecar.

    A cache file whose digest is not the one recorded beside it when it was
    written is removed and recomputed; the digest of what is then on disk is
    recorded. A folder that cannot be written only costs the recomputation.
    """
    sidecar = digest_sidecar(path)
    try:
        recorded = sidecar.read_text(encoding="utf-8").split()[:1]
    except (OSError, UnicodeDecodeError):
        recorded = []
    try:
        if path.is_file() and recorded != [sha256_file(path)]:
            path.unlink()
    except OSError:
        return build()  # a cache file that can be neither checked nor cleared is not used
    arrays = cached_arrays(path, stamp, build)
    try:
        if path.is_file() and recorded != [digest := sha256_file(path)]:
            write_text(sidecar, f"{digest}  {path.name}\n")
    except OSError:
        pass
    return arrays
