"""Readiness as application/health+json: fail only when no order can be stored."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# A check returns None when it passes, or a short text saying what is wrong.
Check = Callable[[], "str | None"]


@dataclass
class Readiness:
    checks: dict[str, Check]
    critical: frozenset[str] = frozenset({"database"})
    timeout: float = 2.5
    _pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "readiness"))

    def report(self) -> dict[str, Any]:
        futures = {name: self._pool.submit(check) for name, check in self.checks.items()}
        results: dict[str, list[dict[str, str]]] = {}
        status = "pass"
        for name, future in futures.items():
            try:
                problem = future.result(timeout=self.timeout)
            except Exception as exc:  # a check that breaks or hangs is a failed check
                problem = f"check failed: {type(exc).__name__}"
            if problem is None:
                results[name] = [{"status": "pass"}]
                continue
            level = "fail" if name in self.critical else "warn"
            results[name] = [{"status": level, "output": problem}]
            if level == "fail":
                status = "fail"
            elif status == "pass":
                status = "warn"
        return {"status": status, "checks": results}
