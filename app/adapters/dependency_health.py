"""What the admin API and readiness report about the dependencies: the circuits, and whether each service
answers its health route."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.adapters.http import HttpTransport, HttpTransportError
from app.resilience import CircuitBreaker

__all__ = ["Circuits", "service_check", "snapshot_dict"]

# A readiness probe answers within its own deadline, whatever state the service is in.
SERVICE_CHECK_TIMEOUT = 1.0


@dataclass
class Circuits:
    """The circuits the admin API and health report on."""

    breakers: dict[str, CircuitBreaker]

    def snapshots(self) -> list[dict[str, Any]]:
        out = []
        for name, breaker in self.breakers.items():
            out.append(snapshot_dict(breaker))
            out[-1]["name"] = name
        return out

    def isolate(self, name: str) -> dict[str, Any]:
        """Open the circuit by hand, for the whole fleet; the circuit as it is then."""
        breaker = self.breakers[name]
        breaker.isolate()
        return snapshot_dict(breaker)

    def reset(self, name: str) -> dict[str, Any]:
        """Close the circuit by hand with an empty window, for the whole fleet; the circuit as it is then."""
        breaker = self.breakers[name]
        breaker.reset()
        return snapshot_dict(breaker)

    def states(self) -> dict[str, str]:
        return {name: breaker.state for name, breaker in self.breakers.items()}

    def check(self) -> str | None:
        states = self.states()
        broken = [name for name, state in states.items() if state in ("open", "isolated")]
        notes = []
        if broken:
            notes.append("Open circuits: " + ", ".join(broken))
        if any(b.degraded for b in self.breakers.values()):
            notes.append("circuit state is local to this process: Redis unreachable")
        return "; ".join(notes) or None


def snapshot_dict(breaker: CircuitBreaker) -> dict[str, Any]:
    """A circuit as the admin API shows it."""
    snap = breaker.snapshot()
    until = None
    if snap.break_until is not None:
        until = datetime.fromtimestamp(snap.break_until, UTC).isoformat().replace("+00:00", "Z")
    return {"name": snap.name, "state": snap.state, "failure_ratio": round(snap.failure_ratio, 4),
            "throughput": snap.throughput, "break_until": until}


def service_check(transport: HttpTransport, name: str, base_url: str) -> Callable[[], str | None]:
    """A readiness check: None when the service's `GET /health` answers 200, else what is wrong."""

    def check() -> str | None:
        try:
            response = transport.request("GET", f"{base_url}/health",
                                         deadline=time.monotonic() + SERVICE_CHECK_TIMEOUT)
        except HttpTransportError as exc:
            return f"{name} unreachable: {type(exc).__name__}"
        return None if response.status == 200 else f"{name} answered {response.status}"

    return check
