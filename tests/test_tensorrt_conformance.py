"""The TensorRT backend against the real TensorRT Python bindings of every version it meets.

edge/runtime/tensorrt.py declares every TensorRT name it uses (`TRT_API`, by flavour) and which
versions it accepts (`version_support`). Here, with no GPU: the declaration is complete (every
`trt.X.Y` chain in the source, and every member name the code touches that TensorRT also has)
and used; each declared name exists in the real bindings of each supported version (imported
against stub libraries by tools/trt_bindings.py), with a signature that takes the call the code
makes and a writable property where the code assigns one; the version gate accepts or refuses
each real version's `__version__` by name.

The wheels come from PyPI on first use (about 6 MB, cached). Offline, a version that cannot be
fetched skips; under CI it fails, so the check never silently stops running.
"""

from __future__ import annotations

import ast
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import edge.runtime.tensorrt as backend
from tools import trt_bindings
from tools.trt_bindings import BINDINGS, Bindings

SOURCE = Path(backend.__file__)
FLAVOURS = {"common", "8.6", "10", "11"}
CACHE = trt_bindings.cache_root()  # read now: the suite's autouse fixture moves HOME per test
IN_CI = bool(os.environ.get("CI"))

# Member names the backend uses on objects that are not TensorRT's, which some TensorRT class
# happens to have too. Any other name the code touches that a TensorRT class has must be
# declared in TRT_API (the check cannot see a receiver's type, so it errs towards asking).
NOT_TENSORRT = {
    "name", "dtype", "shape",  # TensorSpec's fields
    "nbytes", "itemsize",  # numpy arrays and dtypes
    "message",  # EdgeError.message
    "append", "clear", "pop",  # lists and dicts
    "device_memory", "free",  # RuntimeSettings.device_memory; the DeviceMemory layer
}  # fmt: skip


def declared() -> dict[str, tuple[str, ...]]:
    table = getattr(backend, "TRT_API", None)
    assert isinstance(table, dict), "edge/runtime/tensorrt.py must declare TRT_API (see this module)"
    return table


def in_scope(flavour: str | None) -> set[str]:
    table = declared()
    return set(table.get("common", ())) | set(table.get(flavour or "", ()))


# --- what the source uses ---------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    name: str  # dotted under `tensorrt` when rooted, else the attribute's name
    line: int
    rooted: bool  # `trt.X.Y`: the name is TensorRT's for certain
    call: tuple[int, frozenset[str]] | None = None  # (positional count, keywords) when called
    assigned: bool = False
    override_of: str | None = None  # a method defined in a subclass of this TensorRT class


def _chain(node: ast.expr) -> tuple[list[str], ast.expr]:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return parts, node


def _is_trt(node: ast.expr) -> bool:
    """The module reaches TensorRT through the name `trt` (and `_trt()`, which returns it)."""
    if isinstance(node, ast.Call):
        return isinstance(node.func, ast.Name) and node.func.id == "_trt"
    return isinstance(node, ast.Name) and node.id == "trt"


def _call_shape(call: ast.Call) -> tuple[int, frozenset[str]]:
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return -1, frozenset()  # *args or **kwargs: the shape is not known statically
    return len(call.args), frozenset(str(k.arg) for k in call.keywords)


@functools.cache
def uses() -> tuple[Use, ...]:
    tree = ast.parse(SOURCE.read_text())
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parent = parents.get(node)
            called = isinstance(parent, ast.Call) and parent.func is node
            call = _call_shape(parent) if called and isinstance(parent, ast.Call) else None
            parts, root = _chain(node)
            rooted = _is_trt(root)
            if rooted and isinstance(parent, ast.Attribute):
                continue  # only the longest chain: its prefixes exist if it does
            if not rooted and node.attr.startswith("__"):
                continue  # super().__init__(...): Python's protocol, not TensorRT's API
            name = ".".join(parts) if rooted else node.attr
            found.append(Use(name, node.lineno, rooted, call, isinstance(node.ctx, ast.Store)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            # getattr(trt, "X"), hasattr(trt, "X"); a computed name cannot be checked, so it fails
            if node.func.id in {"getattr", "hasattr", "setattr"} and len(node.args) >= 2:
                target, attr = node.args[0], node.args[1]
                if _is_trt(target):
                    literal = isinstance(attr, ast.Constant) and isinstance(attr.value, str)
                    name = str(attr.value) if literal else f"{node.func.id}(trt, <computed>)"
                    found.append(Use(name, node.lineno, rooted=True))
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                parts, root = _chain(base)
                if not _is_trt(root):
                    continue
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                        arity = len(item.args.args) - 1  # less self
                        shape = (arity, frozenset[str]())
                        found.append(Use(item.name, item.lineno, False, shape, override_of=".".join(parts)))
    return tuple(found)


def rooted_names() -> set[str]:
    return {use.name for use in uses() if use.rooted}


def member_names_used() -> set[str]:
    return {use.name for use in uses() if not use.rooted}


# --- signatures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    has_default: bool
    kind: str  # "positional", "keyword" (after *), "varargs", "varkw"


def _top_level_parts(line: str) -> list[str]:
    """The parameter list split at its own commas (not those inside `List[...]` or `<...>`)."""
    parts, depth, current = [], 0, ""
    for char in line[line.index("(") + 1 :]:
        if char in ")]>}" and depth == 0:
            break
        depth += (char in "([<{") - (char in ")]>}")
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    return [*parts, current.strip()] if current.strip() else parts


def parse_signature(line: str) -> list[Param]:
    """pybind11's `name(self: T, a: T, b: T = default, *args, **kwargs) -> R`, or Python's."""
    parsed, keyword_only = [], False
    for text in _top_level_parts(line):
        name = re.split(r"[:=]", text, maxsplit=1)[0].strip()
        if name == "/":
            continue
        if name.startswith("**"):
            parsed.append(Param(name[2:], True, "varkw"))
        elif name.startswith("*"):
            if name != "*":
                parsed.append(Param(name[1:], True, "varargs"))
            keyword_only = True
        else:
            parsed.append(Param(name, "=" in text, "keyword" if keyword_only else "positional"))
    return parsed


def refuses(line: str, positional: int, keywords: frozenset[str], *, bound: bool) -> str | None:
    """Why `line` would not take such a call, or None if it would."""
    params = parse_signature(line)
    if bound and params and params[0].name == "self":
        params = params[1:]
    ordered = [p for p in params if p.kind == "positional"]
    if positional > len(ordered) and not any(p.kind == "varargs" for p in params):
        return f"{positional} positional arguments, it takes {len(ordered)}"
    named = {p.name for p in params if p.kind in {"positional", "keyword"}}
    unknown = keywords - named
    if unknown and not any(p.kind == "varkw" for p in params):
        return f"no parameter {', '.join(sorted(unknown))}"
    filled = {p.name for p in ordered[:positional]} | keywords
    unfilled = [p.name for p in params if p.kind in {"positional", "keyword"} and not p.has_default]
    missing = [name for name in unfilled if name not in filled]
    return f"missing {', '.join(missing)}" if missing else None


# --- the real bindings ------------------------------------------------------------------------


@functools.cache
def _surface(bindings: Bindings) -> dict[str, Any] | str:
    try:
        return trt_bindings.surface(trt_bindings.install(bindings, CACHE))
    except trt_bindings.BindingsUnavailable as exc:
        return str(exc)


def surface_of(bindings: Bindings) -> dict[str, Any]:
    found = _surface(bindings)
    if isinstance(found, str):
        if IN_CI:
            pytest.fail(f"{bindings.requirement}: {found} (CI must check every version)")
        pytest.skip(f"{bindings.requirement}: {found}")
    return found


def support_of(bindings: Bindings) -> tuple[Any, dict[str, Any]]:
    found = surface_of(bindings)
    return backend.version_support(found["version"]), found["names"]


VERSIONS = pytest.mark.parametrize("bindings", BINDINGS, ids=[b.version for b in BINDINGS])


# --- the declaration --------------------------------------------------------------------------


def test_the_backend_declares_its_tensorrt_api_and_version_gate() -> None:
    table = declared()
    assert set(table) <= FLAVOURS, f"unknown flavours {set(table) - FLAVOURS}"
    assert "common" in table
    for flavour, names in table.items():
        assert isinstance(names, tuple), flavour
        assert all(isinstance(n, str) for n in names), flavour
        assert len(set(names)) == len(names), f"{flavour} lists a name twice"
    assert callable(getattr(backend, "version_support", None)), "version_support(version) is missing"


def test_every_trt_attribute_chain_in_the_source_is_declared() -> None:
    everything = {name for names in declared().values() for name in names}
    missing = {use.name: use.line for use in uses() if use.rooted and use.name not in everything}
    assert not missing, f"used through `trt` but not in TRT_API (name: line): {missing}"


@pytest.fixture(scope="module")
def every_member_name() -> set[str]:
    """The member names of TensorRT's classes, in any version that can be had here."""
    names: set[str] = set()
    for bindings in BINDINGS:
        found = _surface(bindings)
        if isinstance(found, str):
            surface_of(bindings)  # fails under CI, skips elsewhere
            continue
        names |= {dotted.rsplit(".", 1)[1] for dotted in found["names"] if "." in dotted}
    return names


def test_every_tensorrt_member_the_code_touches_is_declared(every_member_name: set[str]) -> None:
    """`builder.create_network(...)`: the receiver's type is not in the source, but a member
    name TensorRT has is declared, or named in NOT_TENSORRT as some other object's."""
    everything = {name for names in declared().values() for name in names}
    declared_members = {name.rsplit(".", 1)[-1] for name in everything}
    undeclared = {
        use.name: use.line
        for use in uses()
        if not use.rooted
        and use.name in every_member_name
        and use.name not in declared_members
        and use.name not in NOT_TENSORRT
    }
    assert not undeclared, (
        f"TensorRT has members of these names, which the code uses (name: line): {undeclared}; "
        "declare them in TRT_API as Class.member, or, if the object is not TensorRT's, add the "
        "name to NOT_TENSORRT in this test"
    )


def test_every_declared_name_is_used() -> None:
    """A stale entry would demand a name the code no longer needs (and might not exist)."""
    rooted = rooted_names()
    members = member_names_used()
    prefixes = {".".join(name.split(".")[:i]) for name in rooted for i in range(1, name.count(".") + 2)}
    everything = {name for names in declared().values() for name in names}
    used = {n for n in everything if n in prefixes or n.rsplit(".", 1)[-1] in members}
    used |= {n for n in everything if any(u.startswith(f"{n}.") for u in used)}
    assert not everything - used, f"declared in TRT_API, not used: {sorted(everything - used)}"


# --- each real version ------------------------------------------------------------------------


def _named(version: str, message: str) -> bool:
    major_minor = ".".join(version.split(".")[:2])
    return major_minor in message


@VERSIONS
def test_the_version_gate_on_the_real_bindings(bindings: Bindings) -> None:
    support, _ = support_of(bindings)
    version = surface_of(bindings)["version"]
    assert version.startswith(bindings.version.split(".post")[0]), version
    major, minor = (int(part) for part in version.split(".")[:2])
    if major == 10 and minor >= 3:
        assert support.supported, f"{version} must be supported: {support}"
        assert support.flavour == "10", f"{version}: {support}"
    elif not ((major, minor) == (8, 6) or major == 11):
        assert not support.supported, f"{version} must be refused: {support}"
    if support.supported:
        expected = "8.6" if major == 8 else str(major)
        assert support.flavour == expected, f"{version}: {support}"
        assert support.flavour in declared(), f"{version} is supported but TRT_API has no {expected!r}"
    else:
        assert support.flavour is None
        assert _named(version, support.message), f"the refusal must name {version}: {support.message!r}"


@VERSIONS
def test_every_declared_name_exists_in_each_supported_version(bindings: Bindings) -> None:
    support, names = support_of(bindings)
    if not support.supported:
        pytest.skip(f"refused by the gate: {support.message}")
    missing = sorted(name for name in in_scope(support.flavour) if name not in names)
    assert not missing, f"TensorRT {bindings.version} has none of {missing}"


@VERSIONS
def test_every_call_fits_each_supported_version(bindings: Bindings) -> None:
    support, names = support_of(bindings)
    if not support.supported:
        pytest.skip(f"refused by the gate: {support.message}")
    scope = in_scope(support.flavour)
    problems = []
    for use in uses():
        candidates = _candidates(use, scope, names)
        if not candidates:
            continue
        problem = _check(use, candidates, names)
        if problem:
            problems.append(f"line {use.line}: {use.name}: {problem}")
    assert not problems, f"TensorRT {bindings.version}:\n" + "\n".join(problems)


def _candidates(use: Use, scope: set[str], names: dict[str, Any]) -> list[str]:
    """The declared, existing names a use may reach in this version."""
    if use.override_of is not None:
        target = f"{use.override_of}.{use.name}"
        return [target] if use.override_of in scope or target in scope else []
    if use.rooted:
        return [use.name] if use.name in scope and use.name in names else []
    return [n for n in scope if n.rsplit(".", 1)[-1] == use.name and "." in n and n in names]


def _check(use: Use, candidates: list[str], names: dict[str, Any]) -> str | None:
    if use.override_of is not None:
        target = candidates[0]
        if target not in names:
            return f"overrides {target}, which this version does not have"
    if use.assigned:
        if not any(names[n]["kind"] == "property" and names[n]["writable"] for n in candidates):
            return f"assigned, but {candidates} is no writable property here"
        return None
    if use.call is None:
        return None
    positional, keywords = use.call
    if positional < 0:
        return None  # *args / **kwargs at the call
    reasons = []
    for name in candidates:
        entry, bound = names[name], not use.rooted or use.override_of is not None
        if entry["kind"] == "class":
            entry, bound = names.get(f"{name}.__init__", {"signatures": []}), True
        elif entry["kind"] != "function":
            reasons.append(f"{name} is a {entry['kind']}, not callable")
            continue
        signatures = entry.get("signatures") or []
        if not signatures:
            return None  # no signature to check against (pybind11 gave none)
        why = [refuses(s, positional, keywords, bound=bound) for s in signatures]
        if any(w is None for w in why):
            return None
        reasons.append(f"{signatures[0]} refuses the call ({'; '.join(w for w in why if w)})")
    return " / ".join(reasons)


# --- the gate on version strings (no bindings needed) -----------------------------------------

REFUSED = ["7.1.3", "8.5.2.2", "10.0.1", "10.1.0", "10.2.0", "10.2.0.post1"]  # 8.5.2: JetPack 5.1
SUPPORTED_10 = ["10.3.0", "10.3.0.30", "10.4.0", "10.7.0.post1", "10.16.1.11"]  # 10.3.0.30: JetPack 6.1
EITHER = ["8.6.1", "8.6.2.3", "11.0.0.114", "11.4.0.106"]  # 8.6.2.3: JetPack 6.0


@pytest.mark.parametrize("version", REFUSED)
def test_the_gate_refuses_old_versions_by_name(version: str) -> None:
    support = backend.version_support(version)
    assert not support.supported
    assert support.flavour is None
    assert _named(version, support.message), support.message


@pytest.mark.parametrize("version", SUPPORTED_10)
def test_the_gate_accepts_every_10x_from_10_3(version: str) -> None:
    support = backend.version_support(version)
    assert support.supported, support
    assert support.flavour == "10", support


@pytest.mark.parametrize("version", EITHER)
def test_the_gate_supports_or_refuses_8_6_and_11_by_name(version: str) -> None:
    support = backend.version_support(version)
    if support.supported:
        assert support.flavour == ("8.6" if version.startswith("8.") else "11"), support
    else:
        assert support.flavour is None, support
        assert _named(version, support.message), support


def test_the_signature_reader() -> None:
    line = "set_timing_cache(self: IBuilderConfig, cache: ITimingCache, ignore_mismatch: bool) -> bool"
    assert refuses(line, 1, frozenset({"ignore_mismatch"}), bound=True) is None
    assert refuses(line, 2, frozenset(), bound=True) is None
    assert refuses(line, 1, frozenset(), bound=True) == "missing ignore_mismatch"
    assert refuses(line, 1, frozenset({"ignore"}), bound=True) == "no parameter ignore"
    assert refuses(line, 3, frozenset(), bound=True) == "3 positional arguments, it takes 2"
    defaults = "create_network(self: Builder, flags: int = 0) -> INetworkDefinition"
    assert refuses(defaults, 0, frozenset(), bound=True) is None
    shapes = "f(self: X, a: List[Dims] = [<DataType.FLOAT: 0>, 1], *, b: int) -> None"
    assert [p.name for p in parse_signature(shapes)] == ["self", "a", "b"]
    assert refuses(shapes, 1, frozenset({"b"}), bound=True) is None
    assert refuses(shapes, 2, frozenset(), bound=True) == "2 positional arguments, it takes 1"
