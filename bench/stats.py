"""
Percentiles, and the rows of the results table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs


def percentile(samples: Sequence[float], q: float) -> float:
    """
    The nearest-rank C{q}-th percentile (0 < q <= 100) of C{samples}.
    """
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def p50(samples: Sequence[float]) -> float:
    return percentile(samples, 50)


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 99)


@attrs.frozen
class Row:
    """
    One figure of the table: its value, the baseline measured in the same
    run, their ratio, and the target (if the issue sets one).

    @ivar passed: whether the target is met; L{None} when there is none.
    """

    section: str
    figure: str
    value: str
    baseline: str
    ratio: float | None
    ratioText: str
    target: str = ""
    passed: bool | None = None
    number: float = 0.0  # the value as a number, for checks

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "MISS", None: ""}[self.passed]


def detectionRows(section: str, prefix: str, detection: dict[float, list[float]]) -> list[Row]:
    """
    One row per ttl: the slowest of its SIGKILL-to-C{timedout} times,
    against ttl + 1 s.
    """
    rows = []
    for ttl, seconds in sorted(detection.items()):
        worst = max(seconds)
        rows.append(
            Row(
                section,
                f"{prefix}SIGKILL -> timedout, ttl {ttl:g} s",
                f"max {worst:.3f} s (mean {sum(seconds) / len(seconds):.3f} s, "
                f"{len(seconds)} kills)",
                f"ttl {ttl:g} s",
                worst / ttl,
                f"{worst / ttl:.3f}x ttl",
                "≤ ttl + 1 s",
                worst <= ttl + 1,
                number=worst,
            )
        )
    return rows


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def p50p99(samples: Sequence[float]) -> str:
    return f"{micros(p50(samples))} (p99 {micros(p99(samples))})"


def ratioRow(
    section: str,
    figure: str,
    samples: Sequence[float],
    baseline: str,
    base: float,
    limit: str | None = None,
    digits: int = 3,
    unit: str = "x",
) -> Row:
    """
    The median of C{samples} against the median C{base} of the same run
    (named C{baseline}); with C{limit} (as written, C{"1.05"}), the target
    C{≤ 1.05x}.
    """
    value = p50(samples)
    ratio = value / base
    return Row(
        section,
        figure,
        p50p99(samples),
        f"{baseline} {micros(base)}",
        ratio,
        f"{ratio:.{digits}f}{unit}",
        "" if limit is None else f"≤ {limit}x",
        None if limit is None else ratio <= float(limit),
        number=value,
    )


def millis(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def table(rows: Sequence[Row]) -> str:
    """
    The rows as a Markdown table (also readable as plain text).
    """
    header = ("section", "figure", "value", "baseline (same run)", "ratio", "target", "result")
    lines = [header] + [
        (r.section, r.figure, r.value, r.baseline, r.ratioText, r.target, r.verdict) for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def show(line: Sequence[str]) -> str:
        return "| " + " | ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) + " |"

    rule = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([show(lines[0]), rule, *(show(line) for line in lines[1:])])
