"""Circuit breaker: failure ratio over a sliding time window, with a pluggable state store.

States are `closed`, `open`, `half_open` and `isolated` (manual open). Every attempt counts; what is a
failure is decided by the caller's predicate (CONTRACT section 4); a bulkhead rejection never reaches the
breaker. The ratio exactly at the threshold opens. After the break one probe is admitted: its success
closes the circuit with a fresh window, its failure opens it again. A probe whose holder vanished frees
itself after `probe_timeout`, so a crashed caller cannot wedge the circuit half-open.

The probe's identity is a token handed out with its admission, and its outcome is reported with that token,
not by the thread that was admitted: a hedged attempt, for one, runs on a thread of its own. A probe presumed
lost that reports after another probe was admitted decides nothing; its successor does.

The store decides where state lives: `LocalBreakerStore` (this process) or `RedisBreakerStore`
(`app/adapters/redis_breaker_store.py`, every API and worker process). Transitions are reported by the process
that caused them.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from .budget import BudgetSpec, BudgetWindow
from .events import BreakerTransition
from .telemetry import EventSink, Hook, as_sinks, emit

CLOSED, OPEN, HALF_OPEN, ISOLATED = "closed", "open", "half_open", "isolated"
STATES = (CLOSED, OPEN, HALF_OPEN, ISOLATED)
STATE_VALUES = {CLOSED: 0, OPEN: 1, HALF_OPEN: 2, ISOLATED: 3}  # the metric's encoding (CONTRACT section 4)

# Admission codes returned by stores; the rejections are turned into BrokenCircuitError by the breaker.
ADMIT, PROBE, NO_BUDGET = 0, 1, 2
REJECT_OPEN, REJECT_HALF_OPEN, REJECT_ISOLATED = 3, 4, 5
_REJECTED_STATE = {REJECT_OPEN: OPEN, REJECT_HALF_OPEN: HALF_OPEN, REJECT_ISOLATED: ISOLATED}

BUCKETS = 10  # the window slides one tenth of the sampling duration at a time

Transition = tuple[str, str]


class Admission(NamedTuple):
    """A store's answer to one admission, which the breaker hands on to its caller once it admits."""

    code: int
    break_until: float | None = None  # epoch seconds, with a rejection by an open or half-open circuit
    transition: Transition | None = None  # the transition the admission caused (open -> half_open)
    probe: str | None = None  # with PROBE: the token the probe's outcome is reported with


_ADMITTED = Admission(ADMIT)
_NO_BUDGET = Admission(NO_BUDGET)


class BrokenCircuitError(Exception):
    """The circuit is open, half-open with its probe in flight, or isolated: the call was not made."""

    def __init__(self, service: str, *, state: str, break_until: float | None) -> None:
        detail = f" until {break_until:.3f}" if break_until is not None else ""
        super().__init__(f"{service}: circuit {state}{detail}")
        self.service = service
        self.state = state
        self.break_until = break_until  # unix epoch seconds; None when isolated


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    failure_ratio: float = 0.5
    sampling_duration: float = 10.0
    minimum_throughput: int = 10
    break_duration: float = 30.0
    probe_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class CircuitSnapshot:
    name: str
    state: str
    failure_ratio: float
    throughput: int
    break_until: float | None  # unix epoch seconds while open


class BreakerStore(Protocol):
    """Where circuit state lives. `notify` receives transitions the store discovers on its own."""

    def register(self, name: str, spec: BreakerSpec, notify: Callable[[str, str], None] | None) -> None: ...
    def acquire(self, name: str, *, retry: bool, budget: BudgetSpec | None) -> Admission: ...
    def record(self, name: str, *, success: bool, probe: str | None) -> Transition | None: ...
    def release_probe(self, name: str, probe: str) -> None: ...
    def isolate(self, name: str) -> Transition | None: ...
    def reset(self, name: str) -> Transition | None: ...
    def snapshot(self, name: str) -> CircuitSnapshot: ...
    def charge_budget(self, name: str, spec: BudgetSpec, *, retry: bool) -> bool: ...


class SlidingWindow:
    """Attempts and failures in `BUCKETS` time buckets; not locked (its owner holds the lock)."""

    __slots__ = ("_width", "_index", "_total", "_failed")

    def __init__(self, sampling_duration: float) -> None:
        self._width = sampling_duration / BUCKETS
        self._index = [-1] * BUCKETS
        self._total = [0] * BUCKETS
        self._failed = [0] * BUCKETS

    def add(self, now: float, *, failed: bool) -> None:
        bucket = int(now / self._width)
        slot = bucket % BUCKETS
        if self._index[slot] != bucket:
            self._index[slot] = bucket
            self._total[slot] = 0
            self._failed[slot] = 0
        self._total[slot] += 1
        if failed:
            self._failed[slot] += 1

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now / self._width) - BUCKETS
        total = failed = 0
        for slot in range(BUCKETS):
            if self._index[slot] > oldest:
                total += self._total[slot]
                failed += self._failed[slot]
        return total, failed

    def clear(self) -> None:
        self._index = [-1] * BUCKETS


def should_open(spec: BreakerSpec, total: int, failed: int) -> bool:
    return total >= spec.minimum_throughput and total > 0 and failed / total >= spec.failure_ratio


class _LocalCircuit:
    __slots__ = ("spec", "lock", "state", "window", "open_until", "probe", "probe_until", "budget")

    def __init__(self, spec: BreakerSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.state = CLOSED
        self.window = SlidingWindow(spec.sampling_duration)
        self.open_until = 0.0  # monotonic
        self.probe: str | None = None  # the token of the probe admitted last
        self.probe_until = 0.0  # monotonic: when an unanswered probe is presumed lost
        self.budget: BudgetWindow | None = None


class LocalBreakerStore:
    """Circuits of this process only; thread-safe. Also the Redis store's fallback while Redis is down."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._circuits: dict[str, _LocalCircuit] = {}
        self._lock = threading.Lock()
        self._probes = itertools.count(1)

    def _circuit(self, name: str) -> _LocalCircuit:
        circuit = self._circuits.get(name)
        if circuit is None:
            with self._lock:
                circuit = self._circuits.setdefault(name, _LocalCircuit(BreakerSpec()))
        return circuit

    def _epoch(self, monotonic: float) -> float:
        return self._wall_clock() + (monotonic - self._clock())

    def register(
        self, name: str, spec: BreakerSpec, notify: Callable[[str, str], None] | None = None
    ) -> None:
        # Every transition of a local circuit happens inside a call, so `notify` is never needed here.
        with self._lock:
            circuit = self._circuits.get(name)
            if circuit is None:
                self._circuits[name] = _LocalCircuit(spec)
            elif circuit.spec != spec:
                with circuit.lock:
                    circuit.spec = spec
                    circuit.window = SlidingWindow(spec.sampling_duration)

    def acquire(self, name: str, *, retry: bool, budget: BudgetSpec | None) -> Admission:
        circuit = self._circuits.get(name) or self._circuit(name)
        # Lock-free fast path: reading one attribute is atomic, and closed needs no bookkeeping.
        if circuit.state is CLOSED and budget is None:
            return _ADMITTED
        with circuit.lock:
            now = self._clock()
            state = circuit.state
            if state is ISOLATED:
                return Admission(REJECT_ISOLATED)
            if state is OPEN and now < circuit.open_until:
                return Admission(REJECT_OPEN, self._epoch(circuit.open_until))
            if state is HALF_OPEN and now < circuit.probe_until:
                return Admission(REJECT_HALF_OPEN, self._epoch(circuit.probe_until))
            if budget is not None and not self._charge(circuit, budget, retry=retry):
                return _NO_BUDGET
            if state is CLOSED:
                return _ADMITTED
            # The break is over, or the previous probe never reported back (presumed lost): this is the probe.
            circuit.probe = token = f"local:{next(self._probes)}"
            circuit.probe_until = now + circuit.spec.probe_timeout
            transition: Transition | None = None
            if state is OPEN:
                circuit.state = HALF_OPEN
                transition = (OPEN, HALF_OPEN)
            return Admission(PROBE, None, transition, token)

    def record(self, name: str, *, success: bool, probe: str | None) -> Transition | None:
        circuit = self._circuits.get(name) or self._circuit(name)
        with circuit.lock:
            now = self._clock()
            if probe is not None and circuit.state is HALF_OPEN:
                if probe != circuit.probe and now < circuit.probe_until:
                    return None  # presumed lost, and another probe runs now: that one decides
                if success:
                    circuit.state = CLOSED
                    circuit.window.clear()
                    return HALF_OPEN, CLOSED
                self._open(circuit, now)
                return HALF_OPEN, OPEN
            circuit.window.add(now, failed=not success)
            if success or circuit.state is not CLOSED:
                return None
            total, failed = circuit.window.totals(now)
            if should_open(circuit.spec, total, failed):
                self._open(circuit, now)
                return CLOSED, OPEN
            return None

    def _open(self, circuit: _LocalCircuit, now: float) -> None:
        circuit.state = OPEN
        circuit.open_until = now + circuit.spec.break_duration
        circuit.window.clear()

    def release_probe(self, name: str, probe: str) -> None:
        circuit = self._circuit(name)
        with circuit.lock:
            if circuit.state is HALF_OPEN and circuit.probe == probe:
                circuit.probe_until = 0.0

    def isolate(self, name: str) -> Transition | None:
        circuit = self._circuit(name)
        with circuit.lock:
            previous, circuit.state = circuit.state, ISOLATED
        return None if previous is ISOLATED else (previous, ISOLATED)

    def reset(self, name: str) -> Transition | None:
        circuit = self._circuit(name)
        with circuit.lock:
            previous, circuit.state = circuit.state, CLOSED
            circuit.window.clear()
            circuit.probe_until = 0.0
        return None if previous is CLOSED else (previous, CLOSED)

    def adopt(self, name: str, state: str, break_until: float | None = None) -> None:
        """Start this circuit from a state decided elsewhere (the shared state last seen): `isolated`, `open`
        until `break_until` (epoch seconds), or closed for anything else; with an empty window, reporting no
        transition (nothing changed for the fleet)."""
        circuit = self._circuit(name)
        with circuit.lock:
            circuit.window.clear()
            circuit.probe_until = 0.0
            if state == ISOLATED:
                circuit.state = ISOLATED
            elif state == OPEN and break_until is not None:
                circuit.state = OPEN
                circuit.open_until = self._clock() + (break_until - self._wall_clock())
            else:
                circuit.state = CLOSED

    def snapshot(self, name: str) -> CircuitSnapshot:
        circuit = self._circuit(name)
        with circuit.lock:
            now = self._clock()
            total, failed = circuit.window.totals(now)
            state = circuit.state
            # An elapsed break is reported as half-open: the next call will be the probe.
            if state is OPEN and now >= circuit.open_until:
                state = HALF_OPEN
            break_until = self._epoch(circuit.open_until) if state is OPEN else None
        return CircuitSnapshot(name, state, failed / total if total else 0.0, total, break_until)

    def charge_budget(self, name: str, spec: BudgetSpec, *, retry: bool) -> bool:
        circuit = self._circuit(name)
        with circuit.lock:
            return self._charge(circuit, spec, retry=retry)

    def _charge(self, circuit: _LocalCircuit, spec: BudgetSpec, *, retry: bool) -> bool:
        if circuit.budget is None or circuit.budget.spec != spec:
            circuit.budget = BudgetWindow(spec, clock=self._clock)
        return circuit.budget.charge(retry=retry)


class CircuitBreaker:
    """One dependency's circuit. Thread-safe; state lives in `store` (in-process unless given one)."""

    def __init__(
        self,
        name: str,
        *,
        failure_ratio: float = 0.5,
        sampling_duration: float = 10.0,
        minimum_throughput: int = 10,
        break_duration: float = 30.0,
        probe_timeout: float = 10.0,
        store: BreakerStore | None = None,
        hooks: Iterable[Hook | EventSink] = (),
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0.0 < failure_ratio <= 1.0 or minimum_throughput < 1:
            raise ValueError("failure_ratio must be in (0, 1] and minimum_throughput >= 1")
        if sampling_duration <= 0 or break_duration <= 0 or probe_timeout <= 0:
            raise ValueError("durations must be > 0")
        self.name = name
        self.spec = BreakerSpec(
            failure_ratio, sampling_duration, minimum_throughput, break_duration, probe_timeout)
        self.store: BreakerStore = store if store is not None else LocalBreakerStore(
            clock=clock, wall_clock=wall_clock)
        self._sinks = as_sinks(hooks)
        self._store_acquire = self.store.acquire  # bound once: these two run on every attempt
        self._store_record = self.store.record
        self.store.register(name, self.spec, self._transitioned)

    def _transitioned(self, from_state: str, to_state: str) -> None:
        if self._sinks:
            emit(self._sinks, BreakerTransition(self.name, from_state, to_state))

    def acquire(self, *, retry: bool = False, budget: BudgetSpec | None = None) -> Admission:
        """Admit one attempt. `code` is ADMIT, PROBE or NO_BUDGET (not admitted); a probe's outcome is
        reported with its token, `probe`, from whichever thread runs it.

        Raises BrokenCircuitError when the circuit does not admit calls.
        """
        admission = self._store_acquire(self.name, retry=retry, budget=budget)
        code, break_until, transition, _ = admission
        if transition is not None:
            self._transitioned(*transition)
        if code > NO_BUDGET:
            raise BrokenCircuitError(self.name, state=_REJECTED_STATE[code], break_until=break_until)
        return admission

    def record(self, success: bool, *, probe: str | None = None) -> None:
        """Count an admitted attempt's outcome; `probe` is the admission's token when it was the probe."""
        transition = self._store_record(self.name, success=success, probe=probe)
        if transition is not None:
            self._transitioned(*transition)

    def release(self, *, probe: str | None) -> None:
        """An admitted attempt ended in an outcome that counts as neither success nor failure."""
        if probe is not None:
            self.store.release_probe(self.name, probe)

    def isolate(self) -> CircuitSnapshot:
        transition = self.store.isolate(self.name)
        if transition is not None:
            self._transitioned(*transition)
        return self.snapshot()

    def reset(self) -> CircuitSnapshot:
        transition = self.store.reset(self.name)
        if transition is not None:
            self._transitioned(*transition)
        return self.snapshot()

    def snapshot(self) -> CircuitSnapshot:
        return self.store.snapshot(self.name)

    @property
    def state(self) -> str:
        return self.snapshot().state

    @property
    def degraded(self) -> bool:
        """True while a shared store cannot be reached and this process decides alone."""
        return bool(getattr(self.store, "degraded", False))
