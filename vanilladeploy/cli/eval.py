"""``vanilladeploy eval``: parse, call :func:`vanilladeploy.evaluate.evaluate`, render."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import ProgressDisplay, fmt, out, pct, print_json, run_command, wide, write_json
from vanilladeploy.cli.options import ArchOpt, JsonPrint, ServedName, ServerUrl, Verbose
from vanilladeploy.runtimes import ONNX_RUNTIMES


def eval_(
    artifacts: Annotated[list[str], typer.Argument(help="Checkpoints (training form, λ as trained), deploy .pth, "
                                                   ".onnx (fp32/fp16/int8) or .engine files; the first is the "
                                                   "reference for agreement.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Image folder: an ImageFolder tree (class/xxx.jpg, labels) "
                                       "or a flat folder (no labels).", show_default=False)],
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most N images.",
                                                 show_default="all")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference batch.")] = 32,
    arch: ArchOpt = None,
    runtime: Annotated[str, typer.Option("--runtime", help="What runs the .onnx artifacts: "
                                         f"{' or '.join(ONNX_RUNTIMES)} (OpenVINO: its CPU plugin, the openvino "
                                         "extra).")] = "onnxruntime",
    precision: Annotated[str, typer.Option("--precision", help="What OpenVINO computes the .onnx artifacts in: "
                                           "fp32, or bf16 on a CPU with native bf16 (avx512_bf16 or amx_bf16; "
                                           "refused elsewhere). ONNX Runtime runs the graph's own precision.")]
    = "fp32",
    as_json: JsonPrint = False,
    json_path: Annotated[Optional[Path], typer.Option("--json-out", help="Also write the results as JSON to this "
                                                      "file.", show_default=False)] = None,
    url: ServerUrl = None,
    model: ServedName = None,
    protocol: Annotated[Optional[str], typer.Option("--protocol", help="With --url: http or grpc.",
                                                    show_default="the URL's scheme, else http")] = None,
    min_agreement: Annotated[Optional[float], typer.Option(
        "--min-agreement", min=0.0, max=100.0, help="Gate: every artifact after the first (the served one "
        "included) must agree with the first on top-1 for at least this % of the images, else exit 1.",
        show_default="no gate")] = None,
    max_rel_l2: Annotated[Optional[float], typer.Option(
        "--max-rel-l2", min=0.0, help="Gate: every artifact after the first must have a mean relative L2 of its "
        "logits against the first's of at most this, else exit 1.", show_default="no gate")] = None,
    verbose: Verbose = False,
) -> None:
    """Accuracy (top-1/top-5 with labels) and agreement with the first artifact, on real images preprocessed as
    the official evaluation does (resize, center crop, normalize; values from the checkpoint's args). With --url,
    the model on that server is one more row, fed the same batches: accuracy and agreement through the server;
    a served model whose config records the sha256 of none of the ONNX/engine files given is refused before any
    image is sent (exit 2). --min-agreement and --max-rel-l2 make missed agreement exit 1.

    Exported detectors (.onnx with boxes out): box agreement of each artifact after the first (run in --runtime at
    --precision) with the first (ONNX Runtime fp32), boxes matched by label and IoU ≥ 0.5 (docs/detection.md)."""
    from vanilladeploy.detect import is_detector_onnx
    from vanilladeploy.evaluate import check_eval_options, check_gates, evaluate

    def run_detectors() -> None:
        from vanilladeploy.detect import compare_detectors
        from vanilladeploy.errors import UsageError, VerificationError

        if len(artifacts) < 2:
            raise UsageError("give the reference detector and at least one artifact to compare with it.")
        given = {"--arch": arch, "--url": url, "--model": model, "--protocol": protocol,
                 "--batch": None if batch == 32 else batch, "--min-agreement": min_agreement,
                 "--max-rel-l2": max_rel_l2}
        used = next((k for k, v in given.items() if v is not None), None)
        if used:
            raise UsageError(f"{used} is for classifiers: detectors are compared image by image, in ONNX files.")
        info = compare_detectors(artifacts, data, limit=limit, runtime=runtime, precision=precision)
        emit(info, _render_detectors)
        failed = [r for r in info["artifacts"] if not r.get("reference") and not r["passed"]]
        if failed:
            raise VerificationError(f"{failed[0]['name']} ({failed[0]['runtime']}) misses its gate: "
                                    f"{'; '.join(failed[0]['failures'])}.")

    def emit(info: dict[str, Any], render: Any) -> None:
        """The results as JSON on stdout or a table, and as the --json-out file."""
        if as_json:
            print_json(info)
        else:
            render(info)
        if json_path is not None:
            write_json(json_path, info, quiet=as_json)

    def run() -> None:
        if artifacts and artifacts[0].endswith(".onnx") and is_detector_onnx(Path(artifacts[0])):
            run_detectors()
            return
        check_eval_options(data, arch=arch, json_path=json_path, runtime=runtime, precision=precision, url=url,
                           protocol=protocol, model=model, max_rel_l2=max_rel_l2)
        check_gates(len(artifacts) + (url is not None), min_agreement=min_agreement, max_rel_l2=max_rel_l2)
        with ProgressDisplay() as progress:
            result = evaluate(artifacts, data, limit=limit, batch=batch, arch=arch, progress=progress,
                              runtime=runtime, precision=precision, url=url, model=model, protocol=protocol)
        emit(result.as_dict(), _render)
        result.gate(min_agreement=min_agreement, max_rel_l2=max_rel_l2)

    run_command(verbose, run)


def _render_detectors(info: dict[str, Any]) -> None:
    table = Table(title=f"{info['images']} images from {escape(str(info['data']))}: box agreement with the first",
                  header_style="bold")
    for col in ("artifact", "runtime", "detections", "recall %", "precision %", "mean IoU", "mean score Δ",
                "gate", "img/s"):
        table.add_column(col, justify="left" if col in ("artifact", "runtime", "gate") else "right")
    for r in info["artifacts"]:
        if r.get("reference"):
            table.add_row(escape(r["name"]), r["runtime"], str(r["detections"]), "ref", "ref", "—", "—", "—",
                          f"{r['images_per_s']:.2f}")
            continue
        table.add_row(escape(r["name"]), r["runtime"], str(r["detections"]), pct(100 * r["recall"]),
                      pct(100 * r["precision"]), f"{r['mean_iou']:.4f}", fmt(r["mean_score_diff"]),
                      "[green]pass[/]" if r["passed"] else "[red]fail[/]", f"{r['images_per_s']:.2f}")
    wide().print(table)
    if info["skipped"]:
        out.print(f"[yellow]skipped {len(info['skipped'])} unreadable file(s)[/], e.g. "
                  f"{escape(info['skipped'][0])}", soft_wrap=True)


def _relative(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def _render(info: dict[str, Any]) -> None:
    table = Table(title=f"{info['images']} images from {escape(str(info['data']))}"
                  f"{'' if info.get('labelled') else ' (no labels)'}", header_style="bold")
    for col in ("artifact", "kind", "top-1 %", "top-5 %", "top-1 agree %", "mean rel L2", "worst image", "img/s"):
        table.add_column(col, justify="left" if col in ("artifact", "kind", "worst image") else "right")
    for r in info["artifacts"]:
        worst = r.get("worst") or {}
        table.add_row(escape(r["name"]), r["kind"], pct(r.get("top1")), pct(r.get("top5")),
                      pct(r.get("agreement_top1")), fmt(r.get("mean_rel_l2")),
                      escape(f"{_relative(worst['path'], info['data'])} ({worst['rel_l2']:.2e})")
                      if worst.get("path") else "—",
                      "—" if r.get("images_per_s") is None else f"{r['images_per_s']:.1f}")
    wide().print(table)
    skipped = info.get("skipped") or {}
    if skipped.get("count"):
        out.print(f"[yellow]skipped {skipped['count']} unreadable file(s)[/], e.g. "
                  f"{escape(str(skipped['examples'][0]))}", soft_wrap=True)
    for r in info["artifacts"]:
        if r.get("identity"):
            out.print(escape(f"{r['name']}: {r['identity']}."), soft_wrap=True)
    pre = info.get("preprocessing") or {}
    out.print(f"preprocessing: {escape(json.dumps(pre, ensure_ascii=False))}", soft_wrap=True)
