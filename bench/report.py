"""`docs/benchmarks.md`: one table per benchmark, written from the results of an actual run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .results import BenchmarkResult, Measurement

ORDER = ("policy", "placement", "degraded", "backlog", "proxy", "memory")

INTRO = """# Benchmarks

Written by `make bench` (`python -m bench`); do not edit by hand. Every figure is measured against a
baseline run in the same process or the same minute on the same machine, because absolute times vary
between runs: the **ratio** (ours / baseline) is the figure to read. One benchmark alone:
`python -m bench policy|placement|degraded|backlog|proxy|memory` (it rewrites its own table and keeps the
others).

Placement (2) and degraded placement (3) run on both databases, each with a stack of its own and a table of
its own: SQLite, the embedded default `make run` uses with no `DATABASE_URL`, and PostgreSQL, the one
`DATABASE_URL` names when it names one, else the machine's at 127.0.0.1:5432 when it answers (a run without
it says so at the top). The backlog drain (4) and memory (6) run once, on PostgreSQL when there is one.
"""


def _number(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit in ("orders/s", "jobs/s", "calls/s"):
        return f"{value:,.0f} {unit}"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}".strip()
    if abs(value) >= 10:
        return f"{value:.1f} {unit}".strip()
    return f"{value:.3g} {unit}".strip()


def _verdict(m: Measurement) -> str:
    met = m.met
    if met is None:
        return m.goal or "—"
    return f"{m.goal}: **{'met' if met else 'missed'}**" + ("" if met else f" ({m.miss})")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(measurements: Iterable[Measurement]) -> str:
    lines = [
        "| measure | baseline | baseline figure | our figure | ratio | goal | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in measurements:
        ratio = "—" if m.ratio is None else f"{m.ratio:.3f}"
        name = m.name + (f" ({m.note})" if m.note else "")
        command = f"`{m.command}`" if m.command else ""
        lines.append(
            "| "
            + " | ".join(
                _cell(c)
                for c in (
                    name,
                    m.baseline_name or "—",
                    _number(m.baseline, m.unit),
                    _number(m.ours, m.unit),
                    ratio,
                    _verdict(m),
                    command,
                )
            )
            + " |"
        )
    return "\n".join(lines)


def section(number: int, result: BenchmarkResult) -> str:
    parts = [
        f"## {number}. {result.title}",
        "",
        f"Run {result.date}, commit `{result.commit}`, command `{result.command}`, {result.seconds:.0f} s.",
        "",
    ]
    groups = list(dict.fromkeys(m.group for m in result.measurements))
    if groups == [""]:
        parts.append(table(result.measurements))
    else:
        for group in groups:
            if group:
                parts += [f"### {group}", ""]
            parts += [table(m for m in result.measurements if m.group == group), ""]
        parts.pop()
    if result.notes:
        parts += ["", *[f"- {note}" for note in result.notes]]
    for plot in result.plots:
        parts += ["", f"![{result.key}]({plot})"]
    return "\n".join(parts)


def document(results: Mapping[str, BenchmarkResult], *, header_notes: Iterable[str] = ()) -> str:
    parts = [INTRO]
    notes = list(header_notes)
    if notes:
        parts.append("\n".join(f"- {note}" for note in notes) + "\n")
    keys = [k for k in ORDER if k in results] + sorted(k for k in results if k not in ORDER)
    missing = [k for k in ORDER if k not in results]
    for position, key in enumerate(keys, start=1):
        number = ORDER.index(key) + 1 if key in ORDER else len(ORDER) + position
        parts.append(section(number, results[key]) + "\n")
    if missing:
        parts.append("Not run yet: " + ", ".join(missing) + ".\n")
    return "\n".join(parts)
