"""Our TensorRT code against TensorRT's own API, without TensorRT: every ``trt.*`` name and every method or attribute
used on a TensorRT object must exist in the ``tensorrt-stubs`` package (the TensorRT 10.13 Python API as .pyi).

No machine here can import TensorRT, so this is the check that our code calls names that exist. Every project file
that imports ``tensorrt`` (``import tensorrt``, ``from tensorrt import …``, ``import_module("tensorrt")``) is checked;
they are found by scanning the sources, so a new file joins by itself. Types are followed the way a reader would: a
variable assigned from a TensorRT call takes the stub's return annotation (``network = builder.create_network(0)`` →
``INetworkDefinition``); parameters take their type from ``PARAMETERS`` below. An attribute used on a parameter that is
in neither place fails the test, so a new call joins the check instead of slipping past it.

TensorRT-11-only names: the code branches on the TensorRT version (``strongly_typed``: TensorRT 11 builds only strongly
typed networks; ``hasattr(trt.BuilderFlag, "TF32")``). Every TensorRT name used in such a branch must be in the 10.13
stubs or in ``TENSORRT_11_ONLY``, and ``TENSORRT_11_ONLY`` must be exactly the branch names the stubs lack — so the
list can neither hide a typo nor go stale.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from pathlib import Path

import pytest
from conftest import missing_in_ci

ROOT = Path(__file__).resolve().parents[1]


def _imports_tensorrt(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "tensorrt" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tensorrt":
            return True
        if isinstance(node, ast.Call) and _is_import_call(node, "tensorrt"):
            return True
    return False


def _is_import_call(node: ast.Call, module: str) -> bool:
    """``importlib.import_module("tensorrt")`` or ``__import__("tensorrt")``."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    first = node.args[0] if node.args else None
    return name in ("import_module", "__import__") and isinstance(first, ast.Constant) and first.value == module


def tensorrt_files() -> list[Path]:
    """Every project source (tests, hidden folders such as .venv, build output aside) that imports tensorrt."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("tests", "build", "dist")
                         and not d.endswith(".egg-info"))
        for name in sorted(f for f in files if f.endswith(".py")):
            path = Path(folder) / name
            if _imports_tensorrt(ast.parse(path.read_text(encoding="utf-8"))):
                found.append(path)
    return found


CHECKED = tensorrt_files()

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
"""``Owner.member`` names our code uses only on TensorRT 11 (absent from the 10.13 stubs). None today: on 11 the code
*omits* ``BuilderFlag.FP16``/``INT8`` (strongly typed networks take their types from the ONNX) and guards
``BuilderFlag.TF32`` with ``hasattr``; all exist in 10.x. A test keeps this set equal to the version-branch names
the stubs lack, so it follows what the code really does."""
VERSION_TESTS = re.compile(r"strongly_typed|tensorrt_major|__version__|hasattr\(")
"""An ``if`` whose test matches reads the TensorRT version (or probes for a name): its names are version-dependent."""


def _stub_files() -> list[Path]:
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p) / "tensorrt.pyi" for p in spec.submodule_search_locations if (Path(p) / "tensorrt.pyi").is_file()]


STUBS = _stub_files()
if not STUBS:
    missing_in_ci("tensorrt-stubs is not installed (pip install --no-deps tensorrt-stubs): the TensorRT API surface "
                  "cannot be checked", module_level=True)


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
        self.branches: list[tuple[int, int]] = []  # line ranges of the ifs that branch on the TensorRT version
        self.probed: list[tuple[str, str, int]] = []  # hasattr(<TensorRT object>, "NAME")

    def visit_If(self, node: ast.If | ast.IfExp) -> None:
        if VERSION_TESTS.search(ast.unparse(node.test)):
            self.branches.append((node.lineno, node.end_lineno or node.lineno))
        self.generic_visit(node)

    visit_IfExp = visit_If

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == "tensorrt":
                self.scopes[-1][alias.asname or "tensorrt"] = "module"

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        if getattr(node.func, "id", None) == "hasattr" and len(node.args) == 2 \
                and isinstance(node.args[1], ast.Constant):
            owner = self.type_of(node.args[0])
            if owner not in (None, NOT_TRT, UNKNOWN):
                self.probed.append((owner, str(node.args[1].value), node.lineno))

    def version_branch_names(self) -> set[str]:
        """``Owner.member`` of every TensorRT name used inside a version branch, and every hasattr-probed one."""
        inside = {f"{o}.{m}" for o, m, line in self.used if any(a <= line <= b for a, b in self.branches)}
        return inside | {f"{o}.{m}" for o, m, _ in self.probed}

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
            return "module" if _is_import_call(node, "tensorrt") else self.type_of(node.func)
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
            known = (owner, node.attr) in NOT_IN_STUBS or f"{owner}.{node.attr}" in TENSORRT_11_ONLY
            if not exists and node.attr != "__init__" and not known:
                self.missing.append(f"line {node.lineno}: {owner}.{node.attr}")
            return kind
        return None


def _check(path: Path, api: StubApi) -> Checker:
    checker = Checker(api)
    checker.visit(ast.parse(path.read_text(encoding="utf-8")))
    return checker


def test_every_file_importing_tensorrt_is_checked() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in CHECKED}
    expected = {"vanilladeploy/runtimes/tensorrt.py", "vanilladeploy/runtimes/trt_plan.py", "vanilladeploy/doctor.py"}
    assert expected <= names, names


def test_the_scan_finds_every_import_form(tmp_path: Path) -> None:
    for source in ("import tensorrt", "import tensorrt as trt", "from tensorrt import Builder",
                   "import importlib\ntrt = importlib.import_module('tensorrt')", "trt = __import__('tensorrt')"):
        assert _imports_tensorrt(ast.parse(source)), source
    for source in ("from exporters.trt_plan import tensorrt_missing", "x = 'import tensorrt'",
                   "import tensorrt_bindings"):
        assert not _imports_tensorrt(ast.parse(source)), source


ESSENTIAL = {  # per file, calls that must be among the followed ones (else the type inference lost track of them)
    "vanilladeploy/runtimes/tensorrt.py": ("module.Builder", "Builder.create_network", "module.OnnxParser",
                           "OnnxParser.parse_from_file", "Builder.build_serialized_network",
                           "IBuilderConfig.set_memory_pool_limit", "IOptimizationProfile.set_shape",
                           "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
                           "Runtime.deserialize_cuda_engine", "IBuilderConfig.set_timing_cache", "module.BuilderFlag",
                           "ICudaEngine.get_tensor_mode"),
    "vanilladeploy/doctor.py": ("module.Builder", "module.Logger", "Logger.WARNING"),
}


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_tensorrt_name_exists_in_the_stubs(path: Path, api: StubApi) -> None:
    checker = _check(path, api)
    assert not checker.missing, f"not in TensorRT 10.13's API: {checker.missing}"
    assert not checker.untyped, ("attribute used on a name of unknown type; add it to PARAMETERS (a TensorRT type) "
                                 f"or NOT_TENSORRT: {checker.untyped}")
    used = {f"{owner}.{name}" for owner, name, _ in checker.used}
    for essential in ESSENTIAL.get(path.relative_to(ROOT).as_posix(), ()):
        assert essential in used, f"{essential} was not followed: the type inference lost track of it"


@pytest.mark.parametrize(("file", "right", "wrong"), [
    ("vanilladeploy/runtimes/tensorrt.py", "execute_async_v3", "execute_async_v4"),
    ("vanilladeploy/runtimes/tensorrt.py", "trt.BuilderFlag.FP16", "trt.BuilderFlag.FP17"),
    ("vanilladeploy/runtimes/tensorrt.py", "create_optimization_profile", "create_profile"),
    ("vanilladeploy/runtimes/tensorrt.py", "set_input_shape", "set_binding_shape"),
    ("vanilladeploy/doctor.py", "trt.Logger.WARNING", "trt.Logger.WARN"),
    ("vanilladeploy/doctor.py", "trt.Builder(", "trt.builder("),
])
def test_a_wrong_name_is_caught(api: StubApi, tmp_path: Path, file: str, right: str, wrong: str) -> None:
    source = (ROOT / file).read_text(encoding="utf-8")
    assert right in source
    broken = tmp_path / "broken.py"
    broken.write_text(source.replace(right, wrong), encoding="utf-8")
    assert _check(broken, api).missing, f"renaming {right} to {wrong} went unnoticed"


def _branch_names(api: StubApi, paths: list[Path]) -> set[str]:
    return set().union(*(_check(p, api).version_branch_names() for p in paths))


def _absent(api: StubApi, names: set[str]) -> set[str]:
    return {n for n in names if not api.member(*n.rsplit(".", 1))[0] and tuple(n.rsplit(".", 1)) not in NOT_IN_STUBS}


def test_tensorrt_11_only_is_exactly_the_branch_names_the_stubs_lack(api: StubApi) -> None:
    names = _branch_names(api, CHECKED)
    # the branches are really seen: the flags TensorRT 10 needs and 11 lacks, and the hasattr-guarded TF32
    assert {"BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.TF32", "IBuilderConfig.set_flag"} <= names, names
    assert _absent(api, names) == TENSORRT_11_ONLY, "update TENSORRT_11_ONLY to the names only TensorRT 11 has"


def test_an_unlisted_tensorrt_11_name_in_a_version_branch_is_caught(api: StubApi, tmp_path: Path) -> None:
    source = (ROOT / "vanilladeploy" / "runtimes" / "tensorrt.py").read_text(encoding="utf-8")
    right = "    if opts.precision == \"fp16\" and not strongly_typed:\n"
    assert right in source
    broken = tmp_path / "engine_11.py"
    broken.write_text(source.replace(right, "    if strongly_typed:\n        config.set_flag(trt.BuilderFlag."
                                     "STRONGLY_TYPED_ONLY_V11)\n" + right), encoding="utf-8")
    names = _branch_names(api, [broken])
    assert _absent(api, names) == {"BuilderFlag.STRONGLY_TYPED_ONLY_V11"} != TENSORRT_11_ONLY
