"""
The results as a table on stdout, as C{BENCHMARKS.md}, and as a chart of
latency against registered peers.
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import twisted
from bench.stats import Row, p50, p99, table

NOTES = Path(__file__).resolve().parent / "notes.md"


def cpuModel() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(redisVersion: str, pyroVersion: str | None) -> list[str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"CPU: {cpuModel()}, {os.cpu_count()} cores; load average at the end: {load}",
        f"OS: {platform.platform()}",
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"Twisted {twisted.__version__}, Redis {redisVersion}"
        + (f", Pyro5 {pyroVersion}" if pyroVersion else ", Pyro5 not installed"),
    ]


def chart(lookups: dict[str, dict[int, list[float]]], path: Path, title: str) -> bool:
    """
    Draw latency against registered peers; L{False} if matplotlib is missing.
    """
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    figure, axes = pyplot.subplots(figsize=(7, 4.2), dpi=110)
    for operation, style, colour in (("lookup", "o", "tab:blue"), ("find", "s", "tab:green")):
        sizes = sorted(lookups[operation])
        for label, statistic, line in (("p50", p50, "-"), ("p99", p99, ":")):
            values = [statistic(lookups[operation][size]) * 1e6 for size in sizes]
            axes.plot(sizes, values, line, marker=style, color=colour, label=f"{operation} {label}")
    axes.set_xscale("log")
    axes.set_ylim(bottom=0)
    axes.set_xlabel("peers registered in the namespace")
    axes.set_ylabel("latency (µs)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    pyplot.close(figure)
    return True


def markdown(
    rows: Sequence[Row],
    machineLines: Sequence[str],
    command: str,
    extra: Sequence[str],
    chartPath: Path | None,
    output: Path,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "# Benchmarks",
        "",
        f"Measured {now} with `{command}` (this file is written by that command).",
        "",
        *(f"- {line}" for line in machineLines),
        "",
        "Every figure is a ratio against a baseline measured in the same run, the",
        "variants alternating round by round in a shuffled order, so that the load",
        "other programs put on this shared machine falls on both sides alike.",
        "",
        table(rows),
        "",
        *extra,
    ]
    if chartPath is not None:
        relative = os.path.relpath(chartPath, output.parent)
        parts += ["", f"![lookup and find latency against registered peers]({relative})"]
    if NOTES.exists():
        parts += ["", NOTES.read_text(encoding="utf-8").rstrip()]
    return "\n".join(parts) + "\n"
