"""What ``deploy`` writes, checked against the schemas a cluster checks it against, not only read back into the SDKs'
models (which accept almost anything): the Kubernetes API's own (``kubernetes-validate --strict``, for the oldest and
the newest Kubernetes minor it carries), KServe's InferenceService CRD (vendored from a KServe release: see
tests/fixtures/kserve/README.md; unknown fields an error), and Pod Security "restricted" for every pod
(tests/pod_security.py). Each checker is also shown a wrong object, so it can fail."""

from __future__ import annotations

import copy
import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from pod_security import restricted_violations
from typer.testing import CliRunner

from vanilladeploy.cli import app

require("tritonclient.grpc", "the serve extra (tritonclient) is not installed", module_level=True)
yaml = require("yaml", "the deploy extra (pyyaml) is not installed", module_level=True)
kubernetes_validate = require("kubernetes_validate", "the test extra (kubernetes-validate) is not installed",
                              module_level=True)
jsonschema = require("jsonschema", "the test extra (jsonschema, with kubernetes-validate) is not installed",
                     module_level=True)

KSERVE_SCHEMA = Path(__file__).parent / "fixtures" / "kserve" / "inferenceservice-v1beta1-v0.20.0.schema.json.gz"
VERSIONS = sorted({v for v in kubernetes_validate.utils.all_versions()},
                  key=lambda v: tuple(int(x) for x in v.split(".")))
OLDEST_AND_NEWEST = [VERSIONS[0], VERSIONS[-1]]
SETUPS = {
    "onnxruntime": [],
    "python backend": ["--backend", "python"],
    "image ensemble": ["--images"],
}


@pytest.fixture(scope="module")
def written(vanillanet_5_export: Callable[[int], Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Path]:
    """``deploy --kserve --k8s`` of VanillaNet-5 for each setup (the native backend; the python backend; the image
    ensemble), every file written."""
    root = tmp_path_factory.mktemp("deploy-schemas")
    outs = {}
    for name, extra in SETUPS.items():
        out = root / name.replace(" ", "-")
        result = CliRunner().invoke(app, ["deploy", str(vanillanet_5_export(32)), "--out", str(out), "--kserve",
                                          "--storage-uri", "gs://bucket/v5", "--k8s", *extra])
        assert result.exit_code == 0, result.output
        outs[name] = out
    return outs


def read(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def strict(schema: Any) -> Any:
    """``schema`` with unknown fields an error wherever it lists the fields (what the API server's pruning of
    unknown fields makes of them: silently dropped, so a field we write there would never take effect)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="module")
def kserve_validator() -> Any:
    schema = strict(json.loads(gzip.decompress(KSERVE_SCHEMA.read_bytes())))
    return jsonschema.Draft7Validator(schema)


def kserve_errors(validator: Any, doc: dict[str, Any]) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("version", OLDEST_AND_NEWEST)
@pytest.mark.parametrize("file", ["deployment.yaml", "service.yaml", "hpa.yaml"])
def test_the_kubernetes_objects_pass_the_api_schema_strictly(written: dict[str, Path], setup: str, version: str,
                                                             file: str) -> None:
    kubernetes_validate.validate(read(written[setup] / file), version, strict=True)  # raises on any error


@pytest.mark.parametrize("version", OLDEST_AND_NEWEST)
def test_the_api_schema_check_can_fail(written: dict[str, Path], version: str) -> None:
    doc = read(written["onnxruntime"] / "deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRot"] = True  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("setup", list(SETUPS))
def test_the_inference_service_passes_kserves_crd_schema(written: dict[str, Path], kserve_validator: Any,
                                                         setup: str) -> None:
    assert kserve_errors(kserve_validator, read(written[setup] / "inferenceservice.yaml")) == []


def test_the_crd_schema_check_can_fail(written: dict[str, Path], kserve_validator: Any) -> None:
    doc = read(written["onnxruntime"] / "inferenceservice.yaml")
    doc["spec"]["predictor"]["model"]["securityContext"]["readOnlyRootFilesytem"] = True  # a typo
    doc["spec"]["predictor"]["minReplicas"] = "two"
    assert kserve_errors(kserve_validator, doc) == [
        "spec.predictor.minReplicas: 'two' is not of type 'integer'",
        "spec.predictor.model.securityContext: Additional properties are not allowed ('readOnlyRootFilesytem' was "
        "unexpected)"]


def deployment_pod(out: Path) -> dict[str, Any]:
    return read(out / "deployment.yaml")["spec"]["template"]["spec"]


def inference_service_pod(out: Path) -> dict[str, Any]:
    """The pod KServe makes of the predictor: its pod-level fields, the model as the serving container (the
    storage initializer KServe adds is KServe's own: not written by us)."""
    predictor = read(out / "inferenceservice.yaml")["spec"]["predictor"]
    pod = {k: v for k, v in predictor.items() if k not in ("model", "minReplicas", "maxReplicas", "scaleMetric",
                                                           "scaleTarget")}
    return {**pod, "containers": [predictor["model"]]}


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("pod", [deployment_pod, inference_service_pod])
def test_every_pod_passes_pod_security_restricted(written: dict[str, Path], setup: str,
                                                  pod: Callable[[Path], dict[str, Any]]) -> None:
    spec = pod(written[setup])
    assert restricted_violations(spec) == []
    assert spec["securityContext"]["runAsUser"] == 1000  # the Triton image's own non-root user
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/tmp"]]["emptyDir"] == {}  # where Triton writes
    shm = volumes.get(mounts.get("/dev/shm"), {}).get("emptyDir")
    if setup == "onnxruntime":
        assert shm is None  # no python backend: no stub shares memory with the server
    else:
        assert shm == {"medium": "Memory", "sizeLimit": "128Mi"}, shm  # 64 MiB + 32 × 3×32×32×4 B × 2, in 64s


def test_the_restricted_check_can_fail(written: dict[str, Path]) -> None:
    pod = deployment_pod(written["onnxruntime"])
    bare = copy.deepcopy(pod)
    bare.pop("securityContext")
    bare["containers"][0].pop("securityContext")
    bare["hostNetwork"] = True
    bare["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert restricted_violations(bare) == [
        "hostNetwork must be unset or false",
        "volume host: type ['hostPath'] is not allowed",
        "containers[0].securityContext.allowPrivilegeEscalation must be false",
        "containers[0].securityContext.runAsNonRoot must be true (here or in the pod's securityContext)",
        "containers[0].securityContext.seccompProfile.type must be RuntimeDefault or Localhost (here or in the pod's)",
        "containers[0].securityContext.capabilities.drop must include ALL"]
    root = copy.deepcopy(pod)
    root["securityContext"]["runAsUser"] = 0
    root["containers"][0]["securityContext"]["capabilities"]["add"] = ["SYS_ADMIN"]
    assert restricted_violations(root) == [
        "securityContext.runAsUser must not be 0",
        "containers[0].securityContext.capabilities.add may only hold NET_BIND_SERVICE, not ['SYS_ADMIN']"]


def test_the_memory_limit_holds_the_shared_memory(written: dict[str, Path]) -> None:
    """A memory-backed /dev/shm counts against the container's memory limit: the python-backend pods get it on top
    of the estimate (sizing.memory_request)."""
    from vanilladeploy.cluster.sizing import memory_request

    for setup, shm in (("onnxruntime", 0), ("python backend", 128), ("image ensemble", 128)):
        record = json.loads((written[setup] / "deploy.json").read_text())
        expected = memory_request(Path(record["source"]["path"]).stat().st_size, shm)
        resources = deployment_pod(written[setup])["containers"][0]["resources"]
        assert resources["limits"]["memory"] == resources["requests"]["memory"] == expected, (setup, resources)
        assert record["sizing"]["memory"] == expected
