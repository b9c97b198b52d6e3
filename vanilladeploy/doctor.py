"""``vanilladeploy doctor``: what this machine can do, before a user waits on a long export.

Every probe runs in its own ``try``: a missing or broken optional part is a finding, never a crash, and ``diagnose``
never raises. Readiness reuses what the commands themselves check (``tensorrt_missing``, bench's runtimes'
``missing``, ``find_tritonserver``), so doctor and the commands cannot disagree. This module imports only the
standard library at import time: everything else is a probe, so doctor runs with any optional part (onnx included)
missing or broken.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from types import ModuleType
from typing import Any

from vanilladeploy.extras import EXTRAS, install_hint
from vanilladeploy.machine import INT8_FLAGS, ISA_FLAGS, bf16_missing, cpu_flags, cpu_model, usable_cores

TRT_INSTALL, SERVE_INSTALL, BENCH_INSTALL, CORE_INSTALL, DEPLOY_INSTALL = (
    install_hint(n) for n in ("trt", "serve", "bench", "core", "deploy"))


@dataclass(frozen=True)
class Component:
    name: str
    version: str | None
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class Capability:
    command: str
    ready: bool
    reason: str = ""
    fix: str = ""


@dataclass
class Diagnosis:
    components: list[Component] = field(default_factory=list)
    capabilities: list[Capability] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"components": [asdict(c) for c in self.components],
                "capabilities": [asdict(c) for c in self.capabilities]}


def _module(name: str) -> tuple[ModuleType | None, str | None]:
    """(module or None, why not): an import that fails for any reason is a finding."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # ImportError, or a broken install raising anything on import
        return None, _why(e)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")


def _probe(name: str, detail: Callable[[ModuleType], str] | None = None, *, module: str | None = None) -> Component:
    mod, why = _module(module or name)
    if mod is None:
        return Component(name, None, False, why or "not installed")
    try:
        return Component(name, _version(mod), True, detail(mod) if detail else "")
    except Exception as e:  # the module imports but a query of it fails: report, do not crash
        return Component(name, str(getattr(mod, "__version__", "?")), False, f"{type(e).__name__}: {e}")


def _version(mod: ModuleType) -> str:
    if hasattr(mod, "__version__"):
        return str(mod.__version__)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(mod.__name__)
    except PackageNotFoundError:
        return "?"


def _cpu() -> Component:
    isa = [f for f in ISA_FLAGS if f in cpu_flags()]
    detail = f"{cpu_model()}, {usable_cores()} cores usable, ISA: {' '.join(isa) or 'baseline'}"
    return Component("cpu", None, True, detail)


def _torch_detail(torch: ModuleType) -> str:
    if torch.cuda.is_available():
        name, cc = torch.cuda.get_device_name(), torch.cuda.get_device_capability()
        return f"CUDA {torch.version.cuda}: {name} (compute capability {cc[0]}.{cc[1]})"
    return "no CUDA GPU visible"


def _tensorrt() -> Component:
    try:
        trt = importlib.import_module("tensorrt")
    except Exception as e:
        return Component("tensorrt", None, False, _why(e))
    if getattr(trt, "__file__", None) is None:
        return Component("tensorrt", None, False, "not installed (only type stubs)")
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.WARNING))  # the libraries really load
        del builder
        return Component("tensorrt", str(trt.__version__), True, "libraries load")
    except Exception as e:
        return Component("tensorrt", str(getattr(trt, "__version__", "?")), False,
                         f"imports, but its libraries fail to load ({type(e).__name__}: {e})")


def _tritonserver() -> Component:
    try:
        from vanilladeploy.serving.server import find_tritonserver, tritonserver_version

        path = find_tritonserver()
        return Component("tritonserver", tritonserver_version(path), True, str(path))
    except Exception as e:  # MissingDependencyError (no nvidia-pytriton), or a broken wheel
        return Component("tritonserver", None, False, str(e).splitlines()[0] if str(e) else type(e).__name__)


def _kserve() -> Component:
    """The kserve SDK as ``deploy`` loads it: ``import kserve`` would also load its gRPC protocol, which clashes
    with tritonclient's in one process (vanilladeploy/cluster/manifests.py)."""
    try:
        from importlib.metadata import version

        from vanilladeploy.cluster.manifests import kserve_sdk

        kserve_sdk()
        return Component("kserve", version("kserve"), True, "SDK models (InferenceService)")
    except Exception as e:  # MissingDependencyError, or a broken install
        return Component("kserve", None, False, _why(e))


def components() -> list[Component]:
    return [
        Component("python", platform.python_version(), True, platform.python_implementation()),
        _cpu(),
        _probe("torch", _torch_detail),
        _probe("onnx"),
        _probe("onnxruntime", lambda m: "providers: " + ", ".join(m.get_available_providers())),
        _probe("onnxsim"),
        _probe("openvino", lambda m: "CPU plugin: " + ", ".join(
            m.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))),
        _tensorrt(),
        _tritonserver(),
        _probe("tritonclient", lambda m: "http + grpc" if _module("tritonclient.grpc")[0] else "grpc missing",
               module="tritonclient"),
        _probe("torchvision"),
        _probe("matplotlib"),
        _kserve(),
        _probe("kubernetes"),
        _probe("pyyaml", module="yaml"),
    ]


def capabilities(parts: list[Component]) -> list[Capability]:
    ok = {c.name: c for c in parts}
    caps = [_needs("export", ok, ["torch", "onnx", "onnxruntime", "onnxsim"], CORE_INSTALL)]
    caps.append(_from_reason("export --trt", _trt_reason(), TRT_INSTALL))
    caps += _bench(ok)
    serve = _needs("serve, serve-bench", ok, ["onnxruntime", "tritonserver", "tritonclient"], SERVE_INSTALL)
    caps.append(serve)
    caps.append(_needs("repo", ok, ["onnx", "tritonclient"], SERVE_INSTALL))
    caps.append(_needs("deploy --kserve, --k8s", ok, ["kserve", "kubernetes", "pyyaml"], DEPLOY_INSTALL))
    caps += _cpu_runtimes(ok)
    caps += _runtimes()
    return caps


def _runtimes() -> list[Capability]:
    """One line per entry of the one table of runtimes: what it runs (precisions, devices) and whether it is here."""
    from vanilladeploy.runtimes import RUNTIMES

    caps = []
    for name, r in RUNTIMES.items():
        reason = _trt_reason() if name == "tensorrt" else r.missing()
        fix = EXTRAS[r.extra].install
        caps.append(_from_reason(f"runtime {name}: {'/'.join(r.precisions)} on {'/'.join(r.devices)}", reason, fix))
    return caps


def _cpu_runtimes(ok: dict[str, Component]) -> list[Capability]:
    """OpenVINO, and the precisions this CPU computes natively: bf16 (AVX-512 BF16 or AMX) and fast int8 (VNNI or
    AMX; int8 runs anywhere, with less speed-up without them)."""
    flags, hint = cpu_flags(), install_hint("openvino")
    caps = [_needs("export --openvino, eval --runtime openvino", ok, ["openvino"], hint)]
    missing = bf16_missing(flags)
    if missing:
        caps.append(Capability("OpenVINO bf16", False, f"{missing} (bf16 is refused here, never run as fp32)",
                               "a CPU with AVX-512 BF16 or AMX"))
    else:
        caps.append(_needs("OpenVINO bf16", ok, ["openvino"], hint))
    int8 = [f for f in INT8_FLAGS if f in flags]
    caps.append(Capability("int8 kernels (VNNI/AMX)", bool(int8), f"native: {', '.join(int8)}" if int8 else
                           "no VNNI or AMX: int8 runs, with less speed-up over fp32"))
    return caps


def _needs(command: str, ok: dict[str, Component], parts: list[str], fix: str) -> Capability:
    bad = [ok[p] for p in parts if not ok[p].ok]
    if not bad:
        return Capability(command, True)
    return Capability(command, False, f"{bad[0].name}: {bad[0].detail or 'not installed'}", fix)


def _from_reason(command: str, reason: str | None, fix: str) -> Capability:
    reason = (reason or "").removesuffix(f": {fix}")  # the reason may already end with the install line
    return Capability(command, not reason, reason, fix if reason else "")


def _trt_reason() -> str | None:
    try:
        from vanilladeploy.runtimes.trt_plan import tensorrt_missing

        return tensorrt_missing()
    except Exception as e:
        return f"{type(e).__name__}: {e}"


def _bench(ok: dict[str, Component]) -> list[Capability]:
    caps = []
    try:
        import torch

        from vanilladeploy.benchmarks.subjects import BENCH_RUNTIMES, BenchConfig

        device = "cuda" if torch.cuda.is_available() else "cpu"
        for name, runtime in BENCH_RUNTIMES.items():
            reason = runtime().missing(BenchConfig(device=device))
            caps.append(_from_reason(f"bench: {name} ({device})", reason, _bench_fix(name, reason or "")))
    except Exception as e:
        caps.append(Capability("bench", False, f"{type(e).__name__}: {e}", BENCH_INSTALL))
    caps.append(_needs("bench: baselines + plot", ok, ["torchvision", "matplotlib"], BENCH_INSTALL))
    return caps


def _bench_fix(runtime: str, reason: str) -> str:
    if runtime == "tensorrt":
        return TRT_INSTALL
    if "onnxruntime-gpu" in reason:
        return install_hint("onnxruntime-gpu")
    if "not installed" in reason:
        return CORE_INSTALL
    return "a machine with an NVIDIA GPU (--device cuda)"


def diagnose() -> Diagnosis:
    """Versions and readiness; never raises."""
    parts = components()
    try:
        caps = capabilities(parts)
    except Exception as e:  # a bug in a probe must not hide the versions
        caps = [Capability("doctor", False, f"{type(e).__name__}: {e}", "report this")]
    return Diagnosis(parts, caps)


__all__ = ["Capability", "Component", "Diagnosis", "capabilities", "components", "diagnose"]
