"""The files a cluster reads, as the libraries' own models: a KServe ``InferenceService`` (the ``kserve`` SDK's
models), or a ``Deployment``, ``Service`` and ``HorizontalPodAutoscaler`` (the ``kubernetes`` client's models). Each
object is serialized by its SDK's ``ApiClient.sanitize_for_serialization`` (the camelCase JSON the API server
reads) and written with ``yaml.safe_dump``: no YAML is assembled from strings, and a field the models do not
know cannot be written. ``kserve``, ``kubernetes`` and ``yaml`` are imported inside the functions (the deploy extra).

The kserve SDK is loaded by :func:`kserve_sdk`, never with ``import kserve``: the package's ``__init__`` also loads
KServe's model server, whose gRPC protocol (``grpc_predict_v2.proto``) registers the same protobuf symbols
(package ``inference``: ``ServerLiveRequest`` …) as Triton's client (``grpc_service.proto``), which ``repo`` needs
for ``config.pbtxt``. In one process the second import fails ("duplicate symbol 'inference.ServerLiveRequest'"),
in either order. The SDK's OpenAPI layer (``kserve.models``, ``kserve.api_client``) needs none of that.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from vanilladeploy.extras import install_hint

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver"
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
"""Triton's defaults (design §8)."""
MODEL_MOUNT = "/models"
REPOSITORY_VOLUME = "model-repository"
DEPLOYMENT_MODE = "serving.kserve.io/deploymentMode"
AUTOSCALER_CLASS = "serving.kserve.io/autoscalerClass"
KSERVE_MODES = ("Standard", "RawDeployment")
"""The value of :data:`DEPLOYMENT_MODE` for plain Deployments (no Knative). Read in KServe's source (tags v0.15.2,
v0.16.0 and master): KServe 0.16 renamed ``RawDeployment`` to ``Standard`` (kserve/kserve#4608; ``RawDeployment``
is still read as a deprecated alias), and 0.15 knows only ``RawDeployment``. The admission webhook
(``validateAutoScalingCompExtension``) accepts ``scaleMetric: cpu`` only when the mode is the literal current name
AND ``serving.kserve.io/autoscalerClass`` is ``hpa``: ``Standard`` on KServe ≥ 0.16, ``RawDeployment`` on 0.15;
any other combination falls to the Knative validator, which answers "[cpu] is not a supported metric"."""
TRITON_USER = 1000
"""The non-root user of NVIDIA's Triton image (``triton-server``), the one KServe's own Triton runtime
(``config/runtimes/kserve-tritonserver.yaml``) runs as."""
SCRATCH = {"tmp": "/tmp"}
"""What Triton may write on a read-only root filesystem: an ``emptyDir`` each (volume name → mount path)."""
SHM_VOLUME, SHM_PATH = "dshm", "/dev/shm"
"""The python backend's stubs exchange tensors with the server through shared memory: a memory-backed ``emptyDir``
sized by :func:`vanilladeploy.cluster.sizing.shm_mib` replaces the runtime's 64 MiB default."""
PROMETHEUS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(PORTS["metrics"]),
              "prometheus.io/path": "/metrics"}


@dataclass(frozen=True)
class ClusterSpec:
    """Everything the manifests say: names, the Triton release, resources, replicas, where the repository is."""

    name: str  # the Kubernetes name (DNS-1035 label)
    release: str  # the Triton container release, "24.10"
    cpu: str
    memory: str
    gpu: bool
    min_replicas: int
    max_replicas: int
    scale_target: int  # CPU utilization percent
    storage_uri: str | None = None  # KServe: where the repository was uploaded
    pvc: str | None = None  # plain Kubernetes: the PersistentVolumeClaim holding the repository
    kserve_mode: str = "Standard"
    shm: str | None = None  # /dev/shm's size when a python-backend model is served (its stubs' shared memory)

    @property
    def image(self) -> str:
        return f"{TRITON_IMAGE}:{self.release}-py3"

    @property
    def labels(self) -> dict[str, str]:
        return {"app.kubernetes.io/name": self.name, "app.kubernetes.io/part-of": "vanilladeploy"}


def kserve_sdk() -> tuple[ModuleType, type]:
    """``kserve.models`` and ``kserve.api_client.ApiClient``, imported without running ``kserve/__init__.py`` (see
    the module docstring): a bare module stands in for the package while its two submodules load, and is removed
    again, so a later ``import kserve`` gets the real package."""
    from vanilladeploy.errors import MissingDependencyError

    missing = MissingDependencyError(f"deploy --kserve needs the kserve SDK: {install_hint('deploy')}")
    if "kserve" in sys.modules and sys.modules["kserve"] is None:  # an import made impossible on purpose
        raise missing
    if "kserve" not in sys.modules:
        spec = importlib.util.find_spec("kserve")
        if spec is None or spec.submodule_search_locations is None:
            raise missing
        stand_in = importlib.util.module_from_spec(spec)  # the package's module object, its __init__ not run
        sys.modules["kserve"] = stand_in
        try:
            importlib.import_module("kserve.models")
            importlib.import_module("kserve.api_client")
        finally:
            if sys.modules.get("kserve") is stand_in:
                del sys.modules["kserve"]
    return sys.modules["kserve.models"], importlib.import_module("kserve.api_client").ApiClient


def _resources(spec: ClusterSpec) -> Any:
    """Requests = limits (Guaranteed QoS: the cores the throughput was measured with, not a share of them); a GPU
    for a TensorRT plan."""
    from kubernetes.client import V1ResourceRequirements

    requests = {"cpu": spec.cpu, "memory": spec.memory}
    limits = {**requests, **({"nvidia.com/gpu": "1"} if spec.gpu else {})}
    return V1ResourceRequirements(requests=requests, limits=limits)


def pod_security() -> Any:
    """Pod Security "restricted", pod level: non-root as the image's own user, the runtime's default seccomp
    profile."""
    from kubernetes.client import V1PodSecurityContext, V1SeccompProfile

    return V1PodSecurityContext(run_as_non_root=True, run_as_user=TRITON_USER, run_as_group=TRITON_USER,
                                seccomp_profile=V1SeccompProfile(type="RuntimeDefault"))


def container_security() -> Any:
    """Pod Security "restricted", container level: no privilege escalation, every capability dropped; and a
    read-only root filesystem (what Triton writes goes to :func:`scratch_volumes`)."""
    from kubernetes.client import V1Capabilities, V1SecurityContext

    return V1SecurityContext(allow_privilege_escalation=False, capabilities=V1Capabilities(drop=["ALL"]),
                             read_only_root_filesystem=True, run_as_non_root=True)


def scratch_volumes(spec: ClusterSpec) -> tuple[list[Any], list[Any]]:
    """The writable places of a read-only root filesystem: volumes and their mounts (``/tmp``; ``/dev/shm`` in
    memory, sized, when a python-backend model is served)."""
    from kubernetes.client import V1EmptyDirVolumeSource, V1Volume, V1VolumeMount

    volumes = [V1Volume(name=name, empty_dir=V1EmptyDirVolumeSource()) for name in SCRATCH]
    mounts = [V1VolumeMount(name=name, mount_path=path) for name, path in SCRATCH.items()]
    if spec.shm:
        volumes.append(V1Volume(name=SHM_VOLUME, empty_dir=V1EmptyDirVolumeSource(medium="Memory",
                                                                                  size_limit=spec.shm)))
        mounts.append(V1VolumeMount(name=SHM_VOLUME, mount_path=SHM_PATH))
    return volumes, mounts


def inference_service(spec: ClusterSpec) -> dict[str, Any]:
    """A ``serving.kserve.io/v1beta1`` InferenceService: KServe's Triton runtime (``modelFormat: triton``, selected
    automatically) at ``runtimeVersion`` — the image TAG of ``nvcr.io/nvidia/tritonserver`` (KServe replaces the
    whole tag with it), so ``24.10-py3`` — pulling the repository from ``storageUri``; HPA on CPU. The predictor
    pod and its model container run restricted (:func:`pod_security`, :func:`container_security`); the storage
    initializer KServe adds is KServe's to configure."""
    from kubernetes.client import V1ObjectMeta

    ks, api_client = kserve_sdk()
    volumes, mounts = scratch_volumes(spec)
    model = ks.V1beta1ModelSpec(name=None, model_format=ks.V1beta1ModelFormat(name="triton"), protocol_version="v2",
                                storage_uri=spec.storage_uri, runtime_version=f"{spec.release}-py3",
                                resources=_resources(spec), security_context=container_security(),
                                volume_mounts=mounts)
    predictor = ks.V1beta1PredictorSpec(model=model, min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
                                        scale_metric="cpu", scale_target=spec.scale_target,
                                        security_context=pod_security(), volumes=volumes)
    metadata = V1ObjectMeta(name=spec.name, labels=spec.labels,
                            annotations={DEPLOYMENT_MODE: spec.kserve_mode, AUTOSCALER_CLASS: "hpa"})
    isvc = ks.V1beta1InferenceService(api_version="serving.kserve.io/v1beta1", kind="InferenceService",
                                      metadata=metadata, spec=ks.V1beta1InferenceServiceSpec(predictor=predictor))
    return api_client().sanitize_for_serialization(isvc)


def _probe(path: str, *, period_s: int, failures: int) -> Any:
    from kubernetes.client import V1HTTPGetAction, V1Probe

    return V1Probe(http_get=V1HTTPGetAction(path=path, port="http"), period_seconds=period_s,
                   failure_threshold=failures)


def _container(spec: ClusterSpec, scratch: list[Any]) -> Any:
    """Triton on the mounted repository: liveness ``/v2/health/live``; readiness ``/v2/health/ready`` (every model
    loaded); a startup probe on readiness that allows 5 minutes for the first load (a plan or a large ONNX);
    restricted (:func:`container_security`), writing only to ``scratch``."""
    from kubernetes.client import V1Container, V1ContainerPort, V1VolumeMount

    return V1Container(
        name="triton", image=spec.image, args=["tritonserver", f"--model-repository={MODEL_MOUNT}"],
        ports=[V1ContainerPort(name=name, container_port=port) for name, port in PORTS.items()],
        liveness_probe=_probe("/v2/health/live", period_s=10, failures=3),
        readiness_probe=_probe("/v2/health/ready", period_s=5, failures=3),
        startup_probe=_probe("/v2/health/ready", period_s=5, failures=60),
        resources=_resources(spec), security_context=container_security(),
        volume_mounts=[V1VolumeMount(name=REPOSITORY_VOLUME, mount_path=MODEL_MOUNT, read_only=True), *scratch])


def deployment(spec: ClusterSpec) -> dict[str, Any]:
    """An ``apps/v1`` Deployment of the stock Triton image, the repository from the PersistentVolumeClaim
    ``spec.pvc`` (read-only at ``/models``), Prometheus scrape annotations on the pods; pods that pass Pod Security
    "restricted"."""
    from kubernetes.client import (
        ApiClient,
        V1Deployment,
        V1DeploymentSpec,
        V1LabelSelector,
        V1ObjectMeta,
        V1PersistentVolumeClaimVolumeSource,
        V1PodSpec,
        V1PodTemplateSpec,
        V1Volume,
    )

    volume = V1Volume(name=REPOSITORY_VOLUME, persistent_volume_claim=V1PersistentVolumeClaimVolumeSource(
        claim_name=spec.pvc, read_only=True))
    scratch, mounts = scratch_volumes(spec)
    template = V1PodTemplateSpec(metadata=V1ObjectMeta(labels=spec.labels, annotations=PROMETHEUS),
                                 spec=V1PodSpec(containers=[_container(spec, mounts)], volumes=[volume, *scratch],
                                                security_context=pod_security()))
    obj = V1Deployment(api_version="apps/v1", kind="Deployment", metadata=V1ObjectMeta(name=spec.name,
                                                                                        labels=spec.labels),
                       spec=V1DeploymentSpec(replicas=spec.min_replicas, template=template,
                                             selector=V1LabelSelector(match_labels=spec.labels)))
    return ApiClient().sanitize_for_serialization(obj)


def service(spec: ClusterSpec) -> dict[str, Any]:
    """A ClusterIP Service with Triton's three ports (KServe v2 HTTP and gRPC, metrics)."""
    from kubernetes.client import ApiClient, V1ObjectMeta, V1Service, V1ServicePort, V1ServiceSpec

    ports = [V1ServicePort(name=name, port=port, target_port=name) for name, port in PORTS.items()]
    obj = V1Service(api_version="v1", kind="Service", metadata=V1ObjectMeta(name=spec.name, labels=spec.labels),
                    spec=V1ServiceSpec(type="ClusterIP", selector=spec.labels, ports=ports))
    return ApiClient().sanitize_for_serialization(obj)


def autoscaler(spec: ClusterSpec) -> dict[str, Any]:
    """An ``autoscaling/v2`` HorizontalPodAutoscaler of the Deployment on CPU utilization."""
    from kubernetes.client import (
        ApiClient,
        V1ObjectMeta,
        V2CrossVersionObjectReference,
        V2HorizontalPodAutoscaler,
        V2HorizontalPodAutoscalerSpec,
        V2MetricSpec,
        V2MetricTarget,
        V2ResourceMetricSource,
    )

    cpu = V2MetricSpec(type="Resource", resource=V2ResourceMetricSource(
        name="cpu", target=V2MetricTarget(type="Utilization", average_utilization=spec.scale_target)))
    target = V2CrossVersionObjectReference(api_version="apps/v1", kind="Deployment", name=spec.name)
    obj = V2HorizontalPodAutoscaler(
        api_version="autoscaling/v2", kind="HorizontalPodAutoscaler",
        metadata=V1ObjectMeta(name=spec.name, labels=spec.labels),
        spec=V2HorizontalPodAutoscalerSpec(scale_target_ref=target, min_replicas=spec.min_replicas,
                                           max_replicas=spec.max_replicas, metrics=[cpu]))
    return ApiClient().sanitize_for_serialization(obj)


def manifests(spec: ClusterSpec, *, kserve: bool, k8s: bool) -> dict[str, dict[str, Any]]:
    """File name → the serialized object, for what was asked."""
    files = {"inferenceservice.yaml": inference_service(spec)} if kserve else {}
    if k8s:
        files |= {"deployment.yaml": deployment(spec), "service.yaml": service(spec), "hpa.yaml": autoscaler(spec)}
    return files


def to_yaml(doc: dict[str, Any], *, comment: str = "") -> str:
    """``doc`` as YAML (``yaml.safe_dump``, keys in the models' order), after an optional ``#`` comment line."""
    import yaml

    head = "".join(f"# {line}\n" for line in comment.splitlines())
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


__all__ = ["AUTOSCALER_CLASS", "DEPLOYMENT_MODE", "KSERVE_MODES", "PORTS", "TRITON_IMAGE", "TRITON_USER", "ClusterSpec",
           "autoscaler", "container_security", "deployment", "inference_service", "kserve_sdk", "manifests",
           "pod_security", "scratch_volumes", "service", "to_yaml"]
