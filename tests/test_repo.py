"""vanilladeploy/triton/config.py + vanilladeploy/triton/repository.py: Triton model repositories from an
export, checked against Triton's own config schema (``ModelConfig``) and refused where Triton would refuse them at
load time."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import require

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.errors import CheckpointError, UsageError
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.triton import python_model
from vanilladeploy.triton.config import RepoOptions, parse_config
from vanilladeploy.triton.repository import write_repository

require("tritonclient.grpc", "the serve extra (tritonclient) is not installed", module_level=True)


@pytest.fixture(scope="module")
def export_dir(vanillanet_5_export: Callable[[int], Path]) -> Path:
    return vanillanet_5_export(32)  # shared with the serving tests; read only


@pytest.fixture(scope="module")
def static_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "v5-static"
    export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=32, static_batch=4))
    return out


def _config(model_dir: Path):
    return parse_config((model_dir / "config.pbtxt").read_text())


@pytest.mark.parametrize("backend", ["onnxruntime", "python"])
def test_config_parses_with_tritons_schema_and_matches_the_graph(export_dir: Path, tmp_path: Path,
                                                                  backend: str) -> None:
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend=backend, max_batch=16, instances=2,
                                                                         max_queue_delay_us=250))
    cfg = _config(result.model_dir)
    assert cfg.name == "vanillanet_5" and cfg.max_batch_size == 16
    assert (cfg.platform, cfg.backend) == (("onnxruntime_onnx", "onnxruntime") if backend == "onnxruntime"
                                           else ("", "python"))
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, 32, 32])]  # no batch dimension
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("logits", [1000])]
    assert cfg.input[0].data_type == cfg.output[0].data_type != 0  # TYPE_FP32
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(2, 2)]  # KIND_CPU
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 250
    files = sorted(str(p.relative_to(result.model_dir)) for p in result.model_dir.rglob("*") if p.is_file())
    expected = ["1/model.onnx", "config.pbtxt", "vanilladeploy.json", ".vanilladeploy"]
    assert files == sorted(expected + (["1/model.py"] if backend == "python" else []))


def test_native_openvino_backend_config(export_dir: Path, tmp_path: Path) -> None:
    """Told the precision verified: bf16 (HINT_BF16, the backend's only precision parameter)."""
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="openvino", max_batch=8,
                                                                         parameters={"precision": "bf16"}))
    cfg = _config(result.model_dir)  # Triton's own schema
    assert (cfg.backend, cfg.default_model_filename) == ("openvino", "model.onnx")
    assert cfg.parameters["PERFORMANCE_HINT"].string_value == "THROUGHPUT"
    assert cfg.parameters["HINT_BF16"].string_value == "YES"
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, 2)]  # KIND_CPU
    assert (result.model_dir / "1" / "model.onnx").is_file() and not (result.model_dir / "1" / "model.py").exists()
    with pytest.raises(UsageError, match="--kind cpu"):
        write_repository(export_dir, tmp_path / "gpu", RepoOptions(backend="openvino", kind="gpu"))


@pytest.mark.parametrize("precision", [None, "fp32", "int8"])
def test_the_native_openvino_backend_is_refused_what_it_cannot_be_told(export_dir: Path, tmp_path: Path,
                                                                       precision: str | None) -> None:
    """It has no fp32 parameter, and on a native-bf16 CPU OpenVINO's default is bf16: refused, nothing written."""
    parameters = {} if precision is None else {"precision": precision}
    with pytest.raises(UsageError, match=f"can be told bf16 .* but not fp32.*this {precision or 'fp32'} artifact"):
        write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="openvino", parameters=parameters))
    assert not (tmp_path / "repo").exists()


def test_the_python_backend_records_its_runtime(export_dir: Path, tmp_path: Path) -> None:
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="python",
                                                                         parameters={"runtime": "openvino"}))
    assert _config(result.model_dir).parameters["runtime"].string_value == "openvino"
    with pytest.raises(UsageError, match="--backend python"):
        write_repository(export_dir, tmp_path / "x", RepoOptions(backend="onnxruntime",
                                                                 parameters={"runtime": "openvino"}))


def test_model_file_matches_the_export_sha256(export_dir: Path, tmp_path: Path) -> None:
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="python"))
    report = json.loads((export_dir / "vanillanet_5.report.json").read_text())
    manifest = json.loads((result.model_dir / "vanilladeploy.json").read_text())
    exported = report["artifacts"]["vanillanet_5.onnx"]["sha256"]
    assert sha256_of(result.model_dir / "1" / "model.onnx") == exported == manifest["files"]["1/model.onnx"]
    assert manifest["source"]["sha256"] == exported
    for name, digest in manifest["files"].items():
        assert sha256_of(result.model_dir / name) == digest


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "python"])
def test_every_config_records_the_sha256_of_the_file_it_serves(export_dir: Path, tmp_path: Path,
                                                               backend: str) -> None:
    told = {"precision": "bf16"} if backend == "openvino" else {}  # the only precision it can be told
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend=backend, parameters=told))
    parameters = {k: v.string_value for k, v in _config(result.model_dir).parameters.items()}
    assert parameters["artifact_sha256"] == sha256_of(result.model_dir / "1" / "model.onnx")
    assert "onnx_sha256" not in parameters  # the served file is the ONNX


def test_an_engine_config_records_the_engine_and_the_onnx_it_was_built_from(export_dir: Path,
                                                                           tmp_path: Path) -> None:
    engine = _engine_beside(export_dir, tmp_path, profile_max=32)
    result = write_repository(engine, tmp_path / "repo", RepoOptions(kind="gpu", max_batch=32))
    parameters = {k: v.string_value for k, v in _config(result.model_dir).parameters.items()}
    assert parameters == {"artifact_sha256": sha256_of(result.model_dir / "1" / "model.sm90.plan"),
                          "onnx_sha256": sha256_of(export_dir / "vanillanet_5.onnx")}


def test_zero_max_batch_keeps_the_batch_dimension(static_export: Path, tmp_path: Path) -> None:
    result = write_repository(static_export, tmp_path / "repo", RepoOptions(max_batch=0))
    cfg = _config(result.model_dir)
    assert cfg.max_batch_size == 0 and list(cfg.input[0].dims) == [4, 3, 32, 32]
    assert not cfg.HasField("dynamic_batching")  # Triton refuses dynamic batching without max_batch_size


def test_labels_file(export_dir: Path, tmp_path: Path) -> None:
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(f"class {i}" for i in range(1000)) + "\n")
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(labels=str(labels)))
    assert _config(result.model_dir).output[0].label_filename == "labels.txt"
    assert (result.model_dir / "labels.txt").read_text().splitlines()[999] == "class 999"


def _engine_beside(export_dir: Path, tmp_path: Path, profile_max: int) -> Path:
    """An engine file with the sidecar `export --trt` writes (data, not a fake TensorRT: nothing runs it)."""
    directory = tmp_path / "engine"
    directory.mkdir()
    (directory / "vanillanet_5.onnx").write_bytes((export_dir / "vanillanet_5.onnx").read_bytes())
    engine = directory / "vanillanet_5.fp16.engine"
    engine.write_bytes(b"serialized plan bytes")
    sidecar = {"tensorrt_version": "10.13.0", "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
               "precision": "fp16", "profile": {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32],
                                                "max": [profile_max, 3, 32, 32]},
               "onnx": {"name": "vanillanet_5.onnx", "sha256": "x"}}
    (directory / "vanillanet_5.fp16.engine.json").write_text(json.dumps(sidecar))
    return engine


def test_engine_config_is_tied_to_its_gpu(export_dir: Path, tmp_path: Path) -> None:
    engine = _engine_beside(export_dir, tmp_path, profile_max=32)
    result = write_repository(engine, tmp_path / "repo", RepoOptions(kind="gpu", max_batch=32))
    cfg = _config(result.model_dir)
    assert (cfg.platform, cfg.backend, result.backend) == ("tensorrt_plan", "tensorrt", "tensorrt")
    assert dict(cfg.cc_model_filenames) == {"9.0": "model.sm90.plan"}  # no model.plan: another GPU refuses it
    assert (result.model_dir / "1" / "model.sm90.plan").read_bytes() == b"serialized plan bytes"
    assert not (result.model_dir / "1" / "model.plan").exists()


@pytest.mark.parametrize(("case", "message"), [
    ("fixed batch", "batch dimension is fixed (4)"),
    ("engine profile", "allows batches up to 8"),
    ("tensorrt for onnx", "needs a TensorRT engine"),
    ("tensorrt on cpu", "pass --kind gpu"),
    ("label count", "3 class names, but the model has 1000"),
    ("no report", "no <variant>.report.json"),
    ("float16 I/O", "tensor 'input' is float16; vanilladeploy serves float32 I/O"),
])
def test_what_triton_would_refuse_is_refused_and_nothing_written(case: str, message: str, export_dir: Path,
                                                                  static_export: Path, tmp_path: Path) -> None:
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    (tmp_path / "empty").mkdir()
    source, opts = {
        "fixed batch": (static_export, RepoOptions()),
        "engine profile": (lambda: _engine_beside(export_dir, tmp_path, profile_max=8), RepoOptions(kind="gpu")),
        "tensorrt for onnx": (export_dir / "vanillanet_5.onnx", RepoOptions(backend="tensorrt", kind="gpu")),
        "tensorrt on cpu": (lambda: _engine_beside(export_dir, tmp_path, profile_max=32), RepoOptions(kind="cpu")),
        "label count": (export_dir, RepoOptions(labels=str(labels))),
        "no report": (tmp_path / "empty", RepoOptions()),
        "float16 I/O": (lambda: _float16_onnx(tmp_path / "half.onnx"), RepoOptions()),
    }[case]
    source = source() if callable(source) else source
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_repository(source, tmp_path / "repo", opts)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_rewrite_replaces_the_model_and_leaves_siblings(export_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    sibling = repo / "resnet50" / "config.pbtxt"
    sibling.parent.mkdir(parents=True)
    sibling.write_text('name: "resnet50"\n')
    write_repository(export_dir, repo, RepoOptions(backend="python"))
    write_repository(export_dir, repo, RepoOptions(backend="onnxruntime", max_batch=8))
    assert not (repo / "vanillanet_5" / "1" / "model.py").exists()  # the whole model directory was replaced
    assert _config(repo / "vanillanet_5").max_batch_size == 8
    assert sibling.read_text() == 'name: "resnet50"\n'
    assert sorted(p.name for p in repo.iterdir()) == ["resnet50", "vanillanet_5"]  # no staging leftovers


def test_a_modified_model_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "export"
    export_checkpoint("vanillanet_5", ExportOptions(out_dir=out, img_size=32))
    import onnx

    model = onnx.load(out / "vanillanet_5.onnx")
    model.doc_string = "edited after the export"
    onnx.save(model, out / "vanillanet_5.onnx")
    with pytest.raises(CheckpointError, match="sha256 differs"):
        write_repository(out, tmp_path / "repo", RepoOptions())


def _float16_onnx(path: Path) -> Path:
    """A one-node ONNX whose input and output are float16 (an fp16 export that did not keep float32 I/O)."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["logits"])], "half",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT16, ["N", 10])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["N", 10])])
    onnx.save(helper.make_model(graph), path)
    return path


def test_an_engine_gets_gpu_instances_by_default(export_dir: Path, tmp_path: Path) -> None:
    engine = _engine_beside(export_dir, tmp_path, profile_max=32)
    result = write_repository(engine, tmp_path / "repo", RepoOptions())  # kind None: gpu for tensorrt
    assert [g.kind for g in _config(result.model_dir).instance_group] == [1]  # KIND_GPU
    assert json.loads((result.model_dir / "vanilladeploy.json").read_text())["options"]["kind"] == "gpu"
    onnx_result = write_repository(export_dir, tmp_path / "repo2", RepoOptions())  # cpu otherwise
    assert [g.kind for g in _config(onnx_result.model_dir).instance_group] == [2]  # KIND_CPU


@pytest.mark.parametrize("name", ["../escaped", "", ".", "..", "a/b", ".hidden", "-flag", "two words", "x" * 129],
                         ids=lambda name: repr(name) if len(name) < 20 else f"{len(name)} chars")
def test_a_model_name_must_be_one_safe_directory(export_dir: Path, tmp_path: Path, name: str) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(UsageError, match=r"^--name .*: a Triton model name is one directory name") as raised:
        write_repository(export_dir, repo, RepoOptions(name=name))
    assert "\n" not in str(raised.value)
    assert not any(repo.iterdir()) and sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # nothing escaped


def test_a_safe_custom_name_names_the_directory_and_the_config(export_dir: Path, tmp_path: Path) -> None:
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(name="VanillaNet-5_v2.1"))
    assert result.model_dir == tmp_path / "repo" / "VanillaNet-5_v2.1"
    assert _config(result.model_dir).name == "VanillaNet-5_v2.1"


def _broken_source(case: str, export_dir: Path, tmp_path: Path) -> tuple[Path, RepoOptions, str]:
    """A damaged copy of an export (or of an engine directory); the file the error must name."""
    directory = tmp_path / "broken"
    shutil.copytree(export_dir, directory)
    report = directory / "vanillanet_5.report.json"
    if case == "onnx missing":
        (directory / "vanillanet_5.onnx").unlink()
        return directory, RepoOptions(), "vanillanet_5.onnx: missing, though vanillanet_5.report.json names it"
    if case == "report unparsable":
        report.write_text('{"architecture": {"variant": "vanillanet_5"')  # cut short
        return directory, RepoOptions(), "vanillanet_5.report.json: not readable JSON"
    if case == "report incomplete":
        report.write_text(json.dumps({"artifacts": {}}))
        return directory, RepoOptions(), "vanillanet_5.report.json: incomplete or malformed (KeyError: 'architecture')"
    engine = _engine_beside(export_dir, tmp_path, profile_max=32)
    sidecar = engine.with_name(engine.name + ".json")
    if case == "sidecar unparsable":
        sidecar.write_text("not json")
        return engine, RepoOptions(), "vanillanet_5.fp16.engine.json: not readable JSON"
    data = json.loads(sidecar.read_text())
    del data["profile" if case == "sidecar without profile" else "onnx"]
    sidecar.write_text(json.dumps(data))
    return engine, RepoOptions(), "vanillanet_5.fp16.engine.json: incomplete or malformed"


@pytest.mark.parametrize("case", ["onnx missing", "report unparsable", "report incomplete", "sidecar unparsable",
                                  "sidecar without profile", "sidecar without onnx"])
def test_a_damaged_source_is_a_usage_error_naming_the_file(case: str, export_dir: Path, tmp_path: Path) -> None:
    source, opts, message = _broken_source(case, export_dir, tmp_path)
    with pytest.raises(UsageError) as raised:
        write_repository(source, tmp_path / "repo", opts)
    text = str(raised.value)
    assert type(raised.value) is UsageError and raised.value.exit_code == 2
    assert message in text and "export again" in text and "\n" not in text, text
    assert not (tmp_path / "repo").exists()


# --- the python backend's model.py: its pure helpers (the rest runs inside Triton, tests/test_serve.py) -------------

@pytest.mark.parametrize(("dims", "max_batch", "good", "bad"), [
    ([3, 32, 32], 8, [(1, 3, 32, 32), (5, 3, 32, 32)], [(3, 32, 32), (1, 3, 31, 32), (1, 1, 3, 32, 32)]),
    ([4, 3, 32, 32], 0, [(4, 3, 32, 32)], [(1, 3, 32, 32), (3, 32, 32), (1, 4, 3, 32, 32)]),  # dims = whole shape
    ([-1, 3, 32, 32], 0, [(1, 3, 32, 32), (7, 3, 32, 32)], [(1, 3, 32, 33)]),
])
def test_python_model_checks_the_full_shape(dims: list[int], max_batch: int, good: list[tuple[int, ...]],
                                            bad: list[tuple[int, ...]]) -> None:
    shape = python_model.expected_shape(dims, max_batch)
    for s in good:
        assert python_model.shape_problem("input", np.zeros(s, np.float32), shape) is None, s
    for s in bad:
        assert "must have shape" in python_model.shape_problem("input", np.zeros(s, np.float32), shape), s
    wrong_dtype = python_model.shape_problem("input", np.zeros(good[0], np.float64), shape)
    assert wrong_dtype == "input 'input' must be FP32, got float64"


def test_python_model_runs_on_cuda_only_for_a_gpu_instance_that_has_it() -> None:
    import onnxruntime as ort

    known = ort.get_all_providers()  # onnxruntime's own provider names, in its priority order
    gpu_build = [p for p in known if p in ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                                           "CPUExecutionProvider")]  # what onnxruntime-gpu reports available
    here = ort.get_available_providers()  # this machine's real answer (the CPU wheel: Azure + CPU)
    assert len(gpu_build) == 3 and "CPUExecutionProvider" in here
    assert python_model.providers("GPU", gpu_build) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert python_model.providers("CPU", gpu_build) == ["CPUExecutionProvider"]
    assert python_model.providers(None, gpu_build) == ["CPUExecutionProvider"]
    expected = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in here else \
        ["CPUExecutionProvider"]
    assert python_model.providers("GPU", here) == expected


def test_repo_through_the_cli_writes_what_it_prints(export_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vanilladeploy.cli import app

    result = CliRunner().invoke(app, ["repo", str(export_dir), "--out", str(tmp_path / "repo"), "--backend",
                                      "python", "--max-batch", "8", "--labels", "imagenet"])
    assert result.exit_code == 0, result.output
    model_dir = tmp_path / "repo" / "vanillanet_5"
    cfg = _config(model_dir)
    assert (cfg.backend, cfg.max_batch_size, cfg.output[0].label_filename) == ("python", 8, "labels.txt")
    assert len((model_dir / "labels.txt").read_text().splitlines()) == 1000
    assert f"wrote {model_dir / 'config.pbtxt'}" in result.output.replace("\n", "")
    refused = CliRunner().invoke(app, ["repo", str(export_dir), "--out", str(tmp_path / "repo2"), "--backend",
                                       "tensorrt"])
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1, refused.output
    assert not (tmp_path / "repo2").exists()


# --- how the python backend runs the model: recorded in the config, read by model.py -------------------------------

def test_the_config_records_instances_threads_and_batching(export_dir: Path, tmp_path: Path) -> None:
    from vanilladeploy.triton.config import PYTHON_PARAMETERS

    chosen = RepoOptions()
    for runtime in ("onnxruntime", "openvino"):
        result = write_repository(export_dir, tmp_path / runtime, RepoOptions(backend="python",
                                                                              parameters={"runtime": runtime}))
        cfg = _config(result.model_dir)
        assert [(g.count, g.kind) for g in cfg.instance_group] == [(chosen.instances, 2)]  # KIND_CPU
        assert cfg.HasField("dynamic_batching")  # present even where the chosen delay is 0
        assert cfg.dynamic_batching.max_queue_delay_microseconds == chosen.max_queue_delay_us
        assert tuple(cfg.dynamic_batching.preferred_batch_size) == chosen.preferred_batch_sizes
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params == {"runtime": runtime, **PYTHON_PARAMETERS[runtime],
                          "artifact_sha256": sha256_of(result.model_dir / "1" / "model.onnx")}
    assert PYTHON_PARAMETERS["onnxruntime"]["ort_spinning"] == "0"  # idle ORT threads leave the cores to Triton
    assert PYTHON_PARAMETERS["openvino"]["openvino_hint"] in python_model.OPENVINO_HINTS


def test_what_is_asked_for_wins_over_the_measured_defaults(export_dir: Path, tmp_path: Path) -> None:
    asked = {"runtime": "openvino", "openvino_hint": "THROUGHPUT", "precision": "int8"}
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(
        backend="python", instances=2, max_batch=16, max_queue_delay_us=0, preferred_batch_sizes=(4, 8),
        parameters=asked))
    cfg = _config(result.model_dir)
    assert {k: cfg.parameters[k].string_value for k in asked} == asked
    assert [g.count for g in cfg.instance_group] == [2]
    assert (cfg.dynamic_batching.max_queue_delay_microseconds, list(cfg.dynamic_batching.preferred_batch_size)) == (
        0, [4, 8])


@pytest.mark.parametrize(("opts", "message"), [
    (RepoOptions(backend="python", max_batch=8, preferred_batch_sizes=(4, 16)), "each must be 1..--max-batch"),
    (RepoOptions(backend="python", parameters={"runtime": "openvino", "openvino_hint": "FAST"}), "openvino_hint"),
    (RepoOptions(backend="python", parameters={"runtime": "openvino", "precision": "fp16"}), "precision 'fp16'"),
    (RepoOptions(backend="python", parameters={"openvino_hint": "THROUGHPUT"}), "add --runtime openvino"),  # API too
])
def test_settings_model_py_would_refuse_are_refused_before_writing(export_dir: Path, tmp_path: Path,
                                                                   opts: RepoOptions, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        write_repository(export_dir, tmp_path / "repo", opts)
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())


def test_python_model_sets_onnxruntime_threads_and_spinning(export_dir: Path) -> None:
    assert python_model.ort_settings({"ort_threads": "2", "ort_spinning": "0"}, {}) == {
        "intra_op_num_threads": 2, "allow_spinning": False}
    assert python_model.ort_settings({}, {}) == {"intra_op_num_threads": 0, "allow_spinning": True}  # ORT's own
    assert python_model.ort_settings({"ort_threads": "2"}, {"VANILLADEPLOY_ORT_THREADS": "1"})[
        "intra_op_num_threads"] == 1
    session = python_model.onnxruntime_session(str(export_dir / "vanillanet_5.onnx"),
                                               {"ort_threads": "1", "ort_spinning": "0"}, {})
    xs = [np.random.default_rng(i).standard_normal((n, 3, 32, 32), dtype=np.float32) for i, n in enumerate([1, 3])]
    assert [y.shape for y in session("input", xs)] == [(1, 1000), (3, 1000)]


def _openvino_flags_allow_bf16() -> bool:
    from vanilladeploy.machine import BF16_FLAGS, cpu_flags

    return any(f in cpu_flags() for f in BF16_FLAGS)


@pytest.mark.parametrize("precision", ["fp32", "int8", "bf16"])
def test_openvino_compiles_in_the_precision_it_states(export_dir: Path, precision: str) -> None:
    ov = require("openvino", "OpenVINO is not installed (the test extra has it)")
    if precision == "bf16" and not _openvino_flags_allow_bf16():
        pytest.skip("this CPU has neither avx512_bf16 nor amx_bf16: OpenVINO cannot compute in bf16 here")
    session = python_model.openvino_session(str(export_dir / "vanillanet_5.onnx"), {"precision": precision})
    wanted = "bf16" if precision == "bf16" else "f32"  # int8 is the QDQ graph's; OpenVINO computes the rest in f32
    assert session.config["INFERENCE_PRECISION_HINT"] == wanted  # stated, never left to the plugin's default
    reported = session.compiled.get_property("INFERENCE_PRECISION_HINT")
    assert reported == (ov.Type.bf16 if precision == "bf16" else ov.Type.f32) and session.precision == wanted


def test_a_compiled_model_in_another_precision_is_refused() -> None:
    ov = require("openvino", "OpenVINO is not installed (the test extra has it)")

    class Compiled:  # what OpenVINO's compiled model answers when its plugin chose bf16 on its own
        def get_property(self, name: str) -> object:
            return ov.Type.bf16

    with pytest.raises(RuntimeError, match="compiled the model in bf16, not the f32 asked for"):
        python_model.compiled_precision(Compiled(), "f32")


def test_openvino_latency_and_throughput_answer_each_request_with_its_own_rows(export_dir: Path) -> None:
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    from vanilladeploy.runtimes.runners import onnx_runner
    from vanilladeploy.verify import compare

    path = export_dir / "vanillanet_5.onnx"
    xs = [np.random.default_rng(i).standard_normal((n, 3, 32, 32), dtype=np.float32) for i, n in enumerate([1, 2, 1])]
    with onnx_runner(path, "openvino") as runner:
        expected = [runner.infer(x) for x in xs]
    for hint in python_model.OPENVINO_HINTS:
        session = python_model.openvino_session(str(path), {"openvino_hint": hint})
        assert session.config["PERFORMANCE_HINT"] == hint
        outputs = session("input", xs)
        assert [y.shape for y in outputs] == [(1, 1000), (2, 1000), (1, 1000)]
        for y, e in zip(outputs, expected):
            assert compare(y, e, tolerance=1e-5), hint


@pytest.mark.parametrize(("args", "code", "hint"), [
    (["--runtime", "openvino", "--openvino-hint", "throughput"], 0, "THROUGHPUT"),
    (["--runtime", "openvino"], 0, "LATENCY"),  # the default, written out in full
    (["--openvino-hint", "THROUGHPUT"], 2, None),  # a hint for a runtime that was not asked for
    (["--runtime", "openvino", "--openvino-hint", "fast"], 2, None),
])
def test_the_openvino_hint_is_chosen_on_the_command_line(export_dir: Path, tmp_path: Path, args: list[str],
                                                         code: int, hint: str | None) -> None:
    from typer.testing import CliRunner

    from vanilladeploy.cli import app

    result = CliRunner().invoke(app, ["repo", str(export_dir), "--out", str(tmp_path / "repo"), "--backend",
                                      "python", *args])
    assert result.exit_code == code, result.output
    if hint is None:
        assert "error:" in result.output and not (tmp_path / "repo").exists()
    else:
        (config,) = (tmp_path / "repo").glob("*/config.pbtxt")
        assert parse_config(config.read_text()).parameters["openvino_hint"].string_value == hint
