from __future__ import annotations

import re
from pathlib import Path

from edge.errors import Code
from edge.sync.protocol import WireCode

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_refusal_code_is_documented() -> None:
    text = (DOCS / "codes.md").read_text()
    missing = [code.value for code in Code if f"`{code.value}`" not in text]
    assert not missing, f"document these codes in docs/codes.md: {missing}"


def _wire_section() -> str:
    text = (DOCS / "codes.md").read_text()
    assert "\n## Wire codes\n" in text, "docs/codes.md needs its '## Wire codes' section"
    return text.split("\n## Wire codes\n", 1)[1].split("\n## ", 1)[0]


def test_every_wire_code_is_documented_and_every_documented_one_exists() -> None:
    documented = re.findall(r"^\| `([A-Z0-9_]+)` \|", _wire_section(), re.MULTILINE)
    assert len(documented) == len(set(documented)), "a wire code is documented twice"
    defined = {code.value for code in WireCode}
    assert not defined - set(documented), (
        f"document these wire codes in docs/codes.md: {sorted(defined - set(documented))}"
    )
    assert not set(documented) - defined, (
        f"docs/codes.md documents wire codes that do not exist: {sorted(set(documented) - defined)}"
    )
