"""
The benchmark suite still runs: C{python -m bench --quick}, tiny sizes, no
timing targets (the full run stays outside the tests; see BENCHMARKS.md).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.endpoint_helpers import REPO

SECTIONS = {"connect", "rpc", "throughput", "lookup", "events", "failure", "dns", "load"}


def test_quick_bench_produces_every_figure(tmp_path: Path) -> None:
    report, rows = tmp_path / "BENCHMARKS.md", tmp_path / "rows.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASSE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(report), "--json", str(rows)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(rows.read_text())
    assert {row["section"] for row in figures} == SECTIONS
    for row in figures:
        assert row["number"] > 0, row
        assert row["ratio"] is None or row["ratio"] > 0, row
    names = {row["figure"] for row in figures}
    for expected in ["masse: warm (cached)", "masse: cold (cache=false)", "masse:, 0 wrappers"]:
        assert expected in names
    assert "SIGKILL -> timedout, ttl 1 s" in names
    text = report.read_text()
    assert "| section" in text and "masse: warm (cached)" in text
    assert "## The resolution cache, before and after" in text
    assert "| section" in done.stdout  # the table is printed too
    chart = tmp_path / "lookup_scaling.png"
    if importlib.util.find_spec("matplotlib") is None:  # not in the test extra
        assert "no chart" in done.stdout and not chart.exists()
    else:
        assert chart.read_bytes().startswith(b"\x89PNG")
