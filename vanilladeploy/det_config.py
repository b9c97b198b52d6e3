"""mmdetection configs read as plain data: the text is parsed, never executed.

A detection checkpoint carries its whole config as Python source (``meta['config']``); ``--det-config FILE`` gives
one for a checkpoint without it. Executing either would run whatever the file says, so :func:`parse_config` walks the
syntax tree and accepts only data: top-level assignments ``name = value`` whose values are literals (numbers,
strings, ``True``/``False``/``None``), lists, tuples, ``{...}`` dicts, ``dict(key=value, **other)`` calls, names of
values assigned above, and arithmetic (``+ - * / // % **``) on numbers (``+`` also joins two strings, as
``data_root + 'train2017/'`` does). Anything else — an import, another call, an attribute, a lambda — is refused with
its line number.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable
from typing import Any

from vanilladeploy.errors import CheckpointError

MAX_CONFIG_CHARS = 1 << 20
"""A config is a few kB of text; a megabyte is refused before parsing."""
_MAX_INT = 1 << 63
_NUMBER_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}


class ConfigError(CheckpointError):
    """A config that is not plain data (or not Python at all)."""


def parse_config(text: str, *, source: str) -> dict[str, Any]:
    """The top-level assignments of an mmdetection config as a dict of plain values; raises :class:`ConfigError`
    naming ``source`` and the line for anything that is not data."""
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(f"{source}: the config is {len(text):,} characters; refusing more than "
                          f"{MAX_CONFIG_CHARS:,}.")
    try:
        tree = ast.parse(text, mode="exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise ConfigError(f"{source}: the config is not valid Python ({type(e).__name__}: {e}).") from None
    values: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue  # a docstring
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise _refuse(source, stmt, f"a {type(stmt).__name__} statement")
        try:
            values[stmt.targets[0].id] = _Evaluator(source, values).eval(stmt.value)
        except RecursionError:
            raise ConfigError(f"{source}: line {stmt.lineno}: the value is nested too deeply.") from None
    return values


def _refuse(source: str, node: ast.AST, what: str) -> ConfigError:
    return ConfigError(f"{source}: line {getattr(node, 'lineno', '?')}: {what} is not plain data; a config is read "
                       "as literals, dict(...), lists, tuples and arithmetic on numbers, and nothing in it runs.")


class _Evaluator:
    def __init__(self, source: str, names: dict[str, Any]) -> None:
        self.source, self.names = source, names

    def eval(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
            return self._number(node, node.value)
        if isinstance(node, ast.List):
            return [self.eval(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(self.eval(e) for e in node.elts)
        if isinstance(node, ast.Dict):
            return self._dict_literal(node)
        if isinstance(node, ast.Call):
            return self._dict_call(node)
        if isinstance(node, ast.Name):
            if node.id not in self.names:
                raise _refuse(self.source, node, f"the name {node.id!r} (not assigned above)")
            return self.names[node.id]
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            value = self.eval(node.operand)
            if not _is_number(value):
                raise _refuse(self.source, node, "a sign on a non-number")
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp) and type(node.op) in _NUMBER_OPS:
            return self._binop(node)
        raise _refuse(self.source, node, f"a {type(node).__name__} expression")

    def _number(self, node: ast.AST, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _MAX_INT:
            raise _refuse(self.source, node, "an integer this large")
        return value

    def _binop(self, node: ast.BinOp) -> Any:
        left, right = self.eval(node.left), self.eval(node.right)
        if isinstance(node.op, ast.Add) and isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_CONFIG_CHARS:
                raise _refuse(self.source, node, "a string this long")
            return left + right
        if not (_is_number(left) and _is_number(right)):
            raise _refuse(self.source, node, f"{type(node.op).__name__} on {type(left).__name__} and "
                                             f"{type(right).__name__}")
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise _refuse(self.source, node, "a power this large")
        try:
            return self._number(node, _NUMBER_OPS[type(node.op)](left, right))
        except (ArithmeticError, ValueError) as e:
            raise ConfigError(f"{self.source}: line {node.lineno}: {e}.") from None

    def _dict_literal(self, node: ast.Dict) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for k, v in zip(node.keys, node.values):
            if k is None:  # {**other}
                out.update(self._mapping(v))
                continue
            key = self.eval(k)
            if not isinstance(key, (str, int, float, bool, tuple)):
                raise _refuse(self.source, k, "a dict key of this kind")
            out[key] = self.eval(v)
        return out

    def _dict_call(self, node: ast.Call) -> dict[str, Any]:
        if not (isinstance(node.func, ast.Name) and node.func.id == "dict") or node.args:
            raise _refuse(self.source, node, f"a call of {node.func.id!r}" if isinstance(node.func, ast.Name)
                          else "a call")
        out: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:  # dict(**other)
                out.update(self._mapping(kw.value))
            else:
                out[kw.arg] = self.eval(kw.value)
        return out

    def _mapping(self, node: ast.AST) -> dict[Any, Any]:
        value = self.eval(node)
        if not isinstance(value, dict):
            raise _refuse(self.source, node, "** on a non-dict")
        return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


__all__ = ["ConfigError", "MAX_CONFIG_CHARS", "parse_config"]
