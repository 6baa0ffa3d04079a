"""OrderFlow's benchmarks: every figure is a ratio to a baseline measured in the same run.

`python -m bench` runs them all and writes `docs/benchmarks.md` and `docs/bench/*.png`;
`python -m bench policy` (or `proxy`, `placement`, `degraded`, `backlog`, `memory`) runs one.
"""

from .results import BenchmarkResult, Measurement

__all__ = ["BenchmarkResult", "Measurement"]
