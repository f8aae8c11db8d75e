"""Head templates: where they come from, how they are prepared, where they are cached.

A prepared template is a head image with a brain mask and a face rule
(:class:`isyb.templates.face.FaceRule`). Sources:

* ``default``: the mean head that ships with the ``pydeface`` package from
  PyPI (MIT licence; full face and neck; installs offline). It has no brain
  mask, so one is derived.
* ``MNI152NLin6Asym`` and ``MNI152NLin2009cAsym``: through TemplateFlow
  (``TEMPLATEFLOW_HOME`` may point at a local copy), with their brain masks.
  Each file must have the grid TemplateFlow publishes for it and the bytes
  its git-annex key pins (:func:`isyb.templates.verify.check_templateflow_file`),
  so that one template's file under another's name is refused.
* ``CN200`` and ``Chinese2020``: downloaded from the copies in the
  zuoxinian/CCS repository, which the ISYB data descriptor used, and
  verified against the Git blob ids of those copies (no SHA-256 is published
  for them; see :func:`isyb.templates.fetch.git_blob_id`).
* any head image given by path. A ``<stem>_desc-brain_mask`` file beside it
  (TemplateFlow naming) is used when present, else a mask is derived.

Preparation derives what is missing (brain mask by deepbet, face rule from
the brain mask) and caches the result under ``$ISYB_HOME/templates`` (default
``~/.cache/isyb/templates``) in a TemplateFlow-like layout::

    tpl-<name>/tpl-<name>_T1w.nii.gz
    tpl-<name>/tpl-<name>_desc-brain_mask.nii.gz
    tpl-<name>/tpl-<name>_desc-face_mask.nii.gz   (the rule on the template grid)
    tpl-<name>/tpl-<name>_desc-face_distance.npz  (the template's own face, on first use
                                                    of the ``template`` face-region mode)
    tpl-<name>/template.json                      (provenance, face rule)

``template.json`` records the SHA-256 of the source head (``head_sha256``)
and of every prepared file (``files``); the ``.npz`` caches beside them carry
a ``.sha256`` sidecar. A cache entry is reused only while the source still
has its digest and every prepared file still has the recorded one: a
prepared file that was changed or removed is prepared again from the
(verified) source, with a note, and a file that changes under a prepared
template in use is a one-line error (:class:`TamperedCacheError`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from isyb import __version__
from isyb.errors import IsybError
from isyb.head.brain import check_brain_mask, extract_brain
from isyb.head.morphology import head_mask, skin_threshold
from isyb.head.register import TemplateGrid
from isyb.io import (
    Volume,
    atomic_path,
    load_volume,
    save_mask_like,
    strip_image_suffix,
    write_text,
)
from isyb.templates.face import (
    FaceRule,
    TemplateFace,
    derive_face_rule,
    face_region,
    template_face,
)
from isyb.templates.fetch import (
    fetch_pinned,
    sha256_file,
    templateflow_files,
)
from isyb.templates.verify import check_templateflow_file, verified_arrays

LOG = logging.getLogger(__name__)

CCS_TEMPLATES = ("https://github.com/zuoxinian/CCS/raw/master/projects/isybdemo/"
                 "face_masking_CN/bin/Template/")
ALIASES = {"pydeface": "default", "CN2020": "Chinese2020", "cn200": "CN200"}


@dataclass(frozen=True)
class BuiltIn:
    """A named template: ``kind`` is package, templateflow or url."""

    name: str
    kind: str
    description: str
    url: str | None = None
    sha256: str | None = None
    git_blob: str | None = None


BUILTINS: dict[str, BuiltIn] = {
    entry.name: entry for entry in (
        BuiltIn("default", "package", "pydeface mean head (pydeface package data, MIT): "
                "full face and neck, installs offline"),
        BuiltIn("MNI152NLin6Asym", "templateflow", "MNI152 6th generation (FSL), TemplateFlow"),
        BuiltIn("MNI152NLin2009cAsym", "templateflow", "ICBM 2009c nonlinear asymmetric, "
                "TemplateFlow"),
        BuiltIn("CN200", "url", "Chinese head template of 200 adults (zuoxinian/CCS)",
                url=CCS_TEMPLATES + "CN200.nii.gz",
                git_blob="3c980cf6ed8eaf8407f76cd6adda4371bfd9f698"),
        BuiltIn("Chinese2020", "url", "Chinese2020 head template, Liang et al. 2015 "
                "(zuoxinian/CCS copy CN2020.nii.gz)", url=CCS_TEMPLATES + "CN2020.nii.gz",
                git_blob="c19eb9092540e9fe1c96d71be42d2bbcd47224ef"),
    )
}


class TamperedCacheError(IsybError):
    """A prepared template file no longer has the SHA-256 recorded when it was prepared."""


@dataclass(frozen=True)
class Template:
    """A prepared head template, as cached on disk (get one with :func:`load_template`).

    ``name`` is the built-in name, or for a head given by path a key made of
    its file name and SHA-256; ``head``, ``brain_mask`` and ``face_mask`` are
    the prepared files (T1w head, its boolean brain mask, and the face rule
    drawn on the template grid) under ``$ISYB_HOME/templates/tpl-<name>``;
    ``rule`` is the face rule (:class:`isyb.templates.face.FaceRule`, template
    mm); ``info`` is ``template.json``: source, ``head_sha256``, brain-mask
    source, face rule, ``face_tissue_ml`` (mL of tissue in the face region)
    and the isyb and rule versions that prepared it.
    """

    name: str
    head: Path
    brain_mask: Path
    face_mask: Path
    rule: FaceRule
    info: dict

    def load(self) -> tuple[Volume, np.ndarray]:
        """The head volume and its boolean brain mask (RAS), cached per process."""
        files = self.info.get("files", {})
        return _load_prepared(self.head, self.brain_mask, files.get(self.head.name),
                              files.get(self.brain_mask.name))

    def working_grid(self, spacing_mm: float = 4.0) -> TemplateGrid:
        """The template on the registration grid, kept next to the prepared files.

        The ``.npz`` is keyed by the head's SHA-256 and the rule version; a
        stale or unreadable one is recomputed, and a cache folder that cannot
        be written only costs the ~0.7 s of recomputing it in every process.
        """
        path = self.head.parent / f"tpl-{self.name}_res-{spacing_mm:g}mm_grid.npz"

        def build() -> dict[str, np.ndarray]:
            head, brain = self.load()
            grid = TemplateGrid.from_arrays(head.data, head.affine, brain, spacing_mm)
            return {"head": grid.head, "brain": grid.brain, "affine": grid.affine,
                    "spacing_mm": np.float64(grid.spacing_mm)}

        arrays = verified_arrays(path, f"{self.info['head_sha256']}:{RULE_VERSION}", build)
        return TemplateGrid(arrays["head"], arrays["brain"], arrays["affine"],
                            float(arrays["spacing_mm"]))

    def face(self) -> TemplateFace:
        """The template's own face (:func:`isyb.templates.face.template_face`), cached.

        Used by the ``template`` face-region mode. Kept as
        ``tpl-<name>_desc-face_distance.npz`` beside the prepared files, keyed
        by the head's SHA-256, the rule version and :data:`FACE_VERSION`;
        building it reads the head and finds its tissue (about 2-3 s at 1 mm).
        """
        path = self.head.parent / f"tpl-{self.name}_desc-face_distance.npz"

        def build() -> dict[str, np.ndarray]:
            head, _ = self.load()
            face = template_face(head_mask(head.data, skin_threshold(head.data)), head.affine,
                                 self.rule)
            return {"field": face.field.astype(np.float32), "affine": face.affine}

        stamp = f"{self.info['head_sha256']}:{RULE_VERSION}:{FACE_VERSION}"
        arrays = verified_arrays(path, stamp, build)
        return TemplateFace(arrays["field"], arrays["affine"])


def _verify(path: Path, digest: str | None) -> None:
    """Refuse a prepared file that does not have the SHA-256 recorded when it was prepared."""
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise TamperedCacheError(f"{path}: prepared template file cannot be read "
                                 f"({exc.strerror or exc})") from None
    if actual != digest:
        raise TamperedCacheError(f"{path}: SHA-256 mismatch with the digest recorded when the "
                                 f"template was prepared (expected {digest}, got {actual}); "
                                 f"run `isyb templates prepare` again")


@functools.lru_cache(maxsize=4)
def _load_prepared(head: Path, brain_mask: Path, head_digest: str | None,
                   brain_digest: str | None) -> tuple[Volume, np.ndarray]:
    """Read a prepared template once per process, each file checked against its digest."""
    _verify(head, head_digest)
    _verify(brain_mask, brain_digest)
    return load_volume(head), load_volume(brain_mask).data > 0


def isyb_home() -> Path:
    """``$ISYB_HOME``, else ``~/.cache/isyb``."""
    return Path(os.environ.get("ISYB_HOME", Path.home() / ".cache" / "isyb")).expanduser()


def cache_dir(name: str) -> Path:
    return isyb_home() / "templates" / f"tpl-{name}"


def canonical_name(name: str) -> str:
    return ALIASES.get(name, name)


def _package_head() -> Path:
    try:
        path = resources.files("pydeface") / "data" / "mean_reg2mean.nii.gz"
    except ModuleNotFoundError:
        raise IsybError("the default template needs the pydeface package: "
                        "pip install pydeface") from None
    return Path(str(path))


def _sources(entry: BuiltIn) -> tuple[Path, Path | None, str]:
    """Head path, optional brain-mask path and a source note for a built-in."""
    if entry.kind == "package":
        return _package_head(), None, "pydeface package data (mean_reg2mean.nii.gz)"
    if entry.kind == "templateflow":
        head, mask = templateflow_files(entry.name, resolution=1)
        for path in (head, mask) if mask else (head,):
            check_templateflow_file(entry.name, path)
        return head, mask, f"TemplateFlow {head}"
    assert entry.url is not None
    target = isyb_home() / "downloads" / Path(entry.url).name
    return fetch_pinned(entry.url, target, entry.sha256, git_blob=entry.git_blob), None, entry.url


def _sibling_mask(head: Path) -> Path | None:
    stem = strip_image_suffix(head)
    stem = re.sub(r"_(T1w|T2w|PD|head)$", "", stem)
    for suffix in (".nii.gz", ".nii"):
        candidate = Path(f"{stem}_desc-brain_mask{suffix}")
        if candidate.is_file():
            return candidate
    return None


def _path_key(head: Path, digest: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9]+", "", Path(strip_image_suffix(head)).name) or "template"
    return f"{stem[:40]}{digest[:12]}"


def resolve(name_or_path: str, *, progress: Callable[[str], None] | None = None) -> Template:
    """Prepare (or load from cache) a template given by name or by path."""
    name = canonical_name(name_or_path)
    if name in BUILTINS:
        head, mask, source = _sources(BUILTINS[name])
        key = name
    elif Path(name_or_path).expanduser().is_file():
        head = Path(name_or_path).expanduser().resolve()
        mask, source = _sibling_mask(head), str(head)
        key = _path_key(head, sha256_file(head))
    else:
        known = ", ".join(BUILTINS)
        raise IsybError(f"unknown template {name_or_path!r}: use one of {known}, "
                        "or the path of a head image")
    return prepare(key, head, mask, source=source, progress=progress)


def load_template(name_or_path: str | os.PathLike, *,
                  progress: Callable[[str], None] | None = None) -> Template:
    """A prepared template, by built-in name or head-image path (:func:`resolve`).

    Built-in names are listed by ``isyb templates list`` (``default`` is the
    pydeface mean head and needs no download). A path names a head image; a
    ``<stem>_desc-brain_mask`` beside it is used, else a brain mask is derived.
    The first use prepares and caches it under ``$ISYB_HOME/templates``;
    ``progress`` receives a line when that happens.
    """
    return resolve(os.fspath(name_or_path), progress=progress)


def prepare(key: str, head: Path, brain_mask: Path | None, *, source: str,
            progress: Callable[[str], None] | None = None) -> Template:
    """Derive the brain mask and face rule of a head image and cache them under ``key``.

    A cache entry is reused when ``template.json`` records this head's SHA-256
    and every prepared file still has its recorded SHA-256; otherwise (first
    use, another head, or prepared files changed since) it is prepared anew.
    """
    folder = cache_dir(key)
    digest = sha256_file(head)
    meta_path = folder / "template.json"
    why = "first use"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            meta, why = {}, f"{meta_path.name} is unreadable"
        if meta.get("head_sha256") == digest and meta.get("isyb_rule_version") == RULE_VERSION:
            changed = _changed_files(folder, key, meta.get("files"))
            if changed is None:
                why = "no SHA-256 recorded for its prepared files"
            elif changed:
                why = f"{', '.join(changed)} changed since it was prepared (SHA-256)"
            else:
                return _from_meta(key, folder, meta)
    volume = load_volume(head)  # a hostile head is refused before anything is said or written
    if progress:
        progress(f"preparing template {key} ({why}; cached in {folder})")
    elif why != "first use":
        LOG.warning("template %s: %s; preparing it again from its verified source", key, why)
    if brain_mask is not None:
        brain = load_volume(brain_mask).data > 0
        if brain.shape != volume.shape:
            raise IsybError(f"{brain_mask}: brain mask grid {brain.shape} differs from the "
                            f"template head {volume.shape}")
        mask_source = str(brain_mask)
    else:
        brain = extract_brain(volume.data, volume.zooms)
        mask_source = "derived by deepbet"
    check_brain_mask(brain, volume.zooms)
    rule = derive_face_rule(brain, volume.affine)
    region = face_region(rule, volume.shape, volume.affine)
    head_tissue = head_mask(volume.data, skin_threshold(volume.data))
    face_tissue_ml = float((region & head_tissue).sum() * np.prod(volume.zooms) / 1000.0)
    folder.mkdir(parents=True, exist_ok=True)
    head_copy = folder / f"tpl-{key}_T1w.nii.gz"
    with atomic_path(head_copy) as tmp:
        if "".join(head.suffixes[-2:]) == ".nii.gz":
            shutil.copyfile(head, tmp)
        else:
            volume.source.to_filename(str(tmp))
    save_mask_like(brain, volume, folder / f"tpl-{key}_desc-brain_mask.nii.gz")
    save_mask_like(region, volume, folder / f"tpl-{key}_desc-face_mask.nii.gz")
    files = [head_copy, folder / f"tpl-{key}_desc-brain_mask.nii.gz",
             folder / f"tpl-{key}_desc-face_mask.nii.gz"]
    meta = {
        "name": key,
        "source": source,
        "head_sha256": digest,
        "brain_mask": mask_source,
        "face_rule": rule.to_json(),
        "face_tissue_ml": round(face_tissue_ml, 1),
        "isyb_version": __version__,
        "isyb_rule_version": RULE_VERSION,
        "files": {path.name: sha256_file(path) for path in files},
    }
    write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return _from_meta(key, folder, meta)


#: Bumped whenever :func:`derive_face_rule` changes, so caches are rebuilt
#: (3: the chin plane lower, issue 20).
RULE_VERSION = 3
#: Bumped whenever :func:`isyb.templates.face.template_face` changes.
FACE_VERSION = 1


def _changed_files(folder: Path, key: str, recorded: object) -> list[str] | None:
    """The prepared files in ``folder`` that are missing or differ from their recorded SHA-256;
    None when ``template.json`` does not record the digest of each of them."""
    names = {f"tpl-{key}_{part}.nii.gz" for part in ("T1w", "desc-brain_mask", "desc-face_mask")}
    if not isinstance(recorded, dict) or set(recorded) != names:
        return None
    changed = []
    for name, digest in sorted(recorded.items()):
        path = folder / name
        try:
            if sha256_file(path) != digest:
                changed.append(path.name)
        except OSError:
            changed.append(path.name)
    return changed


def _from_meta(key: str, folder: Path, meta: dict) -> Template:
    return Template(
        name=key,
        head=folder / f"tpl-{key}_T1w.nii.gz",
        brain_mask=folder / f"tpl-{key}_desc-brain_mask.nii.gz",
        face_mask=folder / f"tpl-{key}_desc-face_mask.nii.gz",
        rule=FaceRule.from_json(meta["face_rule"]),
        info=meta,
    )


def cached(name: str) -> dict | None:
    """The cached ``template.json`` of a built-in name, or None if never prepared."""
    meta = cache_dir(canonical_name(name)) / "template.json"
    try:
        return json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # unreadable: prepared again on next use
