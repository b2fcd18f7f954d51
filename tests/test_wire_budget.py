"""Issue 21's wire budgets, measured through a byte-counting proxy in front of a real hub
(tools/wire_budget.py, small): results alone <= 200 B each, a negative finding with its
thumbnail and heatmap <= 15 KB, the bandwidth cap honoured within 5%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import wire_budget


@pytest.mark.slow
def test_the_wire_budgets_hold(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "budget.json"
    status = wire_budget.main(["--small", "--json", str(out)])
    table = capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert status == 0, table
    assert figures["failures"] == []
    assert figures["results"] == 200
    assert figures["bytes_per_result"] <= wire_budget.RESULT_BUDGET
    negatives, positives = figures["pictures"]["negative"], figures["pictures"]["positive"]
    assert negatives, table  # the samples give both findings: each is measured
    assert positives, table
    assert max(negatives) <= wire_budget.PICTURES_BUDGET
    # each measured picture carried its thumbnail and heatmap (none held back by a guard)
    assert (
        len(figures["files"]["thumbnail"]) == len(figures["files"]["heatmap"]) == len(negatives + positives)
    )
    # The heatmap travels as its evidence grid: the upload, requests and answers included, is
    # a small fraction of the old 78 KB PNG.
    assert max(figures["files"]["heatmap"]) < 2_500
    # The diagnostic rendition (issue 20), reported apart: positive findings carry one by
    # default, negative ones none.
    assert figures["renditions_carried"] == {"negative": 0, "positive": len(positives)}
    assert len(figures["files"]["rendition"]) == len(positives)
    # A clip's cine (issue 20), reported apart: the flagged clip carried one, under its budget.
    assert figures["cines_carried"] == {"clips": 1, "carried": 1}
    assert 0 < max(figures["files"]["cine"]) <= wire_budget.CINE_BUDGET
    assert abs(figures["cap_measured_kbps"] / figures["cap_kbps"] - 1) <= wire_budget.CAP_TOLERANCE
