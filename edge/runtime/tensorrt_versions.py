"""Which TensorRT versions the backend builds and serves with, and what to tell a field engineer
about the others. Pure Python: nothing here imports TensorRT, so the engine manager, `edge doctor`
and the tests can ask it anywhere (`edge.runtime.tensorrt` re-exports it).

Three API flavours are supported, because the Python API differs between them in ways the
builder must follow (checked against each version's real bindings by the conformance test):

- "8.6" (JetPack 6.0 ships 8.6.2): `create_network(0)` makes an implicit-batch network the ONNX
  parser refuses, so the explicit-batch flag is set; there is no STRONGLY_TYPED flag, so INT8
  comes from the QDQ graph with `BuilderFlag.INT8`; there is no `IProgressMonitor`.
- "10" (10.3 = JetPack 6.1/6.2, 10.13 and later = JetPack 7, newer 10.x on x86): INT8 from the
  QDQ graph as a strongly typed network, FP16 with `BuilderFlag.FP16`, build progress reported.
- "11" (x86 and SBSA only; no JetPack ships it): weak typing is gone (no precision builder flags,
  every network is strongly typed), so FP16 can only come from an FP16 ONNX file.

Refused by name, with the upgrade to take: anything before 8.6 (JetPack 5 ships 8.5.2), the 9.x
previews, 10.0 to 10.2 (no JetPack shipped them; 10.3 is the oldest 10.x the conformance test
holds the backend to) and any major version this build does not know yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SUPPORTED = "TensorRT 8.6, 10.3 or newer 10.x, and 11.x"
UPGRADE = (
    "on a Jetson install JetPack 6.1 or newer (TensorRT 10.3+); elsewhere install TensorRT 10.3 or newer"
)


@dataclass(frozen=True)
class VersionSupport:
    supported: bool
    flavour: str | None  # "8.6", "10", "11"; None when refused
    message: str  # one plain sentence naming the version (and, when refused, the upgrade)


def version_support(version: str) -> VersionSupport:
    """Whether TensorRT `version` (its `__version__`, e.g. "10.3.0.30") is supported, and how."""
    parsed = re.match(r"\s*(\d+)\.(\d+)", version)
    if parsed is None:
        return VersionSupport(
            False, None, f"cannot read the TensorRT version {version!r}: this build supports {SUPPORTED}"
        )
    major, minor = int(parsed.group(1)), int(parsed.group(2))
    named = f"TensorRT {version.strip()}"
    if (major, minor) == (8, 6):
        return VersionSupport(
            True,
            "8.6",
            f"{named} is supported (the JetPack 6.0 line): explicit-batch networks, INT8 from the "
            "QDQ model with the INT8 builder flag, and no build progress bar",
        )
    if major < 8 or (major == 8 and minor < 6):
        return VersionSupport(
            False,
            None,
            f"{named} is not supported (JetPack 5 and older ship it): this build needs {SUPPORTED}; "
            f"{UPGRADE}",
        )
    if major == 9:
        return VersionSupport(
            False, None, f"{named} (a preview line) is not supported: this build needs {SUPPORTED}; {UPGRADE}"
        )
    if major == 10 and minor < 3:
        return VersionSupport(
            False,
            None,
            f"{named} is older than 10.3, the oldest 10.x this build supports: install TensorRT 10.3 or "
            "newer (on a Jetson: JetPack 6.1 or newer)",
        )
    if major == 10:
        return VersionSupport(
            True,
            "10",
            f"{named} is supported: INT8 from the QDQ model as a strongly typed network, FP16 and "
            "FP32 from the FP32 model",
        )
    if major == 11:
        return VersionSupport(
            True,
            "11",
            f"{named} is supported: every network is strongly typed, so INT8 comes from the QDQ "
            "model, FP32 from the FP32 model and FP16 only from an FP16 model where one ships",
        )
    return VersionSupport(
        False,
        None,
        f"{named} is newer than this build knows (it supports {SUPPORTED}): install a TensorRT 10.x "
        "or 11.x release, or update this software",
    )
