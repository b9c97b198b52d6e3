"""``vanilladeploy inspect`` (what a checkpoint is) and ``vanilladeploy check`` (will TensorRT take an ONNX)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import out, print_json, run_command
from vanilladeploy.cli.options import ArchOpt, DetConfig, JsonPrint, KeyOpt, SourceArg, Verbose
from vanilladeploy.errors import ExitCode


def inspect(source: SourceArg, arch: ArchOpt = None, key: KeyOpt = None, det_config: DetConfig = None,
            as_json: JsonPrint = False, verbose: Verbose = False) -> None:
    """Show what a checkpoint is (container, form, variant, act_num, classes, λ) without exporting anything; for a
    detection checkpoint (RetinaNet, Mask R-CNN) the detector, backbone, neck, head and where each setting came
    from."""
    from vanilladeploy.source import inspect_source

    def run() -> None:
        info = inspect_source(source, arch=arch, key=key, det_config=det_config)
        if as_json:
            print_json(info)
            return
        table = Table(title=f"{source}", show_header=False)
        for section in ("source", "architecture", "lambda", "detector", "sources"):
            for k, v in _flat(info.get(section, {}), section):
                table.add_row(k, escape(str(v)))
        out.print(table)
        if "lambda" in info and not info["lambda"]["exact"]:
            out.print("[yellow]λ < 1: export refuses this checkpoint unless --allow-inexact is given.[/]")

    run_command(verbose, run)


def _flat(values: dict[str, Any], prefix: str) -> list[tuple[str, Any]]:
    """``{"a": {"b": 1}}`` → ``[("prefix.a.b", 1)]``; lists and tuples print as ``1, 2, 3``."""
    rows: list[tuple[str, Any]] = []
    for k, v in values.items():
        if isinstance(v, dict):
            rows += _flat(v, f"{prefix}.{k}")
        else:
            rows.append((f"{prefix}.{k}", ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else v))
    return rows


def check(
    onnx_path: Annotated[Path, typer.Argument(help="The ONNX model to check.", show_default=False)],
    trt_profile: Annotated[Optional[str], typer.Option("--trt-profile", help="TensorRT batch optimization profile "
                                                       "MIN/OPT/MAX or MAX (= 1/1/MAX) [default: 1/1/32]. Was "
                                                       "--batch.", show_default=False)] = None,
    trt_shapes: Annotated[Optional[str], typer.Option("--trt-shapes", help="Height x width profile MIN/OPT/MAX for a "
                                                      "graph with dynamic height and width [default for a detector: "
                                                      "320x320/800x1344/1344x1344].", show_default=False)] = None,
    as_json: JsonPrint = False,
    verbose: Verbose = False,
) -> None:
    """Check an ONNX model against what TensorRT's ONNX parser accepts (ops, types, attributes, opset, input
    shapes vs the batch profile) — no TensorRT or GPU needed. Exit 0 when compatible, 1 when not."""
    from vanilladeploy.check import check_onnx_file

    def run() -> None:
        result = check_onnx_file(onnx_path, profile=trt_profile, shapes=trt_shapes)
        _render_check(onnx_path, result.as_dict(), as_json=as_json)
        if not result:
            raise typer.Exit(int(ExitCode.VERIFICATION_FAILED))

    run_command(verbose, run)


def _render_check(path: Path, info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(info)
        return
    for line in info["errors"]:
        out.print(f"[red]error[/]   {escape(line)}", soft_wrap=True)
    for line in info["warnings"]:
        out.print(f"[yellow]warning[/] {escape(line)}", soft_wrap=True)
    verdict = "[green]TensorRT-compatible[/]" if info["passed"] else "[red]not TensorRT-compatible[/]"
    shapes = f", shapes {info['shapes']}" if info.get("shapes") else ""
    out.print(f"{escape(str(path))}: {verdict} ({info['nodes']} nodes, opset {info['opset']}, batch profile "
              f"{info['profile']}{shapes}, {len(info['errors'])} errors, {len(info['warnings'])} warnings)",
              soft_wrap=True)
