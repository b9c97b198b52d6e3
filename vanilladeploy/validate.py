"""Option checks shared by the library's entry points and the CLI: each rule written once, raising
:class:`~vanilladeploy.errors.UsageError` (exit 2) with the option's CLI name and the fix, before any work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vanilladeploy.errors import UsageError


def check_path(option: str, path: Path | None, *, directory: bool, must_exist: bool = False) -> None:
    """Refuse a path that cannot be what ``option`` needs (an empty string is the working directory; a file where a
    directory is needed, or the reverse; a missing input)."""
    if path is None:
        return
    kind = "directory" if directory else "file"
    if str(path) in ("", "."):
        raise UsageError(f"{option} is empty: give a {kind} path.")
    if must_exist and not path.exists():
        raise UsageError(f"{option} {path}: no such {kind}.")
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a directory.")
    if not directory and path.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file path.")


def needs(requirement: str, present: bool, options: dict[str, Any]) -> None:
    """Refuse options given (not None) without the one they depend on: they would silently do nothing."""
    given = [name for name, value in options.items() if value is not None]
    if given and not present:
        raise UsageError(f"{given[0]} has no effect without {requirement}: add {requirement}, or drop {given[0]}.")


def int_list(option: str, text: str) -> list[int]:
    """Comma-separated positive integers (``--concurrency 1,4,16``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"{option} {text!r}: give comma-separated positive integers such as 1,4,16.")
    return values


def name_list(option: str, text: str | None) -> list[str] | None:
    """Comma-separated names; None stays None (the default), an empty list is refused."""
    if text is None:
        return None
    names = [v.strip() for v in text.split(",") if v.strip()]
    if not names:
        raise UsageError(f"{option} is empty: give a comma-separated list, or drop {option} for the default.")
    return names


def check_opset(opset: int) -> None:
    """``--opset``: from the oldest we emit to the newest that the installed onnx and onnxruntime both support."""
    from vanilladeploy.exporters.onnx_export import MIN_OPSET
    from vanilladeploy.runtimes.runners import max_supported_opset

    newest = max_supported_opset()
    if not MIN_OPSET <= opset <= newest:
        import onnx
        import onnxruntime

        raise UsageError(f"--opset {opset}: choose {MIN_OPSET} … {newest} (what onnx {onnx.__version__} and "
                         f"onnxruntime {onnxruntime.__version__} installed here both support).")


def trt_profile(text: str) -> Any:
    """``--trt-profile MIN/OPT/MAX`` or ``MAX`` as a TensorRT batch profile: the one place it is parsed."""
    from vanilladeploy.exporters.trt_compat import BatchProfile

    try:
        return BatchProfile.parse(text)
    except ValueError as e:
        raise UsageError(f"--trt-profile: {e}.") from None


__all__ = ["check_opset", "check_path", "int_list", "name_list", "needs", "trt_profile"]
