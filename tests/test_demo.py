from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from edge.cli import cli
from edge.store import Store


def test_demo_end_to_end_on_a_fresh_install(tmp_path: Path) -> None:
    """No config, no data directory: the demo analyses the bundled samples and says where they went."""
    result = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "results" in out
    assert "database:" in out
    demo_dir = tmp_path / "xdg" / "edge" / "demo"  # per-user data dir (XDG), demo kept apart
    assert str(demo_dir / "edge.db") in out.replace("\n", "")
    with Store(demo_dir) as store:
        counts = store.counts()
    assert counts["results"] >= 6
    assert counts["jobs_refused"] == counts["jobs_failed"] == 0
    formats = {row[0] for row in Store(demo_dir).db.execute("SELECT format FROM images").fetchall()}
    assert formats == {"png", "dicom"}
    # Running it again analyses nothing twice.
    again = CliRunner().invoke(cli, ["demo"], catch_exceptions=False)
    assert again.exit_code == 0
    with Store(demo_dir) as store:
        assert store.counts()["results"] == counts["results"]
    fresh = CliRunner().invoke(cli, ["demo", "--fresh"], catch_exceptions=False)
    assert fresh.exit_code == 0
