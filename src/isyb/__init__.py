"""isyb: get MRI datasets ready for public sharing.

The Python API, imported on first use so that ``import isyb`` (and
``isyb.__version__``) stays light (no torch, no ANTs until a function needs
them):

* :func:`deface`, :class:`DefaceOptions`, :class:`DefaceResult`: deface one
  image, given by path or as a nibabel image (:mod:`isyb.deface.api`);
* :func:`load_template`, :class:`Template`: prepared head templates;
* :func:`evaluate_defacing`: how well a defacing worked;
* :func:`qc_anat`, :func:`qc_bold`: image quality metrics of one scan;
* :func:`load_volume`, :class:`Volume`: the one image loader;
* :class:`IsybError`: every refused input or failed check.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("isyb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

#: Public name -> the module that defines it. ``deface`` is the package :mod:`isyb.deface`
#: itself, which is callable (its docstring says why).
_API = {
    "deface": "isyb.deface",
    "DefaceOptions": "isyb.deface.engine",
    "DefaceResult": "isyb.deface.api",
    "Template": "isyb.templates.registry",
    "load_template": "isyb.templates.registry",
    "evaluate_defacing": "isyb.evaluate.anonymization",
    "qc_anat": "isyb.qc.anat",
    "qc_bold": "isyb.qc.bold",
    "load_volume": "isyb.io",
    "Volume": "isyb.io",
    "IsybError": "isyb.errors",
}

__all__ = list(_API)


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'isyb' has no attribute {name!r}")
    module = import_module(_API[name])
    value = module if name == "deface" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
