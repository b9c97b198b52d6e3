"""vanilladeploy/cluster/plan.py, sizing.py, manifests.py and vanilladeploy/cli/deploy.py: the files a cluster
needs, through the real CLI. Every YAML written is read back into the libraries' own models (the kserve SDK's
``V1beta1InferenceService``, kubernetes' ``V1Deployment``, ``V1Service``, ``V2HorizontalPodAutoscaler``) and each
field we set is checked there; the repository's ``config.pbtxt`` is parsed with Triton's schema. No cluster exists
here: what a cluster would do with these files is not tested."""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import missing_in_ci, require
from typer.testing import CliRunner, Result

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.cli import app
from vanilladeploy.cluster.manifests import kserve_sdk
from vanilladeploy.errors import MissingDependencyError
from vanilladeploy.triton.config import parse_config

require("tritonclient.grpc", "the serve extra (tritonclient) is not installed", module_level=True)
kubernetes = require("kubernetes", "the deploy extra (kubernetes) is not installed", module_level=True)
yaml = require("yaml", "the deploy extra (pyyaml) is not installed", module_level=True)
# kserve is loaded as deploy loads it (kserve_sdk): `import kserve` would also load its gRPC protocol, whose protobuf
# symbols clash with tritonclient's in this process (see vanilladeploy/cluster/manifests.py).

IMAGE = "nvcr.io/nvidia/tritonserver"
runner = CliRunner()


def run(*args: object) -> Result:
    return runner.invoke(app, ["deploy", *(str(a) for a in args)])


def error_lines(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def export_dir(vanillanet_5_export: Callable[[int], Path]) -> Path:
    return vanillanet_5_export(32)  # shared with the serving tests; read only


@pytest.fixture(scope="module")
def onnx_sha256(export_dir: Path) -> str:
    return sha256_of(export_dir / "vanillanet_5.onnx")


class FakeResponse:
    """What an ApiClient deserializes: a response whose ``data`` is the JSON the API server would send."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.data = json.dumps(doc)


def read_yaml(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def k8s_deserialize(doc: dict[str, Any], klass: str) -> Any:
    """kubernetes' ApiClient.deserialize: it takes the response text and its content type since the client's
    generator changed (v37 here), a response object before."""
    client = kubernetes.client.ApiClient()
    if "content_type" in inspect.signature(client.deserialize).parameters:
        return client.deserialize(json.dumps(doc), klass, "application/json")
    return client.deserialize(FakeResponse(doc), klass)


def k8s_object(path: Path, klass: str) -> Any:
    """The file as the kubernetes model ``klass``; serialized again it is the file itself (no field was lost)."""
    obj = k8s_deserialize(read_yaml(path), klass)
    assert kubernetes.client.ApiClient().sanitize_for_serialization(obj) == read_yaml(path)
    return obj


@pytest.fixture
def inference_service() -> Any:
    """path → ``V1beta1InferenceService``, read by the kserve SDK's deserializer, its kubernetes subtrees
    (``metadata``; the model's ``resources``, ``securityContext``, ``volumeMounts``; the predictor's
    ``securityContext`` and ``volumes``) by kubernetes' own: the two generated clients spell container types
    differently (``dict(str, str)`` / ``Dict[str, str]``) and cannot read each other's models."""
    try:
        _, api_client = kserve_sdk()
    except MissingDependencyError as e:
        missing_in_ci(f"the deploy extra (kserve) is not installed: {e}")
    subtrees = {"model": {"resources": "V1ResourceRequirements", "security_context": "V1SecurityContext",
                          "volume_mounts": "List[V1VolumeMount]"},
                "predictor": {"security_context": "V1PodSecurityContext", "volumes": "List[V1Volume]"}}

    def read(path: Path) -> Any:
        doc = read_yaml(path)
        metadata, predictor = doc.pop("metadata"), doc["spec"]["predictor"]
        parts = {"model": predictor["model"], "predictor": predictor}
        popped = {(owner, attr): parts[owner].pop(_camel(attr)) for owner, fields in subtrees.items()
                  for attr in fields if _camel(attr) in parts[owner]}
        isvc = api_client().deserialize(FakeResponse(doc), "V1beta1InferenceService")
        isvc.metadata = k8s_deserialize(metadata, "V1ObjectMeta")
        owners = {"model": isvc.spec.predictor.model, "predictor": isvc.spec.predictor}
        for (owner, attr), value in popped.items():
            setattr(owners[owner], attr, k8s_deserialize(value, subtrees[owner][attr]))
        return isvc

    return read


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def model_config(out: Path) -> Any:
    return parse_config((out / "repository" / "vanillanet_5" / "config.pbtxt").read_text())


@pytest.mark.parametrize("mode", ["Standard", "RawDeployment"])
def test_the_inference_service_round_trips_through_the_kserve_models(export_dir: Path, onnx_sha256: str,
                                                                     tmp_path: Path, inference_service: Any,
                                                                     mode: str) -> None:
    out = tmp_path / "out"
    result = run(export_dir, "--out", out, "--kserve", "--storage-uri", "gs://bucket/v5", "--replicas", "2:5",
                 "--triton-version", "24.12", "--kserve-mode", mode)
    assert result.exit_code == 0, result.output
    isvc = inference_service(out / "inferenceservice.yaml")
    assert (isvc.api_version, isvc.kind, isvc.metadata.name) == ("serving.kserve.io/v1beta1", "InferenceService",
                                                                 "vanillanet-5")
    assert isvc.metadata.annotations == {"serving.kserve.io/deploymentMode": mode,
                                         "serving.kserve.io/autoscalerClass": "hpa"}
    predictor = isvc.spec.predictor
    assert (predictor.min_replicas, predictor.max_replicas) == (2, 5)
    assert (predictor.scale_metric, predictor.scale_target) == ("cpu", 80)
    model = predictor.model
    assert (model.model_format.name, model.protocol_version) == ("triton", "v2")
    assert (model.storage_uri, model.runtime_version) == ("gs://bucket/v5", "24.12-py3")  # the image tag
    assert model.resources.requests == model.resources.limits and model.resources.requests["cpu"] == "2"
    assert not model.name and not (out / "deployment.yaml").exists()
    assert sha256_of(out / "repository" / "vanillanet_5" / "1" / "model.onnx") == onnx_sha256
    record = json.loads((out / "deploy.json").read_text())
    assert record["source"]["sha256"] == onnx_sha256 and record["triton"]["server"] == "2.53.0"


def test_the_kubernetes_manifests_round_trip_through_the_kubernetes_models(export_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(export_dir, "--out", out, "--k8s", "--pvc", "models-pvc")
    assert result.exit_code == 0, result.output
    assert "no measurement" in result.output and "1:3" in result.output
    dep = k8s_object(out / "deployment.yaml", "V1Deployment")
    assert (dep.api_version, dep.kind, dep.metadata.name, dep.spec.replicas) == ("apps/v1", "Deployment",
                                                                                 "vanillanet-5", 1)
    pod = dep.spec.template
    assert dep.spec.selector.match_labels == pod.metadata.labels
    assert pod.metadata.annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": "8002",
                                        "prometheus.io/path": "/metrics"}
    (c,) = pod.spec.containers
    assert c.image == f"{IMAGE}:24.10-py3" and c.args == ["tritonserver", "--model-repository=/models"]
    assert {(p.name, p.container_port) for p in c.ports} == {("http", 8000), ("grpc", 8001), ("metrics", 8002)}
    assert (c.liveness_probe.http_get.path, c.readiness_probe.http_get.path,
            c.startup_probe.http_get.path) == ("/v2/health/live", "/v2/health/ready", "/v2/health/ready")
    assert c.startup_probe.failure_threshold * c.startup_probe.period_seconds == 300
    assert c.resources.requests == c.resources.limits and "nvidia.com/gpu" not in c.resources.limits
    mounts, volumes = {m.mount_path: m for m in c.volume_mounts}, {v.name: v for v in pod.spec.volumes}
    assert set(mounts) == {"/models", "/tmp"} and mounts["/models"].read_only  # no /dev/shm: no python backend
    volume = volumes[mounts["/models"].name]
    assert volume.persistent_volume_claim.claim_name == "models-pvc" and volumes[mounts["/tmp"].name].empty_dir
    assert (pod.spec.security_context.run_as_user, pod.spec.security_context.seccomp_profile.type) == \
        (1000, "RuntimeDefault")
    assert (c.security_context.allow_privilege_escalation, c.security_context.capabilities.drop,
            c.security_context.read_only_root_filesystem) == (False, ["ALL"], True)
    svc = k8s_object(out / "service.yaml", "V1Service")
    assert svc.spec.selector == pod.metadata.labels and svc.spec.type == "ClusterIP"
    assert {(p.name, p.port, p.target_port) for p in svc.spec.ports} == {("http", 8000, "http"),
                                                                       ("grpc", 8001, "grpc"),
                                                                       ("metrics", 8002, "metrics")}
    hpa = k8s_object(out / "hpa.yaml", "V2HorizontalPodAutoscaler")
    assert (hpa.api_version, hpa.spec.min_replicas, hpa.spec.max_replicas) == ("autoscaling/v2", 1, 3)
    ref = hpa.spec.scale_target_ref
    assert (ref.api_version, ref.kind, ref.name) == ("apps/v1", "Deployment", "vanillanet-5")
    (metric,) = hpa.spec.metrics
    assert (metric.type, metric.resource.name, metric.resource.target.type,
            metric.resource.target.average_utilization) == ("Resource", "cpu", "Utilization", 80)


def test_the_repository_is_for_the_stock_container(export_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(export_dir, "--out", out)
    assert result.exit_code == 0, result.output
    cfg = model_config(out)  # Triton's own schema
    assert (cfg.backend, cfg.platform) == ("onnxruntime", "onnxruntime_onnx") and cfg.instance_group[0].kind == 2
    assert not (out / "repository" / "vanillanet_5" / "1" / "model.py").exists()
    assert "warning" not in result.output


def test_the_native_openvino_backend_is_refused_for_an_fp32_export(export_dir: Path, tmp_path: Path) -> None:
    """It cannot be told fp32, and computes bf16 on a native-bf16 CPU: exit 2 with the way out, nothing written."""
    result = run(export_dir, "--out", tmp_path / "out", "--backend", "openvino")
    assert result.exit_code == 2 and "HINT_BF16" in result.output and "--backend python --runtime openvino" in \
        result.output.replace("\n", " "), result.output
    assert not (tmp_path / "out").exists()


def test_the_python_backend_is_written_with_a_warning(export_dir: Path, tmp_path: Path) -> None:
    result = run(export_dir, "--out", tmp_path / "out", "--backend", "python")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "onnxruntime" in warnings[0] and "numpy" in warnings[0]
    assert (tmp_path / "out" / "repository" / "vanillanet_5" / "1" / "model.py").is_file()


def test_images_add_the_ensemble_on_the_native_classifier_with_a_warning(export_dir: Path, tmp_path: Path) -> None:
    result = run(export_dir, "--out", tmp_path / "out", "--images")
    assert result.exit_code == 0, result.output
    repo = tmp_path / "out" / "repository"
    assert sorted(p.parent.name for p in repo.glob("*/config.pbtxt")) == \
        ["vanillanet_5", "vanillanet_5_image", "vanillanet_5_preprocess"]
    assert model_config(tmp_path / "out").backend == "onnxruntime"  # the classifier stays native
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "vanilladeploy[eval]" in warnings[0], result.output


def bench_file(path: Path, *, sha256: str | None, batch: int = 1, model: str = "vanillanet_5") -> Path:
    """A serve-bench result made by hand: served rows at 40 img/s (p99 30 ms), 90 (p99 80 ms), 120 (p99 250 ms),
    a served row at 150 img/s with errors, and an in-process row at 200 img/s (never a replica's capacity)."""
    def row(backend: str, roles: list[str], concurrency: int, img_s: float, p99: float, errors: int = 0) -> dict:
        return {"model": model, "backend": backend, "roles": roles, "batch": batch, "concurrency": concurrency,
                "errors": errors, "throughput_img_s": img_s, "stats": {"p99_ms": p99, "median_ms": p99 / 2}}

    records = [row("triton-grpc", ["served"], 1, 40.0, 30.0), row("triton-grpc", ["served"], 4, 90.0, 80.0),
               row("triton-grpc", ["served"], 16, 120.0, 250.0), row("triton-http", ["served"], 8, 150.0, 50.0, 3),
               row("onnxruntime-inprocess", ["in-process", "baseline"], 4, 200.0, 10.0)]
    config = {"source": "/nowhere/export", "triton_backend": "python (onnxruntime)", "batch": batch,
              **({"source_sha256": sha256} if sha256 else {})}
    path.write_text(json.dumps({"config": config, "machine": {"cpu_count": 4}, "records": records}))
    return path


@pytest.mark.parametrize(("batch", "min_replicas", "max_replicas"), [
    (1, 5, 10),  # best row within 100 ms: 90 img/s = 90 req/s; 300 × 1.25 / 90 = 4.17 → 5, max 2 × 5
    (2, 9, 18),  # 90 img/s at 2 images per request = 45 req/s; 300 × 1.25 / 45 = 8.33 → 9
])
def test_sizing_from_a_hand_made_bench(export_dir: Path, onnx_sha256: str, tmp_path: Path, batch: int,
                                       min_replicas: int, max_replicas: int) -> None:
    bench = bench_file(tmp_path / "bench.json", sha256=onnx_sha256, batch=batch)
    out = tmp_path / "out"
    result = run(export_dir, "--out", out, "--k8s", "--target-rps", 300, "--p99-ms", 100, "--bench", bench)
    assert result.exit_code == 0, result.output
    assert "90.0" in result.output and f"{min_replicas}:{max_replicas}" in result.output and "by sha256" in \
        result.output
    hpa = k8s_object(out / "hpa.yaml", "V2HorizontalPodAutoscaler")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (min_replicas, max_replicas)
    dep = k8s_object(out / "deployment.yaml", "V1Deployment")
    assert dep.spec.replicas == min_replicas
    assert dep.spec.template.spec.containers[0].resources.requests["cpu"] == "4"  # the measured machine's cores


def test_sizing_refuses_a_p99_bound_no_row_meets(export_dir: Path, onnx_sha256: str, tmp_path: Path) -> None:
    bench = bench_file(tmp_path / "bench.json", sha256=onnx_sha256)
    result = run(export_dir, "--out", tmp_path / "out", "--k8s", "--target-rps", 10, "--p99-ms", 20, "--bench", bench)
    assert result.exit_code == 2 and "lowest p99 was 10.0 ms" not in result.output  # in-process rows do not count
    assert "lowest p99 was 30.0 ms" in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["other sha256", "other model"])
def test_a_bench_file_of_another_artifact_is_refused(export_dir: Path, tmp_path: Path, case: str) -> None:
    bench = (bench_file(tmp_path / "b.json", sha256="0" * 64) if case == "other sha256" else
             bench_file(tmp_path / "b.json", sha256=None, model="vanillanet_6"))
    result = run(export_dir, "--out", tmp_path / "out", "--k8s", "--target-rps", 10, "--p99-ms", 100, "--bench", bench)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("error: --bench") and ("another file" if case == "other sha256" else "vanillanet_6") in line
    assert not (tmp_path / "out").exists()


def engine_beside(export_dir: Path, tmp_path: Path, trt_version: str) -> Path:
    """An engine file with the sidecar `export --trt` writes (data only: nothing deserializes the plan here)."""
    directory = tmp_path / "engine"
    directory.mkdir()
    shutil.copyfile(export_dir / "vanillanet_5.onnx", directory / "vanillanet_5.onnx")
    engine = directory / "vanillanet_5.fp16.engine"
    engine.write_bytes(b"serialized plan bytes")
    sidecar = {"tensorrt_version": trt_version, "gpu": {"name": "NVIDIA H100", "compute_capability": "9.0"},
               "precision": "fp16", "profile": {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]},
               "onnx": {"name": "vanillanet_5.onnx", "sha256": "x"}}
    (directory / "vanillanet_5.fp16.engine.json").write_text(json.dumps(sidecar))
    return engine


def test_an_engine_runs_on_the_triton_release_of_its_tensorrt(export_dir: Path, tmp_path: Path) -> None:
    engine = engine_beside(export_dir, tmp_path, "10.5.0.18")  # TensorRT of Triton 24.10 (NVIDIA release notes)
    out = tmp_path / "out"
    result = run(engine, "--out", out, "--k8s")
    assert result.exit_code == 0, result.output
    cfg = model_config(out)
    assert (cfg.backend, cfg.platform, dict(cfg.cc_model_filenames)) == ("tensorrt", "tensorrt_plan",
                                                                         {"9.0": "model.sm90.plan"})
    (c,) = k8s_object(out / "deployment.yaml", "V1Deployment").spec.template.spec.containers
    assert c.image == f"{IMAGE}:24.10-py3" and c.resources.limits["nvidia.com/gpu"] == "1"
    refused = run(engine, "--out", tmp_path / "o2", "--k8s", "--triton-version", "24.12")
    assert refused.exit_code == 2
    (line,) = error_lines(refused)
    assert "24.12 ships TensorRT 10.7.0.23" in line and "--triton-version 24.10" in line


@pytest.mark.parametrize(("trt", "extra", "says"), [
    ("10.13.0", [], "no Triton release in our table"),
    ("10.5.0.18", ["--target-rps", "10", "--p99-ms", "100", "--bench", "b.json"], "TensorRT engine's throughput"),
])
def test_engine_refusals(export_dir: Path, tmp_path: Path, trt: str, extra: list[str], says: str) -> None:
    engine = engine_beside(export_dir, tmp_path, trt)
    bench_file(tmp_path / "b.json", sha256=None)
    extra = [str(tmp_path / e) if e == "b.json" else e for e in extra]
    result = run(engine, "--out", tmp_path / "out", "--k8s", *extra)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("error:") and says in line and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("args", "says"), [
    (["--kserve"], "--kserve needs --storage-uri"),
    (["--kserve", "--storage-uri", "bucket/v5"], "--storage-uri 'bucket/v5'"),
    (["--k8s", "--replicas", "3:1"], "--replicas '3:1'"),
    (["--pvc", "claim"], "--pvc is for --k8s"),
    (["--k8s", "--target-rps", "10"], "--target-rps without the others"),
    (["--k8s", "--name", "Vanilla_5"], "--name 'Vanilla_5'"),
    (["--k8s", "--triton-version", "2.51"], "--triton-version '2.51'"),
])
def test_refusals_exit_2_with_one_line_and_write_nothing(export_dir: Path, tmp_path: Path, args: list[str],
                                                         says: str) -> None:
    result = run(export_dir, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith("error:") and says in line, line
    assert not (tmp_path / "out").exists()


def test_a_missing_out_is_one_line(export_dir: Path) -> None:
    result = run(export_dir, "--k8s")
    assert result.exit_code == 2
    (line,) = error_lines(result)
    assert line.startswith("error:") and "--out" in line


def test_a_missing_deploy_extra_exits_3_naming_it(export_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vanilladeploy.extras.available", lambda module: module != "kubernetes")
    result = run(export_dir, "--out", tmp_path / "out", "--k8s")
    assert result.exit_code == 3 and "pip install 'vanilladeploy[deploy]'" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("precision", "extra", "code", "backend", "parameters"), [
    ("bf16", [], 0, "openvino", {"HINT_BF16": "YES", "PERFORMANCE_HINT": "THROUGHPUT", "precision": "bf16"}),
    ("fp32", [], 0, "python", {"runtime": "openvino", "precision": "fp32"}),  # the native one cannot be told fp32
    ("int8", ["--backend", "python"], 0, "python", {"runtime": "openvino", "precision": "int8"}),
    ("fp32", ["--backend", "openvino"], 2, None, None),  # asked for by name: refused, with the way out
])
def test_an_optimize_output_deploys_its_winner_told_its_precision(export_dir: Path, tmp_path: Path, precision: str,
                                                                  extra: list[str], code: int, backend: str | None,
                                                                  parameters: dict[str, str] | None) -> None:
    opt = tmp_path / "opt"
    shutil.copytree(export_dir, opt / "export")
    chosen = {"runtime": "openvino", "precision": precision, "artifact": "elsewhere/export/vanillanet_5.onnx"}
    (opt / "optimize.json").write_text(json.dumps({"chosen": chosen, "candidates": [chosen]}))
    result = run(opt, "--out", tmp_path / "out", *extra)
    assert result.exit_code == code, result.output
    if code:
        return
    cfg = model_config(tmp_path / "out")
    written = {k: v.string_value for k, v in cfg.parameters.items() if k != "artifact_sha256"}
    assert cfg.backend == backend and parameters.items() <= written.items(), written


def test_a_failed_write_leaves_the_previous_set(export_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    assert run(export_dir, "--out", out, "--k8s").exit_code == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("vanilladeploy.cluster.plan.write_planned", disk_full)
    result = run(export_dir, "--out", out, "--k8s", "--replicas", "2:4")
    errors = [line for line in error_lines(result) if "error" in line]
    assert result.exit_code == 2 and errors == [f"error: cannot write to {out}: No space left on device. Choose "
                                                "another --out."]
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
