"""``vanilladeploy bench``: parse, call :func:`vanilladeploy.benchmarks.run.run_bench`, render the tables, write the
results (JSON, CSV, plot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import ProgressDisplay, ms, out, print_json, run_command, wide, wrote
from vanilladeploy.cli.options import JsonPrint, Verbose
from vanilladeploy.errors import MissingDependencyError
from vanilladeploy.machine import describe_cpu
from vanilladeploy.runtimes import RUNTIMES, runtimes_with
from vanilladeploy.validate import name_list


def runtime_names() -> list[str]:
    """What ``--runtimes`` takes, the names of :data:`vanilladeploy.benchmarks.subjects.BENCH_RUNTIMES`, read from
    :data:`~vanilladeploy.runtimes.RUNTIMES` so that ``--help`` imports no torch: every runtime, and torch also
    replayed as a CUDA graph (torch-cudagraph)."""
    return [n for name in RUNTIMES for n in ((name, "torch-cudagraph") if name == "torch" else (name,))]


def _runs(precision: str) -> str:
    """The runtimes of :data:`~vanilladeploy.runtimes.RUNTIMES` that have ``precision``."""
    names = runtimes_with(precision)
    return ", ".join(names[:-1]) + f" and {names[-1]}" if len(names) > 1 else "".join(names)


RUNTIMES_HELP = (f"Comma-separated: {', '.join(runtime_names())} (torch-cudagraph: torch replayed as a CUDA graph). "
                 "Unavailable ones are listed as skipped. Was --backends.")
PRECISION_HELP = (f"fp32, fp16 ({_runs('fp16')}; CUDA only), bf16 ({_runs('bf16')}, on a CPU with native bf16), "
                  f"int8 ({_runs('int8')}: a QDQ graph calibrated on seeded random inputs, for timing), or several "
                  "timed in the same rounds: fp32,bf16,int8.")


def bench(
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 1,
    models: Annotated[Optional[str], typer.Option("--models", help="Comma-separated: vanillanet_5 … "
                                                  "vanillanet_13_x1_5_ada_pool (':train' for the training form), "
                                                  "resnet18 … resnet152, swin_t/s/b; 'paper' = the official latency "
                                                  "table's models; 'all'.", show_default="paper")] = None,
    runtimes: Annotated[Optional[str], typer.Option("--runtimes", help=RUNTIMES_HELP, show_default="all")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda.",
                                                  show_default="cuda if available")] = None,
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "fp32",
    img_size: Annotated[int, typer.Option("--img-size", min=1, help="Input height and width.")] = 224,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed rounds first.")] = 3,
    iters: Annotated[Optional[int], typer.Option("--iters", min=1, help="Timed rounds (each times every model "
                                                 "once).", show_default="20 on cpu, 200 on cuda")] = None,
    budget: Annotated[Optional[float], typer.Option("--budget-s", help="Stop timing after this many seconds "
                                                    "(at least 3 rounds).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads, pinned to as many "
                                                   "cores.", show_default="all")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="torch and torch-cudagraph: "
                                                "NHWC memory format.")] = False,
    include_copies: Annotated[bool, typer.Option("--include-copies", help="Time host→device input and "
                                                 "device→host output copies too.")] = False,
    train_form: Annotated[bool, typer.Option("--train-form", help="Also time each VanillaNet's training form "
                                             "(λ = 1), to show what re-parameterization buys.")] = False,
    as_json: JsonPrint = False,
    json_path: Annotated[Path, typer.Option("--json-out", help="Results JSON.")] = Path("bench/results.json"),
    csv_path: Annotated[Path, typer.Option("--csv", help="Results CSV.")] = Path("bench/results.csv"),
    plot_path: Annotated[Path, typer.Option("--plot", help="PNG: top-1 vs latency, depth vs latency.")]
    = Path("bench/latency.png"),
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where exported ONNX files and the "
                                                      "engines' timing cache are kept (peaks are measured anew "
                                                      "in every run).",
                                                      show_default="~/.cache/vanilladeploy")] = None,
    task: Annotated[str, typer.Option("--task", help="classification, or detection: batch-1 latency at "
                                      "--det-size of the VanillaNet-13 detection backbone fused vs its training form "
                                      "vs ResNet-50 and Swin-T backbones, and of whole RetinaNets, in torch, ONNX "
                                      "Runtime and OpenVINO (docs/detection.md). Takes --models, --runtimes, "
                                      "--warmup, --iters, --budget-s, --json-out, --cache-dir.")] = "classification",
    det_size: Annotated[str, typer.Option("--det-size", help="--task detection: input HEIGHTxWIDTH.")] = "800x1344",
    width_divisor: Annotated[int, typer.Option("--width-divisor", min=1, help="--task detection: VanillaNet widths "
                                               "divided by N, for a quick run (1: the official widths).")] = 1,
    verbose: Verbose = False,
) -> None:
    """Batch latency of deployed VanillaNets against ResNet and Swin on the same runtimes, in one run.

    Models are timed in interleaved rounds; the table gives median/p90/p99, throughput, the physical floor
    max(FLOPs/peak, weight bytes/bandwidth) from measured peaks, efficiency = floor/median, and the published A100
    numbers beside ours.
    """
    from vanilladeploy.benchmarks.run import BenchOptions, check_bench_options, run_bench, write_results

    def run_detection() -> None:
        from vanilladeploy.benchmarks.detection import BACKBONES, DETECTORS, DetBenchConfig, run_detection_bench
        from vanilladeploy.cli.console import write_json
        from vanilladeploy.errors import UsageError
        from vanilladeploy.pipeline.detection import parse_sizes

        sizes = parse_sizes(det_size, "--det-size")
        if len(sizes) != 1:
            raise UsageError(f"--det-size {det_size}: give one HEIGHTxWIDTH.")
        (height, width), = sizes
        chosen = name_list("--models", models) or list(BACKBONES + DETECTORS)
        unknown = [m for m in chosen if m not in BACKBONES + DETECTORS]
        if unknown or batch != 1:
            raise UsageError(f"--task detection: --models {unknown[0]} is not one of "
                             f"{', '.join(BACKBONES + DETECTORS)}." if unknown else
                             "--task detection measures batch 1 (the paper's setting); drop --batch.")
        chosen_runtimes = name_list("--runtimes", runtimes) or ["torch", "onnxruntime", "openvino"]
        if any(r not in ("torch", "onnxruntime", "openvino") for r in chosen_runtimes):
            raise UsageError("--task detection: --runtimes takes torch, onnxruntime and openvino.")
        cfg = DetBenchConfig(height, width, warmup=warmup, iters=iters or 5, budget_s=budget,
                             runtimes=tuple(chosen_runtimes), models=tuple(chosen), width_divisor=width_divisor,
                             **({"cache_dir": cache_dir} if cache_dir else {}))
        with ProgressDisplay() as progress:
            result = run_detection_bench(cfg, progress=progress)
        info = result.as_dict()
        if as_json:
            print_json(info)
        else:
            _render_detection(info)
        target = Path("bench/detection.json") if json_path == Path("bench/results.json") else json_path
        write_json(target, info, quiet=as_json)

    def run() -> None:
        if task == "detection":
            run_detection()
            return
        if task != "classification":
            from vanilladeploy.errors import UsageError

            raise UsageError(f"--task {task!r}: choose classification or detection.")
        opts = BenchOptions(models=models, runtimes=name_list("--runtimes", runtimes), device=device,
                            precision=precision, batch=batch, img_size=img_size, warmup=warmup, iters=iters,
                            budget_s=budget, threads=threads, channels_last=channels_last,
                            include_copies=include_copies, train_form=train_form)
        if cache_dir is not None:
            opts.cache_dir = cache_dir
        check_bench_options(opts, {"--json-out": json_path, "--csv": csv_path, "--plot": plot_path})
        with ProgressDisplay() as progress:
            result = run_bench(opts, progress=progress)
        if as_json:
            print_json(result.document())
        else:
            _render_bench(result.records, result.machine, result.peaks, result.peaks_unavailable)
        try:
            written = write_results(result, json_path=json_path, csv_path=csv_path, plot_path=plot_path)
        except MissingDependencyError:
            for path in (json_path, csv_path):
                wrote(path, quiet=as_json)
            raise
        for path in written:
            wrote(path, quiet=as_json)

    run_command(verbose, run)


def _render_bench(records: list[dict[str, Any]], machine: dict[str, Any], peaks: dict[str, Any],
                  unavailable: dict[str, dict[str, Any]]) -> None:
    where = machine.get("gpu") or describe_cpu(machine)
    out.print(f"[bold]{escape(where)}[/]", soft_wrap=True)
    for precision, peak in peaks.items():
        unit = "GOP/s" if precision == "int8" else "GFLOP/s"
        t = peak.theoretical_peak
        theory = f"; {t.label}: {t.note} = {t.flops / 1e9:.0f} {unit}" if t and t.flops else ""
        out.print(f"  {precision} peak measured in the same rounds: {peak.peak_flops / 1e9:.0f} {unit} "
                  f"({escape(peak.winner)}, min time), bandwidth {peak.bandwidth_bytes_s / 1e9:.0f} GB/s"
                  f"{escape(theory)}", soft_wrap=True)
    for precision, info in unavailable.items():
        out.print(f"  [yellow]{precision}: no peak measured[/] — {escape(str(info.get('reason', '')))}; its records "
                  "have no floor", soft_wrap=True)
    for runtime, precision in dict.fromkeys((r["backend"], r["precision"]) for r in records):  # "backend": runtime
        rows = [r for r in records if r["backend"] == runtime and r["precision"] == precision]
        ok = [r for r in rows if r["status"] == "ok"]
        if not ok:
            out.print(f"[yellow]{runtime} {precision}: skipped[/] — {escape(rows[0]['reason'] or '')}",
                      soft_wrap=True)
            continue
        _bench_table(runtime, ok)
        for r in rows:
            if r["status"] != "ok":
                out.print(f"  [yellow]skipped[/] {r['model']}: {escape(r['reason'] or '')}", soft_wrap=True)
        if any(r["floor_exceeded"] for r in ok):
            out.print(f"  [yellow]![/] efficiency above 1: {FLOOR_NOTE}", soft_wrap=True)
        if ok[0].get("calibration"):
            out.print(f"  int8 calibration: {escape(ok[0]['calibration'])}", soft_wrap=True)


def _render_detection(info: dict[str, Any]) -> None:
    cfg = info["config"]
    out.print(f"[bold]{escape(info['cpu'])}[/]", soft_wrap=True)
    table = Table(title=f"batch 1 · {cfg['height']}x{cfg['width']} · VanillaNet widths ÷ {cfg['width_divisor']}",
                  header_style="bold")
    for peak in info.get("peaks", {}).values():
        out.print(f"  {peak['precision']} peak measured in the same rounds: {peak['peak_flops'] / 1e9:.0f} GFLOP/s "
                  f"({escape(peak['winner'])}), bandwidth {peak['bandwidth_bytes_s'] / 1e9:.0f} GB/s", soft_wrap=True)
    for precision, reason in info.get("peaks_unavailable", {}).items():
        out.print(f"  [yellow]{precision}: no peak measured[/] — {escape(reason)}", soft_wrap=True)
    for col in ("model", "kind", "runtime", "params M", "GFLOPs", "median ms", "p90", "GFLOP/s", "floor ms", "eff.",
                "vs training form (same runtime, else torch)"):
        table.add_column(col, justify="left" if col in ("model", "kind", "runtime") else "right", no_wrap=True)
    rows = info["rows"]
    train = {(r["model"], r["runtime"]): r.get("median_ms") for r in rows if r["model"].endswith(":train")}
    for r in rows:
        if r.get("skipped"):
            continue
        base = train.get((f"{r['model']}:train", r["runtime"])) or train.get((f"{r['model']}:train", "torch"))
        speedup = f"{base / r['median_ms']:.2f}×" if base and not r["model"].endswith(":train") else ""
        table.add_row(r["model"], r["kind"], r["runtime"], f"{r['params_m']:.1f}",
                      "—" if r["gflops"] is None else f"{r['gflops']:.1f}", ms(r["median_ms"]), ms(r["p90_ms"]),
                      str(r.get("gflop_per_s", "—")), ms(r.get("floor_ms")),
                      "—" if r.get("efficiency") is None else
                      f"{r['efficiency']:.2f}" + (" [yellow]![/]" if r.get("floor_exceeded") else ""), speedup)
    wide(170).print(table)
    if any(r.get("floor_exceeded") for r in rows):
        out.print(f"  [yellow]![/] efficiency above 1: {FLOOR_NOTE}", soft_wrap=True)
    for r in rows:
        if r.get("skipped"):
            out.print(f"  [yellow]skipped[/] {r['model']} on {r['runtime']}: {escape(r['skipped'])}", soft_wrap=True)


FLOOR_NOTE = "floor exceeded: peak under-measured (the model beat every peak kernel timed beside it)"


def _efficiency(r: dict[str, Any]) -> str:
    """floor / median; flagged with ``!`` (and :data:`FLOOR_NOTE` under the table) where the model beat its floor."""
    if r["efficiency"] is None:
        return "—"
    return f"{r['efficiency']:.2f}" + (" [yellow]![/]" if r["floor_exceeded"] else "")


def _bench_table(runtime: str, ok: list[dict[str, Any]]) -> None:
    first = ok[0]
    speedup = any("speedup_vs_fp32" in r for r in ok)
    table = Table(title=f"{runtime} · {first['device']} · {first['precision']} · batch {first['batch']} · "
                  f"{first['img_size']}px · copies {'included' if first['copies_included'] else 'excluded'}",
                  header_style="bold")
    columns = ["model", "top-1", "GFLOPs", "depth", "median ms", "p90", "p99", "img/s", "floor ms", "eff."]
    columns += ["vs fp32"] if speedup else []
    for col in columns + ["paper A100 ms (PyTorch / TRT32 / TRT16)"]:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in ok:
        s, p = r["stats"], r["published"]
        paper = " / ".join("—" if p[k] is None else str(p[k])
                           for k in ("pytorch_a100_ms", "trt_fp32_a100_ms", "trt_fp16_a100_ms"))
        eff = _efficiency(r)
        cells = [r["model"], "—" if p["top1"] is None else str(p["top1"]), f"{r['gflops']:.1f}", str(r["depth"]),
                 ms(s["median_ms"]), ms(s["p90_ms"]), ms(s["p99_ms"]), f"{s['throughput_img_s']:.1f}",
                 ms(r["floor_ms"]), eff]
        cells += [f"{r['speedup_vs_fp32']:.2f}×" if "speedup_vs_fp32" in r else "—"] if speedup else []
        table.add_row(*cells, paper)
    wide(170).print(table)
