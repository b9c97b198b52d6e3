"""The runtimes and backends beyond ONNX Runtime through the real CLI (``python -m vanilladeploy`` for ``serve``,
typer's CliRunner for the rest): ``serve`` of the repository ``optimize`` writes, ``serve --runtime openvino``,
``bench --runtimes openvino``, ``repo --backend onnxruntime|openvino`` and ``eval --runtime openvino`` on an int8
export. Servers are real Triton servers on free loopback ports, every request has a timeout, every server is stopped.

One image folder (40 PNGs of 32 px: 8 calibrate int8, 32 are held out), one ``export --precision int8`` and one
``optimize --runtimes onnxruntime`` serve the whole module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_IMG, assert_precision_stated, require
from test_cli import run
from triton_helpers import READY, assert_nothing_left, require_triton, serve, stop, triton_sender, wait_for_line

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.runtimes.runners import onnx_runner
from vanilladeploy.verify import compare

MODEL = "vanillanet_5"
CALIB = 8  # the other 32 images (MIN_HOLDOUT) are held out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 random 32-px PNGs in 4 class folders (at 32 px the official transform takes them as they are)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "data"
    rng = np.random.default_rng(11)
    for c in range(4):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (SMALL_IMG, SMALL_IMG, 3), dtype=np.uint8)).save(
                root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """``vanilladeploy export --precision int8``: fp32 ONNX, deploy .pth and the int8 QDQ ONNX in one directory."""
    out = tmp_path_factory.mktemp("export") / "v5"
    result = run("export", MODEL, "--img-size", SMALL_IMG, "--precision", "int8", "--calib", images,
                 "--calib-count", CALIB, "--min-agreement", 0, "--out", out)
    assert result.exit_code == 0, result.output
    assert {f"{MODEL}.onnx", f"{MODEL}.int8.onnx", f"{MODEL}_deploy.pth"} <= {p.name for p in out.iterdir()}
    return out


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """``vanilladeploy optimize`` restricted to ONNX Runtime (fp32, fp16, int8), one timed round: OUT/triton is
    the winner's repository."""
    out = tmp_path_factory.mktemp("optimize") / "out"
    result = run("optimize", MODEL, "--calib", images, "--calib-count", CALIB, "--img-size", SMALL_IMG,
                 "--runtimes", "onnxruntime", "--warmup", 0, "--iters", 1, "--min-agreement", 0, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def _inputs(batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, SMALL_IMG, SMALL_IMG), dtype=np.float32)


def _served_logits(source: Path, x: np.ndarray, scratch: Path, *extra: str) -> tuple[str, np.ndarray]:
    """``vanilladeploy serve SOURCE *extra`` on free loopback ports: what it printed until ready, and its answer
    to ``x`` over HTTP (30 s timeout). Stopped with SIGTERM on every path; exit 0 and nothing left behind."""
    from vanilladeploy.serving.serve_bench import free_ports

    ports = free_ports()
    scratch.mkdir(exist_ok=True)
    process = serve(source, [ports.http, ports.grpc, ports.metrics], *extra, max_batch=None,
                    env=os.environ | {"TMPDIR": str(scratch)})
    try:
        output = wait_for_line(process, READY, timeout_s=180)
        y = triton_sender(f"http://127.0.0.1:{ports.http}", "http", MODEL)()(x)
    finally:
        stop(process)
    assert process.returncode == 0, "serve did not exit 0 on SIGTERM"
    assert_nothing_left(ports.http, process.pid)
    return output, y


# --- 1. serve REPO: the Triton repository optimize writes, served as it is ------------------------------------

@pytest.mark.triton
def test_serve_the_repository_optimize_wrote_answers_like_the_winner_in_process(optimized: Path,
                                                                                tmp_path: Path) -> None:
    require_triton(module_level=False)
    chosen = json.loads((optimized / "optimize.json").read_text())["chosen"]
    assert chosen["runtime"] == "onnxruntime" and chosen["verified"], chosen
    x = _inputs(2, seed=1)
    with onnx_runner(Path(chosen["artifact"]), "onnxruntime") as winner:
        expected = winner.infer(x)
    output, y = _served_logits(optimized / "triton", x, tmp_path / "tmp")
    assert f"serving model {MODEL}" in output and "ONNX Runtime on the CPU" in output, output
    result = compare(y, expected, tolerance=1e-5)
    assert y.shape == (2, 1000) and result, (chosen["precision"], result)


# --- 2. serve SOURCE --runtime openvino: OpenVINO inside Triton's python backend -------------------------------

@pytest.mark.triton
def test_serve_runtime_openvino_answers_like_onnxruntime_in_process(exported: Path, tmp_path: Path) -> None:
    require_triton(module_level=False)
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    x = _inputs(3, seed=2)
    with onnx_runner(exported / f"{MODEL}.onnx", "onnxruntime") as ort:
        expected = ort.infer(x)
    output, y = _served_logits(exported, x, tmp_path / "tmp", "--runtime", "openvino")
    assert "OpenVINO on the CPU" in output, output
    result = compare(y, expected, tolerance=1e-5)  # fp32: the export dir serves its fp32 ONNX, not the int8 one
    assert y.shape == (3, 1000) and result, result


# --- 3. bench --runtimes openvino -------------------------------------------------------------------------------

def test_bench_runtimes_openvino_records_an_ok_fp32_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        openvino_compiles: list[tuple[object, object]]) -> None:
    monkeypatch.chdir(tmp_path)  # a default output path would land here, not in the repository
    result = run("bench", "--runtimes", "openvino", "--models", MODEL, "--img-size", SMALL_IMG, "--warmup", 0,
                 "--iters", 2, "--device", "cpu", "--json-out", tmp_path / "r.json", "--csv", tmp_path / "r.csv",
                 "--plot", tmp_path / "r.png", "--cache-dir", tmp_path / "cache")
    assert result.exit_code == 0, result.output
    records = json.loads((tmp_path / "r.json").read_text())["records"]
    assert [(r["model"], r["backend"], r["precision"], r["status"]) for r in records] == \
        [(MODEL, "openvino", "fp32", "ok")], records
    (record,) = records
    assert (record["device"], record["batch"], record["img_size"]) == ("cpu", 1, SMALL_IMG)
    stats = record["stats"]
    assert stats["iterations"] == 2 and 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p99_ms"], stats
    assert_precision_stated(openvino_compiles, {"fp32"})  # OpenVINO was told f32 and reports it


# --- 4. repo --backend onnxruntime|openvino: configs for Triton's native backends --------------------------------

@pytest.mark.parametrize(("backend", "platform"), [("onnxruntime", "onnxruntime_onnx")])
def test_repo_native_backend_config_parses_with_tritons_schema(exported: Path, tmp_path: Path, backend: str,
                                                               platform: str) -> None:
    require("tritonclient.grpc", "the serve extra (tritonclient) is not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    refused = run("repo", exported, "--out", tmp_path / "ov", "--backend", "openvino")  # cannot be told fp32
    assert refused.exit_code == 2 and "HINT_BF16" in refused.output and not (tmp_path / "ov").exists()
    result = run("repo", exported, "--out", tmp_path / "repo", "--backend", backend, "--max-batch", 8)
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / MODEL
    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (cfg.name, cfg.backend, cfg.platform, cfg.max_batch_size) == (MODEL, backend, platform, 8)
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, SMALL_IMG, SMALL_IMG])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("logits", [1000])]
    assert [g.kind for g in cfg.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    if backend == "openvino":
        assert cfg.default_model_filename == "model.onnx"
    model_file = model_dir / "1" / "model.onnx"
    assert sha256_of(model_file) == sha256_of(exported / f"{MODEL}.onnx")  # the fp32 ONNX, byte for byte
    assert not (model_dir / "1" / "model.py").exists()  # a native backend needs no python model


# --- 5. eval --runtime openvino on the int8 export ----------------------------------------------------------------

def _eval(exported: Path, images: Path, out: Path, runtime: str) -> dict:
    result = run("eval", exported / f"{MODEL}_deploy.pth", exported / f"{MODEL}.onnx", exported / f"{MODEL}.int8.onnx",
                 "--data", images, "--runtime", runtime, "--batch", 40, "--json-out", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def test_eval_runtime_openvino_on_int8_agrees_like_openvino_in_process(exported: Path, images: Path,
                                                                       tmp_path: Path) -> None:
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    import vanilladeploy as vd
    from vanilladeploy.images import load_image

    ov = _eval(exported, images, tmp_path / "ov.json", "openvino")
    ort = _eval(exported, images, tmp_path / "ort.json", "onnxruntime")
    assert ov["images"] == ort["images"] == 40
    reference, fp32, int8 = ov["artifacts"]
    assert (reference["kind"], fp32["kind"], int8["kind"]) == \
        ("torch deploy", "onnx fp32 (openvino)", "onnx int8 (openvino)")
    assert fp32["agreement_top1"] == 100.0 and fp32["mean_rel_l2"] <= 1e-5, fp32
    # int8 really ran quantized (not an fp32 fallback), with an error of the size ONNX Runtime's int8 has on the
    # same file (measured on a VNNI Zen 4: OpenVINO 5.44e-2, ONNX Runtime 5.41e-2; ONNX Runtime's int8 agreement
    # depends on the CPU's kernels, ~70 % without VNNI, so the two agreements are not compared with each other)
    ort_int8 = ort["artifacts"][2]
    assert ort_int8["kind"] == "onnx int8"
    assert 1e-3 < int8["mean_rel_l2"] < 0.5 and 1 / 3 < int8["mean_rel_l2"] / ort_int8["mean_rel_l2"] < 3, \
        (int8, ort_int8)
    # chance is 0.1 % (1000 classes): a broken int8 graph agrees on no image; measured 92.5 % here
    assert int8["agreement_top1"] >= 50.0, int8
    # the agreement eval reports is OpenVINO's own: the same images (preprocessed as the ONNX records; a .pth
    # records nothing), in one batch of 40, in process
    with vd.load(exported / f"{MODEL}_deploy.pth") as torch_model, \
            vd.load(exported / f"{MODEL}.int8.onnx", runtime="openvino") as openvino_int8:
        x = np.stack([load_image(p, openvino_int8.preprocess) for p in sorted(images.rglob("*.png"))])
        agree = torch_model.predict(x).argmax(1) == openvino_int8.predict(x).argmax(1)
    assert int8["agreement_top1"] == pytest.approx(100.0 * agree.mean()), (int8, agree)
