"""The package layout holds: no package imports from a package above it, and modules stay short.

Layers, bottom up (each may use only the ones below it; see README "Layout"):
``errors``, ``image_checks`` (used by every layer, ``io`` included), ``io``, ``executor``
-> ``head`` -> ``templates``, ``bids``, ``viz`` ->
``deface`` -> ``qc`` -> ``derive`` -> ``app``, ``synthetic`` -> ``evaluate`` -> ``study``
-> ``cli`` -> ``__main__``. ``isyb/__init__.py`` (the public API, lazy) may name anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "isyb"
LAYERS = {"errors": 0, "image_checks": 0, "io": 0, "executor": 0, "cache": 1, "head": 2,
          "templates": 3, "bids": 3, "viz": 3, "deface": 4, "qc": 5, "derive": 6, "app": 7,
          "synthetic": 7, "evaluate": 8, "study": 9, "cli": 10, "__main__": 11}
#: Bottom modules every layer may import, the others of layer 0 included: the errors, and the
#: checks of what cannot be an image (which use only the errors).
BASE = ("errors", "image_checks")
#: Modules allowed over 500 lines, and why.
LONG_MODULES = {
    "synthetic/phantom.py": "make_phantom is one 217-line description of a head's anatomy, "
                            "feature by feature; splitting it would scatter that description",
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE) != Path("__init__.py"))


def _isyb_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [name for name in found if name.startswith("isyb.")]


def _package(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def test_every_top_level_module_and_package_has_a_layer() -> None:
    assert {_package(p) for p in _modules()} <= set(LAYERS)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_or_beside_its_own(path: Path) -> None:
    me = _package(path)
    for name in _isyb_imports(path):
        other = name.split(".")[1]
        if other == me or other in BASE or name == "isyb":
            continue
        assert LAYERS[other] < LAYERS[me], f"{path.relative_to(PACKAGE)} imports {name}"


def test_no_import_cycle_between_packages() -> None:
    edges: dict[str, set[str]] = {}
    for path in _modules():
        me = _package(path)
        edges.setdefault(me, set()).update(
            n.split(".")[1] for n in _isyb_imports(path) if n.split(".")[1] != me)
    visiting: list[str] = []

    def visit(node: str, seen: set[str]) -> None:
        assert node not in visiting, f"import cycle: {' -> '.join([*visiting, node])}"
        if node in seen:
            return
        visiting.append(node)
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, seen)
        visiting.pop()
        seen.add(node)

    seen: set[str] = set()
    for node in sorted(edges):
        visit(node, seen)


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_under_500_lines(path: Path) -> None:
    relative = path.relative_to(PACKAGE).as_posix()
    lines = len(path.read_text().splitlines())
    assert lines <= 500 or relative in LONG_MODULES, f"{relative}: {lines} lines"


def test_importing_isyb_stays_light() -> None:
    """``import isyb`` (for ``__version__`` or the API) must not load torch or ANTs."""
    import subprocess
    import sys

    code = ("import sys, isyb; isyb.__version__; "
            "print(' '.join(m for m in ('torch', 'ants', 'deepbet') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
