"""The real TensorRT Python bindings from PyPI, imported without a GPU or TensorRT's libraries.

    python -m tools.trt_bindings                      # fetch every version below, list them
    python -m tools.trt_bindings show 10.3.0 Builder  # what one version has under a name

Why this works: the bindings' extension (`tensorrt.so`, ~5 MB) registers every class, method,
enum and property itself, through pybind11, when it is imported. Of TensorRT's libraries it
needs only a handful of C entry points (`createInferBuilder_INTERNAL`,
`createInferRuntime_INTERNAL`, `createNvOnnxParser_INTERNAL`, `getPluginRegistry`, ...), and
calls none of them at import. So stub libraries under the sonames it names (`libnvinfer.so.10`,
...), each defining those symbols as functions that return 0, are enough for `import tensorrt`
to succeed on any x86 machine with a C compiler. Anything that would reach TensorRT then fails
cleanly (`Builder()`: "factory function returned nullptr"), which is fine: what the conformance
test needs is the API surface, and this is the exact surface a Jetson gets, not a model of it.

The wheels (~1 MB each, never committed) and what is built from them are cached under
`$EDGE_TRT_BINDINGS_CACHE`, else `$XDG_CACHE_HOME/edge/tensorrt-bindings` (~/.cache/...).
This module imports only the standard library: it is also run, as a script, inside the
bindings' environment to dump the surface as JSON.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bump when what is built in the cache changes, so old builds are not reused.
HARNESS = 1


@dataclass(frozen=True)
class Bindings:
    distribution: str
    version: str
    why: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"


# Every version the backend is checked against. PyPI has wheels for CPython 3.10 and 3.11
# (8.6.1: 3.6-3.11 only). The `tensorrt` package's `__version__` is the version below.
BINDINGS = (
    Bindings("tensorrt-bindings", "8.6.1", "TensorRT 8.6: JetPack 6.0 (8.6.2), the line before 10"),
    Bindings("tensorrt-cu12-bindings", "10.2.0.post1", "the newest 10.x below the supported 10.3"),
    Bindings("tensorrt-cu12-bindings", "10.3.0", "JetPack 6.1 and 6.2, the oldest supported 10.x"),
    Bindings("tensorrt-cu12-bindings", "10.16.1.11", "the newest 10.x on PyPI"),
    # The cu12 and cu13 wheels of 11.4.0.106 carry the same tensorrt.so, byte for byte.
    Bindings("tensorrt-cu13-bindings", "11.4.0.106", "the newest 11.x on PyPI (x86 `pip install tensorrt`)"),
)


class BindingsUnavailable(Exception):
    """A version could not be fetched or built here (no network, no C compiler, no wheel)."""


def cache_root() -> Path:
    if os.environ.get("EDGE_TRT_BINDINGS_CACHE"):
        return Path(os.environ["EDGE_TRT_BINDINGS_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge" / "tensorrt-bindings"


@dataclass(frozen=True)
class Installed:
    bindings: Bindings
    site: Path  # holds the package `tensorrt/`, as JetPack installs it
    stubs: Path  # the stub libraries, for LD_LIBRARY_PATH

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.site)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.stubs), env.get("LD_LIBRARY_PATH")]))
        return env


def fetch(bindings: Bindings, root: Path) -> Path:
    """The wheel for this interpreter, downloaded once with pip."""
    wheels = root / "wheels"
    stem = f"{bindings.distribution.replace('-', '_')}-{bindings.version}-"
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = list(wheels.glob(f"{stem}{tag}-*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    command += ["--timeout", "30", "--retries", "1", "--dest", str(wheels), bindings.requirement]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    found = list(wheels.glob(f"{stem}{tag}-*.whl"))
    if done.returncode != 0 or not found:
        said = [line for line in (done.stderr + done.stdout).splitlines() if "WARNING" not in line]
        raise BindingsUnavailable(f"pip could not download {bindings.requirement}: {' '.join(said[-2:])}")
    return found[0]


def install(bindings: Bindings, root: Path | None = None) -> Installed:
    """Fetched, unpacked as the package `tensorrt`, and its stub libraries built (cached)."""
    root = root or cache_root()
    wheel = fetch(bindings, root)
    target = root / f"{wheel.stem}-h{HARNESS}"
    if not target.is_dir():
        building = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            _unpack(wheel, building / "site")
            _build_stubs(building / "site" / "tensorrt", building / "stubs")
            building.rename(target)  # whole or not at all; a concurrent run may have won
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(building, ignore_errors=True)
    return Installed(bindings, target / "site", target / "stubs")


def _unpack(wheel: Path, site: Path) -> None:
    # A wheel is a zip of the import tree; these have no scripts or data to install. The
    # package is `tensorrt_bindings` on PyPI (the `tensorrt` meta-package re-exports it) and
    # `tensorrt` on a Jetson; its files import `.tensorrt` and `tensorrt`, so it is unpacked
    # under the Jetson's name and `import tensorrt` is what the backend does.
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    (site / "tensorrt_bindings").rename(site / "tensorrt")


def _build_stubs(package: Path, stubs: Path) -> None:
    extension = package / "tensorrt.so"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BindingsUnavailable("no C compiler (cc, gcc) for the stub libraries: apt-get install gcc")
    stubs.mkdir(parents=True)
    source = stubs / "stubs.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in missing_symbols(extension)))
    for soname in tensorrt_sonames(extension):
        # -nostdlib: the stubs call nothing, so no C library or start files are needed.
        command = [compiler, "-shared", "-fPIC", "-nostdlib", f"-Wl,-soname,{soname}"]
        done = subprocess.run(
            [*command, "-o", str(stubs / soname), str(source)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise BindingsUnavailable(f"{compiler} could not build {soname}: {done.stderr.strip()[-300:]}")


def _readelf(*args: str) -> str:
    if shutil.which("readelf") is None:
        raise BindingsUnavailable("readelf is missing (binutils, which gcc brings)")
    return subprocess.run(["readelf", "-W", *args], capture_output=True, text=True, check=True).stdout


def tensorrt_sonames(extension: Path) -> list[str]:
    """The NEEDED libraries that are TensorRT's own (libnvinfer, libnvonnxparser, ...)."""
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf("--dynamic", str(extension)))
    return [name for name in needed if name.startswith("libnv")]


def missing_symbols(extension: Path) -> list[str]:
    """Undefined, unversioned, non-weak symbols this process cannot already resolve.

    Python's C API and the C library resolve from the interpreter itself; versioned symbols
    (GLIBC_*, GLIBCXX_*) come from system libraries; what is left is TensorRT's (8.6 also
    names its UFF and Caffe parsers', as mangled C++ names, which are valid C identifiers)."""
    process = ctypes.CDLL(None)
    names = []
    for line in _readelf("--dyn-syms", str(extension)).splitlines():
        fields = line.split()
        # Num: Value Size Type Bind Vis Ndx Name
        if len(fields) < 8 or fields[6] != "UND" or fields[4] == "WEAK" or "@" in fields[7]:
            continue
        if not hasattr(process, fields[7]):
            names.append(fields[7])
    return sorted(set(names))


def surface(installed: Installed) -> dict[str, Any]:
    """Every public name of that version's `tensorrt`, dotted ("IBuilderConfig.set_flag"), with
    its kind and, for callables, their signature lines; read in a subprocess."""
    done = subprocess.run(
        [sys.executable, "-c", Path(__file__).read_text(), "--dump"],
        env=installed.environment(),
        cwd=installed.site,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{installed.bindings.requirement} does not import: {done.stderr.strip()[-1500:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- run inside the bindings' environment -----------------------------------------------------

KEPT_DUNDERS = {"__init__", "__version__", "__call__"}


def _signatures(name: str, value: Any) -> list[str]:
    """pybind11 writes each overload's signature as a line of `__doc__`; Python functions (the
    package's own `nptype`, `volume`) have `inspect.signature`."""
    function = getattr(value, "__func__", value)
    if inspect.isfunction(function):
        return [f"{name}{inspect.signature(function)}"]
    lines = (getattr(value, "__doc__", None) or "").splitlines()
    pattern = re.compile(rf"^(?:\d+\. )?{re.escape(name)}\((.*)\)(?: -> .*)?$")
    found = [line.split(". ", 1)[-1] if line[:1].isdigit() else line for line in lines if pattern.match(line)]
    return [line for line in found if "(*args, **kwargs)" not in line]


def _describe(owner: Any, attr: str) -> dict[str, Any]:
    static = inspect.getattr_static(owner, attr)
    value = getattr(owner, attr)
    if isinstance(static, property):
        return {"kind": "property", "writable": static.fset is not None}
    if isinstance(value, type):
        return {"kind": "class"}
    if isinstance(owner, type) and hasattr(owner, "__members__") and isinstance(value, owner):
        return {"kind": "enum_member"}
    if callable(value):
        return {"kind": "function", "signatures": _signatures(attr, value)}
    return {"kind": "attribute", "type": type(value).__name__}


def _dump() -> dict[str, Any]:
    import tensorrt

    names: dict[str, Any] = {}

    def visit(prefix: str, owner: Any, depth: int) -> None:
        for attr in dir(owner):
            if attr.startswith("__") and attr not in KEPT_DUNDERS:
                continue
            try:
                entry = _describe(owner, attr)
            except Exception as exc:  # noqa: BLE001 - one odd attribute must not hide the rest
                entry = {"kind": "unreadable", "error": repr(exc)}
            dotted = f"{prefix}{attr}"
            names[dotted] = entry
            value = getattr(owner, attr, None)
            own = getattr(value, "__module__", "").startswith("tensorrt")
            if entry["kind"] == "class" and own and depth < 2:
                visit(f"{dotted}.", value, depth + 1)

    visit("", tensorrt, 0)
    return {"version": str(tensorrt.__version__), "names": names}


# --- the developer's command ----------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version", nargs="?", help="one of the versions below")
    parser.add_argument("names", nargs="*", help="dotted names or prefixes to show")
    parser.add_argument("--dump", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dump:
        json.dump(_dump(), sys.stdout)
        return 0
    chosen = [b for b in BINDINGS if args.version in (None, b.version)]
    if not chosen:
        parser.error(f"no such version; known: {', '.join(b.version for b in BINDINGS)}")
    for bindings in chosen:
        installed = install(bindings)
        print(f"{bindings.requirement:40} {installed.site}  ({bindings.why})")
        if args.names:
            for name, entry in surface(installed)["names"].items():
                if any(name == n or name.startswith(f"{n}.") for n in args.names):
                    print(f"  {name}: {json.dumps(entry)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
