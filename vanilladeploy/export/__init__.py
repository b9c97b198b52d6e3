"""The ``export`` wing: the pipeline (checkpoint → verified ONNX, :mod:`.pipeline`) and its optional steps,
``--precision int8`` (:mod:`.int8`) and ``--trt`` (:mod:`.tensorrt`).

This package is also the public API's ``vanilladeploy.export(source, **options)``: Python binds a subpackage to its
parent's attribute of the same name once anything imports it, so instead of a function that an import would shadow,
the package itself is callable (see :func:`vanilladeploy.api.export`).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallablePackage(types.ModuleType):
    def __call__(self, source: Any, **options: Any) -> Any:
        from vanilladeploy.api import export

        return export(source, **options)


sys.modules[__name__].__class__ = _CallablePackage
