"""Fault controls: the configuration behind ``/faults`` and its injection into business routes.

Every simulator accepts the same configuration; ``fail_after_capture`` only changes the payment simulator.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from ._routing import HttpError, Request, Response, Route, route

ERROR_STATUSES = (429, 500, 502, 503, 504)
# An hour: far beyond any client timeout, and small enough that time.sleep never overflows.
MAX_LATENCY_MS = 3_600_000
# Statuses after which a well-behaved client waits before retrying.
_RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    error_status: int = 503
    latency_ms: int = 0
    fail_after_capture: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def parse_faults(body: Mapping[str, object]) -> Faults:
    """A whole fault configuration from a ``PUT /faults`` body; omitted fields take their defaults."""
    unknown = sorted(set(body) - set(Faults.__dataclass_fields__))
    if unknown:
        raise HttpError(400, f"unknown field: {unknown[0]}", field=unknown[0])
    defaults = Faults()
    # Exact type checks: bool is an int subclass in Python, but true is not a number in JSON.
    error_rate = body.get("error_rate", defaults.error_rate)
    # (0 <= NaN is false, so NaN fails too.)
    if isinstance(error_rate, bool) or not isinstance(error_rate, int | float) or not 0 <= error_rate <= 1:
        raise HttpError(400, "error_rate must be a number from 0 to 1", field="error_rate")
    error_status = body.get("error_status", defaults.error_status)
    if type(error_status) is not int or error_status not in ERROR_STATUSES:
        statuses = ", ".join(map(str, ERROR_STATUSES))
        raise HttpError(400, f"error_status must be one of {statuses}", field="error_status")
    latency_ms = body.get("latency_ms", defaults.latency_ms)
    if type(latency_ms) is not int or not 0 <= latency_ms <= MAX_LATENCY_MS:
        raise HttpError(400, f"latency_ms must be an integer from 0 to {MAX_LATENCY_MS}", field="latency_ms")
    fail_after_capture = body.get("fail_after_capture", defaults.fail_after_capture)
    if not isinstance(fail_after_capture, bool):
        raise HttpError(400, "fail_after_capture must be a boolean", field="fail_after_capture")
    return Faults(float(error_rate), int(error_status), latency_ms, fail_after_capture)


def injected_error(faults: Faults) -> Response:
    headers = (("Retry-After", "1"),) if faults.error_status in _RETRY_AFTER_STATUSES else ()
    return Response(faults.error_status, {"error": "injected fault"}, headers)


class FaultInjector:
    """The current faults of one simulator, applied at the start of each business request."""

    def __init__(self, *, seed: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self._lock = threading.Lock()
        self._faults = Faults()
        self._random = random.Random(seed)
        self._sleep = sleep

    @property
    def current(self) -> Faults:
        with self._lock:
            return self._faults

    def replace(self, faults: Faults) -> None:
        with self._lock:
            self._faults = faults

    def reset(self) -> None:
        self.replace(Faults())

    def before_work(self) -> tuple[Faults, Response | None]:
        """Wait the configured latency, then maybe fail; returns the faults in force and the injected error.

        One snapshot serves the whole request, so a concurrent ``PUT /faults`` never half-applies.
        """
        faults = self.current
        if faults.latency_ms:
            self._sleep(faults.latency_ms / 1000)
        if faults.error_rate > 0 and self._roll() < faults.error_rate:
            return faults, injected_error(faults)
        return faults, None

    def _roll(self) -> float:
        # random.Random is not documented as thread-safe; a seeded run must stay reproducible.
        with self._lock:
            return self._random.random()


def fault_routes(injector: FaultInjector) -> list[Route]:
    def show(_: Request) -> Response:
        return Response(200, injector.current.to_json())

    def put(request: Request) -> Response:
        # An empty PUT is an empty configuration: every fault off.
        body = request.json_object() if request.body.strip() else {}
        injector.replace(parse_faults(body))
        return show(request)

    def clear(request: Request) -> Response:
        injector.reset()
        return show(request)

    return [route("/faults", GET=show, PUT=put, DELETE=clear)]
