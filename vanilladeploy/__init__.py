"""vanilladeploy: VanillaNet training checkpoints → verified deployable artifacts.

The public API (:mod:`vanilladeploy.api`) is imported on first use, so ``import vanilladeploy`` stays light::

    import vanilladeploy as vd
    result = vd.export("vanillanet_5", out_dir="build/vn5", img_size=64)
    logits = vd.load(result.onnx).predict(images)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("export", "load", "evaluate", "Model", "ExportResult", "Preprocess", "DetectorSession")

if TYPE_CHECKING:
    from vanilladeploy.api import DetectorSession, ExportResult, Model, Preprocess, evaluate, export, load


def __getattr__(name: str) -> Any:
    if name in _API:
        from vanilladeploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'vanilladeploy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])


__all__ = ["DetectorSession", "ExportResult", "Model", "Preprocess", "__version__", "evaluate", "export", "load"]
