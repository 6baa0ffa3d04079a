"""Load with wrk: a fixed JSON order posted over keep-alive connections, the distribution written as JSON."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ORDER_BODY = '{"customer_id": 7, "lines": [{"product_id": 1, "quantity": 1}]}'
PERCENTILES = (1, 5, 10, 20, 30, 40, 50, 60, 70, 75, 80, 85, 90, 95, 97.5, 99, 99.5, 99.9, 100)
INSTALL_HINT = (
    "wrk is not installed. Install it with `sudo apt-get install wrk` (Debian/Ubuntu) or "
    "`brew install wrk` (macOS), then run `make bench` again."
)

# `done` runs once after the test; latency:percentile() is in microseconds.
_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%(body)s]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local parts = {}
  for _, p in ipairs({%(percentiles)s}) do
    table.insert(parts, string.format('"%%s": %%d', tostring(p), latency:percentile(p)))
  end
  io.write(string.format(
    'BENCH_JSON {"requests": %%d, "duration_us": %%d, "connect": %%d, "read": %%d, "write": %%d, ' ..
    '"status": %%d, "timeout": %%d, "min_us": %%d, "max_us": %%d, "mean_us": %%f, ' ..
    '"percentiles_us": {%%s}}\\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout, latency.min, latency.max, latency.mean,
    table.concat(parts, ", ")))
end
"""


class WrkMissing(RuntimeError):
    pass


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing(INSTALL_HINT)
    return path


@dataclass(frozen=True)
class LoadResult:
    label: str
    command: str
    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    timeouts: int
    min_ms: float
    max_ms: float
    mean_ms: float
    percentiles_ms: dict[float, float] = field(default_factory=dict)

    @property
    def ok_per_second(self) -> float:
        """2xx answers per second: orders placed."""
        return max(0, self.requests - self.non_2xx) / self.seconds if self.seconds else 0.0

    def p(self, percentile: float) -> float:
        return self.percentiles_ms[percentile]


def run_wrk(
    url: str,
    *,
    label: str,
    duration: float,
    connections: int = 16,
    threads: int = 1,
    timeout: float = 15.0,
    body: str = ORDER_BODY,
) -> LoadResult:
    wrk = require_wrk()
    script = _SCRIPT % {"body": body, "percentiles": ", ".join(str(p) for p in PERCENTILES)}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        script_path = Path(f.name)
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration:g}s",
        f"--timeout={timeout:g}s",
        "-s",
        str(script_path),
        url,
    ]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
        )
    finally:
        script_path.unlink(missing_ok=True)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result (exit {done.returncode}): {done.stdout}\n{done.stderr}")
    data = json.loads(line[len("BENCH_JSON ") :])
    # wrk's latency:percentile(100) answers 0; the maximum is what p100 means.
    data["percentiles_us"]["100"] = data["max_us"]
    shown = (
        f"wrk -t{threads} -c{connections} -d{duration:g}s --timeout {timeout:g}s -s post_order.lua "
        + url.replace("http://127.0.0.1:", ":")
    )
    return LoadResult(
        label=label,
        command=shown,
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        non_2xx=int(data["status"]),
        socket_errors=int(data["connect"] + data["read"] + data["write"]),
        timeouts=int(data["timeout"]),
        min_ms=data["min_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        percentiles_ms={float(k): v / 1000 for k, v in data["percentiles_us"].items()},
    )
