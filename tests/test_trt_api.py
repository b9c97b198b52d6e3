"""Our TensorRT code against TensorRT's own API, without TensorRT: every ``trt.*`` name and every method or attribute
used on a TensorRT object must exist in the ``tensorrt-stubs`` package (the TensorRT 10.13 Python API as .pyi).

No machine here can import TensorRT, so this is the check that ``exporters/tensorrt_engine.py`` calls names that
exist. Types are followed the way a reader would: a variable assigned from a TensorRT call takes the stub's return
annotation (``network = builder.create_network(0)`` → ``INetworkDefinition``); parameters take their type from
``PARAMETERS`` below. An attribute used on a parameter that is in neither place fails the test, so a new call joins the
check instead of slipping past it. Names that exist only in TensorRT 11 are listed in ``TENSORRT_11_ONLY`` and must be
absent from the 10.x stubs (so the list stays honest).
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = [ROOT / "exporters" / "tensorrt_engine.py"]

PARAMETERS = {  # our parameter names → the TensorRT type they hold ("module" for the tensorrt module itself)
    "trt": "module", "builder": "Builder", "network": "INetworkDefinition", "logger": "ILogger",
    "severity": "ILogger.Severity", "dtype": "DataType",
}
PARAMETERS["config"] = "IBuilderConfig"  # the result of our _builder_config
NOT_TENSORRT = {"self"}
"""Unannotated parameters that hold no TensorRT object."""
NOT_TRT, UNKNOWN = "<not TensorRT>", "<unknown parameter>"
SELF_ATTRIBUTES = {"runtime": "Runtime", "engine": "ICudaEngine", "context": "IExecutionContext"}
"""``self.<name>`` in TensorRTRunner."""
NOT_IN_STUBS = {("module", "__version__")}
"""Set by ``tensorrt/__init__.py`` of every release (we read the major version from it); stubs omit dunders."""
TENSORRT_11_ONLY: set[str] = set()
"""TensorRT-11-only names our code uses. None today: on 11 the code *omits* ``BuilderFlag.FP16`` (removed there) and
guards ``BuilderFlag.TF32`` with ``hasattr``; both exist in 10.x and are checked below."""


def _stub_files() -> list[Path]:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "tensorrt.pyi" for p in spec.submodule_search_locations if (Path(p) / "tensorrt.pyi").is_file()]


STUBS = _stub_files()
pytestmark = pytest.mark.skipif(not STUBS, reason="tensorrt-stubs is not installed (pip install --no-deps "
                                "tensorrt-stubs): the TensorRT API surface cannot be checked")


class StubApi:
    """Classes of the stub (nested ones as ``Outer.Inner``), their members and the members' annotated types."""

    def __init__(self, path: Path) -> None:
        tree = _parse_stub(path.read_text(encoding="utf-8"))
        self.classes: dict[str, dict[str, str | None]] = {}
        self.module: dict[str, str | None] = {}
        for node in tree.body:
            self._collect(node, "", self.module)

    def _collect(self, node: ast.stmt, prefix: str, members: dict[str, str | None]) -> None:
        if isinstance(node, ast.ClassDef):
            name = f"{prefix}{node.name}"
            members[node.name] = name
            own = self.classes.setdefault(name, {})
            for base in node.bases:  # inherited members (ILogger subclasses, IPluginV2 …)
                own.update(self.classes.get(ast.unparse(base).split("[")[0], {}))
            for child in node.body:
                self._collect(child, f"{name}.", own)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            members[node.name] = _type_name(node.returns)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            members[node.target.id] = _type_name(node.annotation)
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    members[target.id] = None

    def member(self, owner: str, name: str) -> tuple[bool, str | None]:
        """(exists, its type) of ``owner.name``; owner "module" is the tensorrt module."""
        members = self.module if owner == "module" else self.classes.get(owner, {})
        if name not in members:
            return False, None
        kind = members[name]
        return True, kind if kind in self.classes else None


def _parse_stub(text: str) -> ast.Module:
    """The generated stubs are not always valid Python (``shift: Weights = None, …, channel_axis: int``): keep each
    ``def``'s name and return annotation, drop its parameters, and blank any line that still does not parse."""
    lines = [re.sub(r"^(\s*def \w+)\(.*\)(\s*->.*:)\s*$", r"\1(*args, **kwargs)\2", line)
             for line in text.splitlines()]
    for _ in range(100):
        try:
            return ast.parse("\n".join(lines))
        except SyntaxError as e:
            bad = (e.lineno or 1) - 1
            lines[bad] = re.match(r"\s*", lines[bad]).group(0) + "pass"
    raise AssertionError("the TensorRT stubs do not parse")


def _type_name(annotation: ast.expr | None) -> str | None:
    if annotation is None:
        return None
    text = ast.unparse(annotation).replace("typing.ClassVar[", "").rstrip("]")
    return text.split(".")[-1] if text.count(".") and not text.startswith(tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")) \
        else text


@pytest.fixture(scope="module")
def api() -> StubApi:
    return StubApi(STUBS[0])


class Checker(ast.NodeVisitor):
    """Follows TensorRT types through one module and records every TensorRT member it uses. A name's type: its
    parameter annotation (a concrete one means "not TensorRT"), the stub's return type of what it was assigned
    from, else ``PARAMETERS``."""

    def __init__(self, api: StubApi) -> None:
        self.api = api
        self.scopes: list[dict[str, str]] = [{}]
        self.used: list[tuple[str, str, int]] = []  # (owner type, member, line)
        self.missing: list[str] = []
        self.untyped: list[str] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        scope: dict[str, str] = {}
        for a in node.args.args:
            typed = a.annotation is not None and ast.unparse(a.annotation) not in ("Any", "typing.Any")
            scope[a.arg] = NOT_TRT if typed or a.arg in NOT_TENSORRT else PARAMETERS.get(a.arg, UNKNOWN)
        self.scopes.append(scope)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Assign(self, node: ast.Assign) -> None:
        self.generic_visit(node)
        for target in node.targets:
            pairs = [(target, node.value)]
            if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                pairs = list(zip(target.elts, node.value.elts))
            for t, value in pairs:
                kind = self.type_of(value)
                if isinstance(t, ast.Name) and kind is not None:
                    self.scopes[-1][t.id] = kind

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        self.type_of(node)

    def lookup(self, name: str) -> str | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return PARAMETERS.get(name)

    def type_of(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Call):
            return self.type_of(node.func)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return SELF_ATTRIBUTES.get(node.attr)
            owner = self.type_of(node.value)
            if owner == UNKNOWN:
                self.untyped.append(f"line {node.lineno}: {ast.unparse(node)}")
            if owner in (None, NOT_TRT, UNKNOWN):
                return None
            exists, kind = self.api.member(owner, node.attr)
            self.used.append((owner, node.attr, node.lineno))
            if not exists and node.attr != "__init__" and (owner, node.attr) not in NOT_IN_STUBS:
                self.missing.append(f"line {node.lineno}: {owner}.{node.attr}")
            return kind
        return None


def _check(path: Path, api: StubApi) -> Checker:
    checker = Checker(api)
    checker.visit(ast.parse(path.read_text(encoding="utf-8")))
    return checker


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_every_tensorrt_name_exists_in_the_stubs(path: Path, api: StubApi) -> None:
    checker = _check(path, api)
    assert not checker.missing, f"not in TensorRT 10.13's API: {checker.missing}"
    assert not checker.untyped, ("attribute used on a name of unknown type; add it to PARAMETERS (a TensorRT type) "
                                 f"or NOT_TENSORRT: {checker.untyped}")
    used = {f"{owner}.{name}" for owner, name, _ in checker.used}
    # the calls the build and the runner cannot do without are really among the checked ones
    for essential in ("module.Builder", "Builder.create_network", "module.OnnxParser", "OnnxParser.parse_from_file",
                      "Builder.build_serialized_network", "IBuilderConfig.set_memory_pool_limit",
                      "IOptimizationProfile.set_shape", "IExecutionContext.set_tensor_address",
                      "IExecutionContext.execute_async_v3", "Runtime.deserialize_cuda_engine",
                      "IBuilderConfig.set_timing_cache", "module.BuilderFlag", "ICudaEngine.get_tensor_mode"):
        assert essential in used, f"{essential} was not followed: the type inference lost track of it"


def test_a_wrong_name_is_caught(api: StubApi, tmp_path: Path) -> None:
    source = (ROOT / "exporters" / "tensorrt_engine.py").read_text(encoding="utf-8")
    for right, wrong in (("execute_async_v3", "execute_async_v4"), ("trt.BuilderFlag.FP16", "trt.BuilderFlag.FP17"),
                         ("create_optimization_profile", "create_profile"), ("set_input_shape", "set_binding_shape")):
        assert right in source
        broken = tmp_path / "broken.py"
        broken.write_text(source.replace(right, wrong), encoding="utf-8")
        assert _check(broken, api).missing, f"renaming {right} to {wrong} went unnoticed"


def test_tensorrt_11_only_names_are_not_in_the_10_stubs(api: StubApi) -> None:
    for name in TENSORRT_11_ONLY:
        owner, _, member = name.rpartition(".")
        assert not api.member(owner or "module", member)[0], f"{name} exists in TensorRT 10; not 11-only"
