"""What a benchmark produces: measurements against their baselines, kept as JSON between runs.

A run of one benchmark replaces that benchmark's entry in `docs/bench/results.json`; the document is always
written from every entry there, so `python -m bench policy` refreshes one table and keeps the others.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

# "higher"/"lower": a goal on the ratio; "at_most": a goal on our figure itself (a count of errors, say).
Direction = Literal["higher", "lower", "at_most", "none"]


@dataclass(frozen=True)
class Measurement:
    """One figure of ours next to its baseline. `ratio` is ours / baseline."""

    name: str
    unit: str
    ours: float
    baseline: float | None
    baseline_name: str = ""
    command: str = ""
    goal: str = ""
    # The goal on the ratio: ratio <= limit ("lower") or ratio >= limit ("higher"); on our figure: ours <=
    # limit ("at_most"); None when no goal.
    limit: float | None = None
    direction: Direction = "none"
    note: str = ""
    group: str = ""  # the part of a benchmark it belongs to (the database it ran on); one table per group

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        if self.direction == "at_most" and self.limit is not None:
            return self.ours <= self.limit
        ratio = self.ratio
        if self.limit is None or ratio is None or self.direction == "none":
            return None
        return ratio <= self.limit if self.direction == "lower" else ratio >= self.limit

    @property
    def miss(self) -> str:
        """By how much the goal is missed, in words; empty when met or without a goal."""
        if self.met is not False or self.limit is None:
            return ""
        if self.direction == "at_most":
            return f"{self.ours:g} vs <= {self.limit:g}"
        if self.ratio is None:
            return ""
        if self.direction == "lower":
            return f"{self.ratio / self.limit:.2f}x over the limit ({self.ratio:.3g} vs <= {self.limit:g})"
        return f"{(1 - self.ratio / self.limit) * 100:.0f}% short ({self.ratio:.3g} vs >= {self.limit:g})"


@dataclass
class BenchmarkResult:
    key: str
    title: str
    date: str
    commit: str
    command: str
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)  # paths relative to docs/
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)

    def add(self, measurement: Measurement) -> Measurement:
        self.measurements.append(measurement)
        return measurement

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BenchmarkResult:
        measurements = [Measurement(**m) for m in data.get("measurements", [])]
        fields = {k: v for k, v in data.items() if k != "measurements"}
        return cls(measurements=measurements, **fields)


def load_results(path: Path) -> dict[str, BenchmarkResult]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {key: BenchmarkResult.from_json(entry) for key, entry in data.items()}


def save_results(path: Path, results: dict[str, BenchmarkResult]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {key: result.to_json() for key, result in results.items()}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
