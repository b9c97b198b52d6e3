"""vanilladeploy/serving/client.py through ``serve-bench --url`` and ``eval --url``: a REAL Triton server, started by
the test with the library and then addressed only by its URL, as a KServe endpoint would be. Every served answer is
checked against the local artifact; eval through the server equals eval in process. Bounded: a few requests per
row, every client call with a timeout, the server stopped by its context manager."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import official_checkpoint, random_model
from PIL import Image
from triton_helpers import require_triton
from typer.testing import CliRunner

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.cli import app
from vanilladeploy.errors import UsageError
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.serving.client import Endpoint, TritonRunner, describe_served, fitted_runner, parse_endpoint
from vanilladeploy.serving.serve_bench import IN_PROCESS, SERVED, free_ports, run_serve_bench
from vanilladeploy.serving.server import ServerError, TritonServer
from vanilladeploy.triton.config import IDENTITY_PARAMETERS, RepoOptions, config_text, parse_config
from vanilladeploy.triton.repository import write_repository
from vanilladeploy.verify import compare

require_triton()
pytestmark = [pytest.mark.triton]
MODEL, OTHER, PIXELS = "vanillanet_5", "vanillanet_5_at_48", "vanillanet_5_pixels"
WRONG, UNSAID = "vanillanet_5_other_weights", "vanillanet_5_unsaid"
"""VanillaNet-5 at 48 px with other weights (same shapes as OTHER): recording its own sha256, and with the record
removed from its config (a server that does not say which file it serves)."""


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory, vanillanet_5_export: Callable[[int], Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("url")
    export_checkpoint(MODEL, ExportOptions(out_dir=root / "pixels", img_size=48, input_dtype="uint8"))
    other = root / "other-weights.pth"
    torch.save(official_checkpoint(random_model(MODEL, seed=5, num_classes=1000).state_dict(), variant=MODEL), other)
    export_checkpoint(str(other), ExportOptions(out_dir=root / "other", img_size=48))
    return {"v5": vanillanet_5_export(32), "v5_48": vanillanet_5_export(48), "pixels": root / "pixels",
            "other": root / "other", "images": _images(root / "images")}


def _images(root: Path) -> Path:
    """Six labelled images of several sizes (JPEG and PNG)."""
    rng = np.random.default_rng(7)
    for c in range(2):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(3):
            h, w = rng.integers(40, 120, 2)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def server(exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_repository(exports["v5"], repo, RepoOptions(backend="python", max_batch=4))
    write_repository(exports["v5_48"], repo, RepoOptions(backend="python", max_batch=4, name=OTHER))
    write_repository(exports["pixels"], repo, RepoOptions(backend="python", max_batch=4, name=PIXELS), images=True)
    write_repository(exports["other"], repo, RepoOptions(backend="python", max_batch=4, name=WRONG))
    unsaid = write_repository(exports["other"], repo, RepoOptions(backend="python", max_batch=4, name=UNSAID))
    cfg = parse_config(unsaid.config_text)
    for key in IDENTITY_PARAMETERS:
        if key in cfg.parameters:
            del cfg.parameters[key]
    assert "artifact_sha256" not in config_text(cfg)
    (unsaid.model_dir / "config.pbtxt").write_text(config_text(cfg), encoding="utf-8")
    with TritonServer(repo, free_ports(), start_timeout_s=120) as s:
        yield s


def _address(url: str) -> str:
    return url.removeprefix("http://")


# --- the endpoint and what the server says it serves ---------------------------------------------------------------

@pytest.mark.parametrize(("url", "protocol", "expected"), [
    ("127.0.0.1:8000", None, Endpoint("127.0.0.1:8000", "http")),
    ("grpc://host:8001", None, Endpoint("host:8001", "grpc")),
    ("https://example.org:443/", None, Endpoint("example.org:443", "http", ssl=True)),
    ("host:8001", "grpc", Endpoint("host:8001", "grpc")),
])
def test_urls_name_an_address_and_one_protocol(url: str, protocol: str | None, expected: Endpoint) -> None:
    assert parse_endpoint(url, protocol) == expected


@pytest.mark.parametrize(("url", "protocol", "says"), [
    ("localhost", None, "HOST:PORT"), ("ftp://h:1", None, "scheme"), ("h:port", None, "HOST:PORT"),
    ("grpc://h:1", "http", "give one of them"), ("h:1", "both", "one protocol"), ("h:1/v2/models", None, "HOST:PORT"),
])
def test_bad_urls_are_refused_with_the_fix(url: str, protocol: str | None, says: str) -> None:
    with pytest.raises(UsageError, match=says):
        parse_endpoint(url, protocol)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_server_describes_its_model_and_answers_like_in_process(server: TritonServer, exports: dict[str, Path],
                                                                   protocol: str) -> None:
    url = server.http_url if protocol == "http" else server.grpc_url
    served = describe_served(parse_endpoint(url, protocol), MODEL, timeout_s=10)
    assert (served.input_name, served.datatype, served.shape, served.output_name, served.min_batch,
            served.max_batch) == ("input", "FP32", (-1, 3, 32, 32), "logits", 1, 4)
    x = np.random.default_rng(3).standard_normal((6, 3, 32, 32), dtype=np.float32)  # 6 > max_batch: chunked
    with fitted_runner(served, timeout_s=30) as runner, OnnxRuntimeRunner(exports["v5"] / f"{MODEL}.onnx") as local:
        y, reference = runner.infer(x), local.infer(x)
    assert y.shape == (6, 1000) and compare(y, reference), compare(y, reference)


def test_the_only_ready_model_is_the_default_and_two_need_a_name(server: TritonServer) -> None:
    with pytest.raises(UsageError, match=rf"7 ready models \({MODEL}, {OTHER}, {WRONG}, {PIXELS}, .*\).*--model"):
        describe_served(parse_endpoint(server.http_url), None, timeout_s=10)
    with pytest.raises(ServerError, match="'nope' is not ready"):
        describe_served(parse_endpoint(server.http_url), "nope", timeout_s=10)


def test_nothing_listening_is_one_server_error() -> None:
    port = free_ports().http
    with pytest.raises(ServerError, match=f"127.0.0.1:{port}.*failed.*is a KServe v2 / Triton server listening"):
        describe_served(parse_endpoint(f"127.0.0.1:{port}"), MODEL, timeout_s=5)


def test_infer_before_activate_is_a_programming_error(server: TritonServer) -> None:
    served = describe_served(parse_endpoint(server.http_url), MODEL, timeout_s=10)
    with pytest.raises(RuntimeError, match="before activate"):
        TritonRunner(served).infer(np.zeros((1, 3, 32, 32), np.float32))


# --- serve-bench --url -----------------------------------------------------------------------------------------------

def test_serve_bench_url_measures_the_server_and_checks_every_answer(server: TritonServer, exports: dict[str, Path],
                                                                     tmp_path: Path) -> None:
    out = tmp_path / "remote.json"
    result = CliRunner().invoke(app, ["serve-bench", str(exports["v5"]), "--url", _address(server.http_url),
                                      "--model", MODEL, "--concurrency", "1,2", "--requests", "6",
                                      "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    records, config = document["records"], document["config"]
    served = [r for r in records if SERVED in r["roles"]]
    assert [r["concurrency"] for r in served] == [1, 2] and [r["backend"] for r in served] == ["remote-http"] * 2
    assert all(r["errors"] == 0 and r["requests"] == 6 and r["throughput_img_s"] > 0 for r in served)
    assert all(IN_PROCESS in r["roles"] for r in records if r not in served)  # ONNX Runtime: one local row
    for r in served:
        local = next(x for x in records if x["concurrency"] == r["concurrency"] and IN_PROCESS in x["roles"])
        assert r["vs_in_process"] == round(r["throughput_img_s"] / local["throughput_img_s"], 3)
    assert config["url"] == server.http_url and config["served"]["model"] == MODEL
    assert config["source_sha256"] == sha256_of(exports["v5"] / f"{MODEL}.onnx")  # what `deploy --bench` matches
    assert config["served"]["server_version"] == config["triton"] != "?"


def test_serve_bench_url_over_grpc_counts_a_wrong_artifact_as_errors(server: TritonServer,
                                                                     exports: dict[str, Path]) -> None:
    """The server's answers are checked against SOURCE: a model at 48 px answering for a 32 px export is refused
    before any load, by the file its config records, or by its shape where it records none; over gRPC the right one
    passes."""
    url = "grpc://" + server.grpc_url.removeprefix("grpc://")
    with pytest.raises(UsageError, match=f"serves {OTHER} made from another file.*not the same artifact"):
        run_serve_bench(exports["v5"], url=url, model=OTHER, concurrency=(1,), requests=2)
    with pytest.raises(UsageError, match=f"serves {UNSAID} taking FP32 \\[-1, 3, 48, 48\\].*not the same artifact"):
        run_serve_bench(exports["v5"], url=url, model=UNSAID, concurrency=(1,), requests=2)
    result = run_serve_bench(exports["v5_48"], url=url, model=OTHER, concurrency=(2,), requests=4)
    (served,) = [r for r in result.records if SERVED in r["roles"]]
    assert served["backend"] == "remote-grpc" and served["errors"] == 0 and served["batch"] == 1


@pytest.mark.parametrize(("extra", "says"), [
    (["--protocol", "both"], "one protocol"),
    (["--batch", "5"], "at most 4 images per request"),
])
def test_serve_bench_url_refusals_exit_2_with_one_line(server: TritonServer, exports: dict[str, Path],
                                                       extra: list[str], says: str) -> None:
    result = CliRunner().invoke(app, ["serve-bench", str(exports["v5"]), "--url", _address(server.http_url),
                                      "--model", MODEL, "--requests", "1", *extra])
    assert result.exit_code == 2 and says in result.output, result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output


def test_serve_bench_url_refuses_a_model_made_from_another_file_before_any_load(server: TritonServer,
                                                                               exports: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    out = tmp_path / "remote.json"
    result = CliRunner().invoke(app, ["serve-bench", str(exports["v5_48"]), "--url", _address(server.grpc_url),
                                      "--protocol", "grpc", "--model", WRONG, "--requests", "2",
                                      "--json-out", str(out)])
    mine, theirs = sha256_of(exports["v5_48"] / f"{MODEL}.onnx"), sha256_of(exports["other"] / f"{MODEL}.onnx")
    assert result.exit_code == 2 and mine in result.output and theirs in result.output, result.output
    assert "not the same artifact" in result.output and not out.exists()
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1, result.output


def test_serve_bench_url_exits_1_when_every_answer_is_wrong(server: TritonServer, exports: dict[str, Path],
                                                            tmp_path: Path) -> None:
    """Other weights behind a config that does not say which file it is: measured, every answer checked, and the
    command fails naming the count and the worst error (the JSON and the table are still written)."""
    out = tmp_path / "remote.json"
    result = CliRunner().invoke(app, ["serve-bench", str(exports["v5_48"]), "--url", _address(server.grpc_url),
                                      "--protocol", "grpc", "--model", UNSAID, "--concurrency", "1,2",
                                      "--requests", "4", "--json-out", str(out)])
    print(f"\n[serve-bench --url, other weights behind a config that does not say] exit {result.exit_code}:\n"
          f"{result.output}")
    assert result.exit_code == 1, result.output
    assert "8 wrong answers (worst rel. L2" in result.output and "of 16 requests" in result.output, result.output
    assert "does not record which file it serves" in result.output, result.output
    served = [r for r in json.loads(out.read_text())["records"] if SERVED in r["roles"]]
    assert [(r["errors"], r["wrong_answers"]) for r in served] == [(4, 4), (4, 4)]
    assert all(r["worst_rel_l2"] > 0.1 and r["throughput_img_s"] == 0 for r in served), served


def test_model_without_url_is_refused(exports: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="--model names a model on the server at --url"):
        run_serve_bench(exports["v5"], model=MODEL, concurrency=(1,), requests=1)


# --- eval --url --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["http://", "grpc://"])
def test_eval_through_the_server_equals_eval_in_process(server: TritonServer, exports: dict[str, Path],
                                                        tmp_path: Path, scheme: str) -> None:
    port = server.http_url if scheme == "http://" else server.grpc_url
    url = scheme + port.removeprefix("http://").removeprefix("grpc://")
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(exports["v5_48"] / f"{MODEL}.onnx"), "--data",
                                      str(exports["images"]), "--url", url, "--model", OTHER, "--batch", "5",
                                      "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    local, remote = json.loads(out.read_text())["artifacts"]
    assert remote["name"] == f"{OTHER} @ {url}" and remote["kind"] == f"served ({scheme[:-3]})"
    assert remote["agreement_top1"] == 100.0 and remote["mean_rel_l2"] <= 1e-5
    assert (remote["top1"], remote["top5"]) == (local["top1"], local["top5"])


def test_eval_url_refuses_a_model_made_from_none_of_the_files_given(server: TritonServer,
                                                                   exports: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["eval", str(exports["v5_48"] / f"{MODEL}.onnx"), "--data",
                                      str(exports["images"]), "--url", _address(server.http_url), "--model", WRONG])
    assert result.exit_code == 2 and sha256_of(exports["other"] / f"{MODEL}.onnx") in result.output, result.output


@pytest.mark.parametrize(("model", "gates", "code"), [
    (UNSAID, ["--min-agreement", "90"], 1),
    (UNSAID, ["--max-rel-l2", "1e-2"], 1),
    (UNSAID, [], 0),  # no gate asked for: reported, not judged
    (OTHER, ["--min-agreement", "100", "--max-rel-l2", "1e-5"], 0),
])
def test_eval_url_gates_exit_1_when_the_served_model_disagrees(server: TritonServer, exports: dict[str, Path],
                                                               tmp_path: Path, model: str, gates: list[str],
                                                               code: int) -> None:
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(exports["v5_48"] / f"{MODEL}.onnx"), "--data",
                                      str(exports["images"]), "--url", _address(server.http_url), "--model", model,
                                      "--json-out", str(out), *gates])
    assert result.exit_code == code, result.output
    local, remote = json.loads(out.read_text())["artifacts"]
    said = "does not record which file" if model == UNSAID else f"the sha256 of {MODEL}.onnx"
    assert said in remote["identity"] and said in result.output.replace("\n", " "), (remote, result.output)
    if code:
        assert f"{model} @ " in result.output and "gate" in result.output, result.output


def test_eval_protocol_without_url_is_refused(exports: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["eval", str(exports["v5"] / f"{MODEL}.onnx"), "--data", str(exports["images"]),
                                      "--protocol", "grpc"])
    assert result.exit_code == 2 and "give --url" in result.output, result.output


# --- a model that takes uint8 pixels (export --input uint8) -----------------------------------------------------

def test_eval_url_of_a_pixels_model_equals_the_float_model_in_process(server: TritonServer, exports: dict[str, Path],
                                                                      tmp_path: Path) -> None:
    """The served UINT8 model gets the pixels, the local float model the normalized batch: the same answers. The
    pixels ONNX is given too: the file the server says it serves must be one of those evaluated."""
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", str(exports["v5_48"] / f"{MODEL}.onnx"),
                                      str(exports["pixels"] / f"{MODEL}.onnx"), "--data", str(exports["images"]),
                                      "--url", _address(server.http_url), "--model", PIXELS, "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    local, _, remote = json.loads(out.read_text())["artifacts"]
    assert remote["agreement_top1"] == 100.0 and remote["mean_rel_l2"] <= 1e-5, remote


def test_serve_bench_url_sends_pixels_to_a_pixels_model(server: TritonServer, exports: dict[str, Path]) -> None:
    """The float baseline beside it runs the same pixels normalized (its own answers checked against itself)."""
    result = run_serve_bench(exports["pixels"], url=server.http_url, model=PIXELS, concurrency=(2,), requests=4,
                             baseline=exports["v5_48"] / f"{MODEL}.onnx")
    assert [r["roles"] for r in result.records] == [[SERVED], [IN_PROCESS], ["baseline"]]
    assert all(r["errors"] == 0 for r in result.records), result.records
    assert result.config["served"]["datatype"] == "UINT8"


def test_an_image_ensemble_on_a_pixels_model_answers_like_the_float_model(server: TritonServer,
                                                                          exports: dict[str, Path]) -> None:
    import tritonclient.http as http

    import vanilladeploy as vd

    files = sorted(exports["images"].rglob("*.jpg"))[:2]
    client = http.InferenceServerClient(_address(server.http_url), network_timeout=30, connection_timeout=30)
    tensor = http.InferInput("image", [len(files), 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[f.read_bytes()] for f in files], dtype=object))
    served = client.infer(f"{PIXELS}_image", [tensor]).as_numpy("logits")
    with vd.load(exports["v5_48"] / f"{MODEL}.onnx") as model:
        local = model.predict([str(f) for f in files])
    assert compare(served, local, tolerance=1e-5), compare(served, local)
