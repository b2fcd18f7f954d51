from __future__ import annotations

from pathlib import Path

from edge.errors import Code

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_refusal_code_is_documented() -> None:
    text = (DOCS / "codes.md").read_text()
    missing = [code.value for code in Code if f"`{code.value}`" not in text]
    assert not missing, f"document these codes in docs/codes.md: {missing}"
