"""One alignment (deepbet brain mask + template registration) per real head per test run.

``tests/deface/test_deface_real.py`` and ``tests/evaluate/test_reid.py`` both align the
full-face real heads to the default template (about 10-15 CPU s each, mostly deepbet and
ANTs). :func:`real_alignment` does it once per run, shared by every pytest-xdist worker
through :func:`conftest.build_once` (file-locked), and keeps it in memory per process.
An :class:`isyb.deface.engine.Alignment` does not depend on the method, so sharing it
changes no test's meaning.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from conftest import build_once
from isyb.deface.engine import Alignment, align
from isyb.io import load_volume
from isyb.templates.registry import Template

_MEMORY: dict[tuple[str, str], Alignment] = {}


def real_alignment(shared_dir: Path, path: Path, template: Template) -> Alignment:
    """The alignment of the head image ``path`` to ``template``, computed once per run."""
    key = (str(path), template.info["head_sha256"])
    if key not in _MEMORY:
        name = f"alignment-{template.name}-{path.name}"

        def build(folder: Path) -> None:
            with open(folder / "alignment.pkl", "wb") as stream:
                pickle.dump(align(load_volume(path), template), stream)

        folder = build_once(shared_dir, name, build)
        with open(folder / "alignment.pkl", "rb") as stream:
            _MEMORY[key] = pickle.load(stream)
    return _MEMORY[key]
