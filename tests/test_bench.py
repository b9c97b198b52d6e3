"""benchmarks/run.py and benchmarks/results.py: one tiny CPU run through the real CLI; its JSON, CSV and plot;
runtimes that cannot run here are listed as skipped with the reason. No timing thresholds."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import assert_precision_stated, require
from test_cli import run

from vanilladeploy.benchmarks.results import CSV_FIELDS, SCHEMA_VERSION
from vanilladeploy.benchmarks.run import BenchOptions

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    out = tmp_path_factory.mktemp("bench")
    result = run("bench", "--models", "vanillanet_5,resnet18", "--train-form", "--device", "cpu",
                 "--runtimes", "torch,onnxruntime,torch-cudagraph,tensorrt", "--img-size", 32, "--warmup", 1,
                 "--iters", 3, "--threads", 1, "--json-out", out / "r.json", "--csv", out / "r.csv", "--plot",
                 out / "r.png", "--cache-dir", out / "cache")
    return result, out


def test_bench_runs_and_prints_the_table(bench_run: tuple) -> None:
    result, out = bench_run
    assert result.exit_code == 0, result.output
    assert "torch · cpu · fp32 · batch 1" in result.output and "onnxruntime · cpu" in result.output
    assert "tensorrt fp32: skipped — TensorRT needs --device cuda" in result.output
    assert "torch-cudagraph fp32: skipped — CUDA graphs need --device cuda" in result.output
    assert "1.61 / 0.33 / 0.27" in result.output  # the published A100 numbers of VanillaNet-5 beside ours


def test_the_help_names_what_bench_runs() -> None:
    from vanilladeploy.benchmarks.subjects import BENCH_RUNTIMES
    from vanilladeploy.cli.bench import runtime_names

    assert runtime_names() == list(BENCH_RUNTIMES)  # --help reads the names without importing torch


def test_bench_json_schema(bench_run: tuple) -> None:
    _, out = bench_run
    doc = json.loads((out / "r.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION and doc["config"]["device"] == "cpu"
    assert doc["machine"]["pinning"]["threads"] == 1 and doc["machine"]["versions"]["onnxruntime"]
    peak = doc["peaks"]["fp32"]
    assert peak["peak_flops"] > 0 and peak["bandwidth_bytes_s"] > 0 and peak["winner"]
    assert {c["name"].split(" ")[0] for c in peak["candidates"]} >= {"torch.mm", "onnxruntime", "copy"}
    records = doc["records"]
    keys = {(r["model"], r["backend"]) for r in records}
    models = ("vanillanet_5", "resnet18", "vanillanet_5:train")
    assert keys == {(m, b) for m in models for b in ("torch", "onnxruntime", "torch-cudagraph", "tensorrt")}
    for r in records:
        assert (r["device"], r["precision"], r["batch"], r["img_size"]) == ("cpu", "fp32", 1, 32)
        if r["backend"] in ("torch", "onnxruntime"):
            s = r["stats"]
            assert r["status"] == "ok" and s["iterations"] == 3 and 0 < s["min_ms"] <= s["median_ms"] <= s["p99_ms"]
            assert r["floor_ms"] > 0 and r["efficiency"] == pytest.approx(r["floor_ms"] / s["median_ms"], rel=1e-3)
            assert r["floor_exceeded"] == (r["efficiency"] > 1.0) and r["peak_used"] == peak["winner"]
            assert r["peak_memory_mb"] > 0 and r["copies_included"] is False
        else:
            assert r["status"] == "skipped" and "--device cuda" in r["reason"] and r["stats"] is None
    v5 = next(r for r in records if r["model"] == "vanillanet_5" and r["backend"] == "torch")
    train = next(r for r in records if r["model"] == "vanillanet_5:train" and r["backend"] == "torch")
    assert v5["depth"] == 5 and v5["published"]["top1"] == 72.49 and train["published"]["top1"] is None
    assert train["gflops"] > v5["gflops"] and train["form"] == "train"


def test_bench_csv_and_plot(bench_run: tuple) -> None:
    _, out = bench_run
    rows = list(csv.DictReader((out / "r.csv").open()))
    assert tuple(rows[0]) == CSV_FIELDS and len(rows) == 12
    assert {r["status"] for r in rows} == {"ok", "skipped"}
    png = (out / "r.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("args,words", [
    (("--models", "resnet51"), "unknown model 'resnet51'"),
    (("--runtimes", "tvm"), "unknown runtime 'tvm'"),
    (("--precision", "int9"), "--precision 'int9'"),
    (("--precision", "fp32,int4"), "--precision 'int4'"),
    (("--device", "tpu"), "--device tpu"),
    (("--channels-last", "--runtimes", "onnxruntime"), "--channels-last has no effect without a torch runtime"),
    (("--include-copies", "--device", "cpu"), "--include-copies has no effect on cpu"),
    (("--train-form", "--models", "resnet18,swin_t"), "--train-form has no effect"),
    (("--train-form", "--models", "vanillanet_5:train"), "--train-form has no effect"),
])
def test_bench_usage_errors(args: tuple[str, ...], words: str, tmp_path: Path) -> None:
    result = run("bench", *args, "--json-out", tmp_path / "r.json", "--cache-dir", tmp_path)
    assert result.exit_code == 2 and words in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "r.json").exists()


def test_thread_pinning_is_restored(tmp_path: Path) -> None:
    import os

    import torch

    before = (os.sched_getaffinity(0), torch.get_num_threads())
    result = run("bench", "--models", "vanillanet_5", "--runtimes", "torch", "--device", "cpu", "--img-size", 32,
                 "--warmup", 0, "--iters", 1, "--threads", 1, "--json-out", tmp_path / "r.json", "--csv",
                 tmp_path / "r.csv", "--plot", tmp_path / "r.png", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    assert (os.sched_getaffinity(0), torch.get_num_threads()) == before


def test_cuda_without_a_gpu_exits_3(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    result = run("bench", "--device", "cuda", "--json-out", tmp_path / "r.json", "--cache-dir", tmp_path)
    assert result.exit_code == 3 and "no CUDA GPU" in result.output


def test_missing_matplotlib_is_reported_before_timing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    result = run("bench", "--models", "vanillanet_5", "--json-out", tmp_path / "r.json", "--cache-dir", tmp_path)
    assert result.exit_code == 3 and "pip install 'vanilladeploy[bench]'" in result.output
    assert not (tmp_path / "r.json").exists()


def test_int8_record_beside_fp32_in_one_run(tmp_path: Path) -> None:
    from vanilladeploy.benchmarks.run import BenchOptions, run_bench

    result = run_bench(BenchOptions(models="vanillanet_5", runtimes=["onnxruntime", "torch"], device="cpu",
                                    precision="fp32,int8", img_size=64, warmup=1, iters=3, threads=1,
                                    cache_dir=tmp_path, gemm_n=256, copy_bytes=8 << 20))
    records = {(r["backend"], r["precision"]): r for r in result.records}
    fp32, int8 = records[("onnxruntime", "fp32")], records[("onnxruntime", "int8")]
    assert fp32["status"] == int8["status"] == "ok" and int8["weight_bytes"] * 4 == fp32["weight_bytes"]
    assert int8["speedup_vs_fp32"] == pytest.approx(fp32["stats"]["median_ms"] / int8["stats"]["median_ms"],
                                                    rel=1e-2)
    assert "seeded random inputs" in int8["calibration"] and fp32["calibration"] is None
    assert records[("torch", "int8")]["status"] == "skipped" and "onnxruntime" in records[("torch", "int8")]["reason"]
    assert set(result.peaks) == {"fp32", "int8"} and result.peaks["int8"].winner != result.peaks["fp32"].winner
    assert int8["peak_used"] == result.peaks["int8"].winner and "int8" in result.peaks["int8"].winner
    assert (tmp_path / "bench").is_dir() and list((tmp_path / "bench").glob("*.int8.onnx"))


def test_openvino_pairs_in_one_run_with_their_own_peaks(tmp_path: Path,
                                                        openvino_compiles: list[tuple[object, object]]) -> None:
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    from vanilladeploy.benchmarks.run import BenchOptions, run_bench
    from vanilladeploy.runtimes.runners import bf16_missing

    result = run_bench(BenchOptions(models="vanillanet_5", runtimes=["onnxruntime", "openvino"], device="cpu",
                                    precision="fp32,bf16,int8", img_size=32, warmup=1, iters=3, threads=1,
                                    cache_dir=tmp_path, gemm_n=256, copy_bytes=8 << 20))
    records = {(r["backend"], r["precision"]): r for r in result.records}
    assert set(records) == {(b, p) for b in ("onnxruntime", "openvino") for p in ("fp32", "bf16", "int8")}
    for precision in ("fp32", "int8"):
        r = records[("openvino", precision)]
        assert r["status"] == "ok" and r["floor_ms"] is not None and r["peak_used"] == result.peaks[precision].winner
        assert not r["floor_exceeded"], r  # OpenVINO's own kernels are among the peak candidates
    assert any(c["name"].startswith("openvino Conv1x1") and c["status"] == "ok"
               for c in result.peaks["int8"].as_dict()["candidates"])
    assert "OpenVINO" in records[("onnxruntime", "bf16")]["reason"]  # bf16 is OpenVINO's precision
    bf16 = records[("openvino", "bf16")]
    if bf16_missing():  # no avx512_bf16/amx_bf16: skipped with the flag it lacks, never timed as fp32
        assert bf16["status"] == "skipped" and "avx512_bf16" in bf16["reason"]
    else:
        assert bf16["status"] == "ok" and bf16["floor_ms"] is not None
    assert_precision_stated(openvino_compiles, {"fp32", "bf16"})  # the models and OpenVINO's peak kernels alike


def test_depth_axis_has_plain_integer_ticks(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vanilladeploy.benchmarks import results as report

    records = [{"status": "ok", "backend": "onnxruntime", "precision": "fp32", "family": f, "model": m, "depth": d,
                "stats": {"median_ms": ms}, "published": {"top1": t}}
               for f, m, d, ms, t in (("vanillanet", "vanillanet_6", 6, 10.0, 76.4), ("resnet", "resnet50", 50, 9.0,
                                                                                      79.8))]
    captured = {}
    real_close = plt.close
    plt.close = lambda fig: captured.setdefault("fig", fig)
    try:
        report.write_plot(tmp_path / "p.png", records, title="t")
    finally:
        plt.close = real_close
    axis = captured["fig"].axes[1]
    captured["fig"].canvas.draw()
    labels = [t.get_text() for t in axis.get_xticklabels() if t.get_text()]
    assert labels == ["6", "50"], labels


def _tiny(tmp_path: Path, **changes: object) -> BenchOptions:
    base = dict(models="vanillanet_5", runtimes=["torch"], device="cpu", img_size=32, warmup=0, iters=2, threads=1,
                cache_dir=tmp_path, gemm_n=64, copy_bytes=1 << 16)
    return BenchOptions(**(base | changes))


def test_a_failing_peak_candidate_is_recorded_and_only_timed_precisions_get_candidates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vanilladeploy.benchmarks import peaks
    from vanilladeploy.benchmarks import run as bench

    def broken_session(shape: tuple[int, int, int], threads: int | None) -> peaks.PeakCandidate:
        def prepare() -> peaks.Subject:
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : session failed")

        return peaks.PeakCandidate(f"onnxruntime MatMul {shape[0]} fp32", "compute", "fp32", 1e9, prepare)

    asked: list[list[str]] = []
    real_candidates = bench.peak_candidates
    monkeypatch.setattr(peaks, "_ort_matmul", broken_session)
    monkeypatch.setattr(bench, "peak_candidates", lambda device, precisions, *a, **k:
                        asked.append(list(precisions)) or real_candidates(device, precisions, *a, **k))
    result = bench.run_bench(_tiny(tmp_path, precision="fp32,fp16"))
    assert asked == [["fp32"]]  # every fp16 record on cpu is skipped: no fp16 kernel is timed for nothing
    doc = result.document()
    fp32 = doc["peaks"]["fp32"]
    failed = [c for c in fp32["candidates"] if c["status"] == "failed"]
    assert len(failed) == 3 and all("session failed" in c["reason"] and c["rate"] is None for c in failed)
    assert fp32["available"] and not fp32["winner"].startswith("onnxruntime MatMul")
    assert doc["peaks"]["fp16"] == {"available": False, "precision": "fp16", "candidates": [],
                                    "reason": "no fp16 record was timed on cpu, so no fp16 peak was measured"}
    records = {r["precision"]: r for r in result.records}
    assert records["fp32"]["status"] == "ok" and records["fp32"]["floor_ms"] > 0
    assert records["fp16"]["status"] == "skipped"


def test_more_threads_than_cpus_is_a_warning(tmp_path: Path) -> None:
    from vanilladeploy.benchmarks.floor import usable_cores
    from vanilladeploy.benchmarks.run import option_warnings, run_bench

    too_many = usable_cores(None) + 1
    assert option_warnings(_tiny(tmp_path)) == []
    lines: list[str] = []
    result = run_bench(_tiny(tmp_path, threads=too_many), warn=lines.append)
    assert len(lines) == 1 and f"--threads {too_many} is more than the {too_many - 1} CPUs" in lines[0]
    assert result.records[0]["status"] == "ok"


def test_refusals_come_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vanilladeploy.benchmarks import run as bench
    from vanilladeploy.errors import UsageError

    monkeypatch.setattr(bench, "_run_pinned", lambda *a: pytest.fail("timing started"))
    for change in ({"channels_last": True, "runtimes": ["onnxruntime"]}, {"include_copies": True},
                   {"train_form": True, "models": "resnet18"}):
        with pytest.raises(UsageError, match="has no effect"):
            bench.run_bench(_tiny(tmp_path, **change))
