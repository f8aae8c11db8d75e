"""Face masking; calling this package defaces one image: ``isyb.deface(image, ...)``.

``isyb.deface`` is both this package and the public function
:func:`isyb.deface.api.deface` (path or nibabel image in, defaced image, mask
and report out). A package and a function cannot otherwise share the name:
the import system binds ``isyb.deface`` to the package as soon as any of its
modules is imported. So the package module is made callable, by the module
class assignment the Python data model documents ("Customizing module
attribute access"); calling it imports :mod:`isyb.deface.api` then, keeping
``import isyb`` light.

Modules: :mod:`~isyb.deface.engine` (fit and apply on a volume),
:mod:`~isyb.deface.obscure` (the methods), :mod:`~isyb.deface.checked` (the
brain-guard check on the stored values), :mod:`~isyb.deface.api`,
:mod:`~isyb.deface.file`, :mod:`~isyb.deface.dataset` and
:mod:`~isyb.deface.report`.
"""

from __future__ import annotations

import os
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from isyb.deface.api import DefaceResult
    from isyb.io import ImageLike
    from isyb.templates.registry import Template


class _CallablePackage(types.ModuleType):
    def __call__(self, image: ImageLike, template: str | os.PathLike | Template = "default",
                 method: str = "blur", **options: Any) -> DefaceResult:
        """:func:`isyb.deface.api.deface`: the defaced image, its mask and the report."""
        from isyb.deface.api import deface

        return deface(image, template, method, **options)


sys.modules[__name__].__class__ = _CallablePackage
