"""Pure statistics and verdicts for the benchmark report (no I/O, no servers): unit-tested in
``tests/test_bench_report.py``."""

from __future__ import annotations

import math
from dataclasses import dataclass


def pct(values: list[float], q: float) -> float:
    """The q-th percentile by nearest rank on the sorted values (NaN when there are none).

    With n values, p50 is the middle one and p99 the largest below 100 values: the report's
    p99 over a few dozen requests is in effect the slowest request, and says so in its header.
    """
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return float("nan")
    return finite[min(len(finite) - 1, round(q / 100 * (len(finite) - 1)))]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing, NaN or the denominator is 0."""
    if numerator is None or denominator is None:
        return None
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return None
    return numerator / denominator


@dataclass(frozen=True)
class Target:
    """One target of the issue, checked against a value measured in one run.

    ``kind`` is ``"ratio"`` (value is a ratio like 0.88, shown as ``0.88x``, target a minimum),
    ``"max_ratio"`` (a ratio, target a maximum, e.g. a slow-down), ``"max_ms"`` (value in
    milliseconds, target a maximum, e.g. an overhead), ``"max_s"`` (seconds, a maximum, e.g. a
    start-up time) or ``"max_count"`` (a number of events, a maximum, e.g. refusals).
    """

    name: str
    value: float | None
    threshold: float
    kind: str = "ratio"
    why_missing: str = "not measured"

    @property
    def measured(self) -> bool:
        return self.value is not None and not math.isnan(self.value)

    @property
    def met(self) -> bool | None:
        if not self.measured:
            return None
        if self.kind == "ratio":
            return self.value >= self.threshold
        return self.value <= self.threshold

    def shown_value(self) -> str:
        if not self.measured:
            return "–"
        if self.kind in ("ratio", "max_ratio"):
            return f"{self.value:.2f}x"
        if self.kind == "max_count":
            return f"{self.value:g}"
        return f"{self.value:.1f} {self._unit}"

    def shown_target(self) -> str:
        if self.kind == "ratio":
            return f">= {self.threshold:g}x"
        if self.kind == "max_ratio":
            return f"<= {self.threshold:g}x"
        return f"<= {self.threshold:g}" + (f" {self._unit}" if self._unit else "")

    @property
    def _unit(self) -> str:
        return {"max_s": "s", "max_ms": "ms"}.get(self.kind, "")

    def verdict(self) -> str:
        """'met', or 'missed by ...' with how far off it is, or why it was not measured."""
        if not self.measured:
            return f"not measured: {self.why_missing}"
        if self.met:
            return "met"
        if self.kind == "ratio":
            short = (self.threshold - self.value) / self.threshold * 100
            return f"missed by {short:.0f}% ({self.value:.2f}x of the {self.threshold:g}x asked)"
        if self.kind == "max_ratio":
            return f"missed: {self.value:.2f}x, over the {self.threshold:g}x allowed"
        if self.kind == "max_count":
            return f"missed: {self.value:g}, over the {self.threshold:g} allowed"
        return f"missed by {self.value - self.threshold:.1f} {self._unit}"


def fmt(value, digits: int | None = None) -> str:
    """A table cell: '–' for missing or NaN values, else the value (rounded if asked)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if digits is not None and isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table as lines; each cell goes through :func:`fmt`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row {row!r} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(fmt(c) for c in row) + " |")
    return lines


COUNTS = ("requests", "errors", "output_tokens")  # summed over runs; every other number is averaged


def mean_levels(runs: list[list[dict]]) -> list[dict]:
    """The levels of several runs of the same load combined into one row per concurrency: counts
    (requests, errors, tokens) summed, every other number (and every number of a dict field, key
    by key, such as the CPU per hop) the mean over the runs. Only levels every run has are kept."""
    by_c = [{row["concurrency"]: row for row in rows} for rows in runs]
    shared = sorted(set.intersection(*(set(rows) for rows in by_c))) if by_c else []
    out = []
    for c in shared:
        rows = [rows[c] for rows in by_c]
        merged: dict = {}
        for key, first in rows[0].items():
            values = [row.get(key) for row in rows]
            if key == "concurrency" or not all(isinstance(v, type(first)) for v in values):
                merged[key] = first
            elif isinstance(first, dict):
                keys = set.intersection(*(set(v) for v in values))
                merged[key] = {k: round(sum(v[k] for v in values) / len(values), 3) for k in first if k in keys}
            elif isinstance(first, (int, float)) and not isinstance(first, bool):
                total = sum(values)
                merged[key] = total if key in COUNTS else round(total / len(values), 4)
            else:
                merged[key] = first
        out.append(merged)
    return out
