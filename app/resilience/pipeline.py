"""The resilience pipeline: every policy of one dependency composed in one fixed order.

    fallback -> total timeout -> bulkhead -> retry (+ budget) -> hedging -> circuit breaker
             -> attempt timeout -> call

Outer policies see what inner ones produce: the fallback sees a broken circuit, a full bulkhead, a timeout
or the last failure once retries end; the bulkhead holds one slot for the whole call, retries included; the
circuit counts every attempt, hedged ones too. Every policy is optional.

The order is implemented as one flat loop rather than nested wrappers: the happy path is a handful of
attribute reads and two clock calls, which is what keeps the overhead a fraction of a generic retry
decorator's. Time is absolute monotonic deadlines: nothing waits past min(total deadline, caller's
deadline), neither a bulkhead queue nor a retry sleep; each attempt is handed its own deadline and the
call (the transport) enforces it.

Deviation from a literal reading of the order: the circuit and the budget admit a retry *before* its
backoff sleep, in one step (one script call with the shared store), so a call never sleeps only to find the
circuit open or the budget spent. A half-open probe's token goes with its attempt, so the outcome reaches the
circuit from whichever thread ran it (hedged attempts run on threads of their own).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from .budget import BudgetSpec, RetryBudget
from .bulkhead import Bulkhead, BulkheadRejectedError
from .circuit_breaker import NO_BUDGET, BreakerStore, BrokenCircuitError, CircuitBreaker
from .config import DependencyConfig
from .events import (
    AttemptFinished,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    CallOutcome,
    FallbackExecuted,
    HedgeStarted,
    RetryScheduled,
    TimeoutKind,
    TimeoutOccurred,
)
from .fallback import Fallback
from .hedging import HedgingPolicy
from .retry import Outcome, RetryPolicy, exceptions_are_failures
from .telemetry import EventSink, Hook, as_sinks, emit
from .timeout import ResilienceTimeoutError, TotalTimeoutError, attempt_deadline, timeout_error

T = TypeVar("T")

_NO_CONTEXT: Mapping[str, Any] = {}


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError)


class Attempt:
    """What the call is told about the attempt it runs."""

    __slots__ = ("number", "deadline", "hedged", "operation", "context", "_clock")

    def __init__(
        self,
        number: int,
        deadline: float,
        hedged: bool = False,
        operation: str = "",
        context: Mapping[str, Any] = _NO_CONTEXT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.number = number  # 0 = the first attempt
        self.deadline = deadline  # absolute, on the pipeline's monotonic clock
        self.hedged = hedged
        self.operation = operation
        self.context = context
        self._clock = clock

    def remaining(self) -> float:
        """Seconds left before this attempt's deadline (never negative)."""
        left = self.deadline - self._clock()
        return left if left > 0.0 else 0.0

    def __repr__(self) -> str:
        return f"Attempt(number={self.number}, remaining={self.remaining():.3f}, hedged={self.hedged})"


class ResiliencePipeline(Generic[T]):
    def __init__(
        self,
        name: str,
        *,
        attempt_timeout: float | None = None,
        total_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | None = None,
        bulkhead: Bulkhead | None = None,
        budget: RetryBudget | None = None,
        hedging: HedgingPolicy | None = None,
        fallback: Fallback | Callable[[Outcome], T] | None = None,
        is_failure: Callable[[Outcome], bool] = exceptions_are_failures,
        is_timeout: Callable[[BaseException], bool] = _is_timeout,
        retry_after: Callable[[Outcome], float | None] | None = None,
        hooks: Iterable[Hook | EventSink] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.name = name
        self.attempt_timeout = attempt_timeout
        self.total_timeout = total_timeout
        self.retry = retry
        self.breaker = breaker
        self.bulkhead = bulkhead
        self.budget = budget
        self.hedging = hedging
        self.fallback = fallback if fallback is None or isinstance(fallback, Fallback) else Fallback(fallback)
        self._is_failure = is_failure
        self._is_timeout = is_timeout
        self._retry_after = retry_after
        self._sinks = as_sinks(hooks)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng
        self._max_retries = retry.max_retries if retry is not None else 0
        # A budget kept in the breaker's own store is checked by the same admission (one round trip).
        shared = budget is not None and breaker is not None and budget.store is breaker.store
        self._combined_budget: BudgetSpec | None = budget.spec if shared and budget is not None else None
        self._separate_budget = budget if budget is not None and not shared else None

    # --- the call ------------------------------------------------------------------------------------

    def execute(
        self,
        call: Callable[[Attempt], T],
        *,
        deadline: float | None = None,
        operation: str = "",
        context: Mapping[str, Any] | None = None,
    ) -> T:
        """Run `call` under every policy; `deadline` is the caller's own (absolute, monotonic)."""
        clock = self._clock
        start = clock()
        bound = start + self.total_timeout if self.total_timeout is not None else None
        if deadline is not None and (bound is None or deadline < bound):
            bound = deadline
        bulkhead = self.bulkhead
        try:
            if bulkhead is None:
                outcome = self._run(call, bound, operation, context or _NO_CONTEXT)
            else:
                outcome = self._bulkheaded(bulkhead, call, bound, operation, context or _NO_CONTEXT)
        except BaseException:
            # Not handled by the predicate: propagated at once, after being timed.
            if self._sinks:
                emit(self._sinks, CallFinished(self.name, "failure", clock() - start))
            raise
        if not outcome.failed:
            if self._sinks:
                emit(self._sinks, CallFinished(self.name, "success", clock() - start))
            return outcome.result  # type: ignore[no-any-return]
        return self._failed(outcome, start)

    def _bulkheaded(
        self, bulkhead: Bulkhead, call: Callable[[Attempt], T], bound: float | None, operation: str,
        context: Mapping[str, Any],
    ) -> Outcome:
        try:
            admitted = bulkhead.acquire(bound)
        except BulkheadRejectedError as exc:
            emit(self._sinks, BulkheadRejected(self.name))
            return Outcome(exception=exc, failed=True)
        if not admitted:
            emit(self._sinks, TimeoutOccurred(self.name, "total"))
            return Outcome(exception=TotalTimeoutError(service=self.name, deadline=bound), failed=True)
        try:
            return self._run(call, bound, operation, context)
        finally:
            bulkhead.release()

    def _failed(self, outcome: Outcome, start: float) -> T:
        exc = outcome.exception
        fallback = self.fallback
        if fallback is not None and fallback.handles(outcome):
            emit(self._sinks, FallbackExecuted(self.name))
            try:
                return fallback(outcome)  # type: ignore[no-any-return]
            finally:
                emit(self._sinks, CallFinished(self.name, "fallback", self._clock() - start))
        kind: CallOutcome = "failure"
        if isinstance(exc, BulkheadRejectedError):
            kind = "rejected"
        elif isinstance(exc, BrokenCircuitError):
            kind = "broken"
        emit(self._sinks, CallFinished(self.name, kind, self._clock() - start))
        if exc is not None:
            raise exc
        return outcome.result  # type: ignore[no-any-return]

    # --- retry loop -----------------------------------------------------------------------------------

    def _run(
        self, call: Callable[[Attempt], T], bound: float | None, operation: str, context: Mapping[str, Any]
    ) -> Outcome:
        clock = self._clock
        breaker = self.breaker
        probe: str | None = None  # the token of the half-open probe, when this attempt is it
        if self._separate_budget is not None:
            self._separate_budget.record_call()
        if breaker is not None:
            try:
                probe = breaker.acquire(retry=False, budget=self._combined_budget).probe
            except BrokenCircuitError as exc:
                return Outcome(exception=exc, failed=True)
        number = 0
        while True:
            now = clock()
            if bound is not None and now >= bound:
                # The deadline passed before this attempt could start (e.g. queued in the bulkhead).
                if breaker is not None:
                    breaker.release(probe=probe)
                emit(self._sinks, TimeoutOccurred(self.name, "total"))
                return Outcome(exception=TotalTimeoutError(service=self.name, deadline=bound), failed=True)
            deadline, kind = attempt_deadline(now, self.attempt_timeout, bound)
            if self.hedging is None:
                outcome = self._attempt(call, number, deadline, kind, probe, False, operation, context)
            else:
                outcome = self._hedged(call, number, deadline, kind, probe, bound, operation, context)
            if not outcome.failed:
                if outcome.exception is not None:
                    raise outcome.exception
                return outcome
            if number >= self._max_retries:
                return outcome
            retry_after = self._retry_after(outcome) if self._retry_after is not None else None
            assert self.retry is not None
            delay = self.retry.delay(number, retry_after=retry_after, rng=self._rng)
            if bound is not None and clock() + delay >= bound:
                return outcome
            admitted = self._admit_retry(breaker)
            if isinstance(admitted, Outcome):
                return outcome if admitted.exception is None else admitted
            probe = admitted
            number += 1
            if self._sinks:
                emit(self._sinks, RetryScheduled(self.name, number, delay, _reason(outcome)))
            if delay > 0:
                self._sleep(delay)

    def _admit_retry(self, breaker: CircuitBreaker | None) -> str | Outcome | None:
        """Admit the next attempt: None = admitted, a token = admitted as the probe, an Outcome = stop."""
        if self._separate_budget is not None and not self._separate_budget.try_spend():
            emit(self._sinks, BudgetExhausted(self.name))
            return Outcome()
        if breaker is None:
            return None
        try:
            admission = breaker.acquire(retry=True, budget=self._combined_budget)
        except BrokenCircuitError as exc:
            return Outcome(exception=exc, failed=True)
        if admission.code == NO_BUDGET:
            emit(self._sinks, BudgetExhausted(self.name))
            return Outcome()
        return admission.probe

    # --- one attempt ------------------------------------------------------------------------------------

    def _attempt(
        self, call: Callable[[Attempt], T], number: int, deadline: float, kind: TimeoutKind, probe: str | None,
        hedged: bool, operation: str, context: Mapping[str, Any],
    ) -> Outcome:
        """Run one attempt and count it. Never raises: an unhandled exception comes back not failed."""
        clock = self._clock
        started = clock()
        try:
            result = call(Attempt(number, deadline, hedged, operation, context, clock))
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised by the loop if unhandled
            if isinstance(exc, ResilienceTimeoutError) or self._is_timeout(exc):
                if not isinstance(exc, ResilienceTimeoutError):
                    timed_out = timeout_error(kind, service=self.name, deadline=deadline)
                    timed_out.__cause__ = exc
                    exc = timed_out
                emit(self._sinks, TimeoutOccurred(self.name, exc.kind))
                outcome = Outcome(exception=exc, failed=True)
            else:
                outcome = Outcome(exception=exc)
                outcome.failed = self._is_failure(outcome)
                if not outcome.failed:
                    # Neither success nor failure: the circuit does not count it.
                    if self.breaker is not None:
                        self.breaker.release(probe=probe)
                    return outcome
        else:
            outcome = Outcome(result)
            outcome.failed = self._is_failure(outcome)
        if self.breaker is not None:
            self.breaker.record(not outcome.failed, probe=probe)
        if self._sinks:
            emit(self._sinks, AttemptFinished(self.name, not outcome.failed, clock() - started))
        return outcome

    def _hedged(
        self, call: Callable[[Attempt], T], number: int, deadline: float, kind: TimeoutKind, probe: str | None,
        bound: float | None, operation: str, context: Mapping[str, Any],
    ) -> Outcome:
        assert self.hedging is not None
        clock = self._clock
        latest = [deadline]

        def primary() -> Outcome:
            return self._attempt(call, number, deadline, kind, probe, False, operation, context)

        def start_hedge() -> Callable[[], Outcome] | None:
            admitted = self._admit_retry(self.breaker)  # a hedge is extra load, paid like a retry
            if isinstance(admitted, Outcome):
                return None
            hedge_deadline, hedge_kind = attempt_deadline(clock(), self.attempt_timeout, bound)
            latest[0] = max(latest[0], hedge_deadline)
            emit(self._sinks, HedgeStarted(self.name))
            return lambda: self._attempt(call, number, hedge_deadline, hedge_kind, admitted, True, operation,
                                         context)

        def give_up() -> Outcome:
            emit(self._sinks, TimeoutOccurred(self.name, kind))
            return Outcome(exception=timeout_error(kind, service=self.name, deadline=deadline), failed=True)

        # A small grace beyond the deadline lets a transport that enforces it report its own timeout.
        return self.hedging.run(primary, start_hedge, give_up_at=lambda: latest[0] + 0.05 - clock(),
                                give_up=give_up)


def _reason(outcome: Outcome) -> str:
    exc = outcome.exception
    if exc is None:
        return "result"
    if isinstance(exc, ResilienceTimeoutError):
        return "timeout"
    return f"exception:{type(exc).__name__}"


def build_pipeline(
    name: str,
    dep_config: DependencyConfig,
    *,
    store: BreakerStore | None = None,
    hooks: Iterable[Hook | EventSink] = (),
    is_failure: Callable[[Outcome], bool] = exceptions_are_failures,
    is_timeout: Callable[[BaseException], bool] = _is_timeout,
    retry_after: Callable[[Outcome], float | None] | None = None,
    fallback: Fallback | Callable[[Outcome], Any] | None = None,
    attempt_timeout: float | None = None,
    total_timeout: float | None = None,
    max_retries: int | None = None,
    probe_timeout: float | None = None,
    hedging: bool = True,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    rng: Callable[[], float] = random.random,
) -> ResiliencePipeline[Any]:
    """A pipeline from one `[dependencies.<name>]` section of the policy file.

    `store` holds circuit and budget state (a `RedisBreakerStore` makes them fleet-wide; default: this
    process). The overrides let the workers reuse a dependency's circuit with their own timeouts and retry
    schedule; `hedging=False` turns hedging off for calls that are not idempotent reads. `probe_timeout`
    (default: the attempt timeout) is how long a half-open probe may run before it is presumed lost; a circuit
    that callers with longer attempts share must allow the longest.
    """
    attempt = attempt_timeout if attempt_timeout is not None else dep_config.attempt_timeout
    total = total_timeout if total_timeout is not None else dep_config.total_timeout
    retry_config = dep_config.retry
    retry = RetryPolicy(
        max_retries=retry_config.max_retries if max_retries is None else max_retries,
        base_delay=retry_config.base_delay,
        max_delay=retry_config.max_delay,
        backoff=retry_config.backoff,
        jitter=retry_config.jitter,
    )
    hooks = tuple(hooks)
    breaker = None
    if dep_config.circuit_breaker is not None:
        cb = dep_config.circuit_breaker
        if store is None:
            from .circuit_breaker import LocalBreakerStore

            store = LocalBreakerStore(clock=clock, wall_clock=wall_clock)
        breaker = CircuitBreaker(
            name,
            failure_ratio=cb.failure_ratio,
            sampling_duration=cb.sampling_duration,
            minimum_throughput=cb.minimum_throughput,
            break_duration=cb.break_duration,
            # A probe cannot outlive its attempt; after that it is presumed lost.
            probe_timeout=probe_timeout if probe_timeout is not None else attempt,
            store=store,
            hooks=hooks,
            clock=clock,
            wall_clock=wall_clock,
        )
    budget = None
    if dep_config.retry_budget is not None:
        budget = RetryBudget(
            ratio=dep_config.retry_budget.ratio,
            min_per_second=dep_config.retry_budget.min_per_second,
            name=name,
            store=breaker.store if breaker is not None else store,
            clock=clock,
        )
    bulkhead = None
    if dep_config.bulkhead is not None:
        bulkhead = Bulkhead(max_concurrency=dep_config.bulkhead.max_concurrency,
                            max_queue=dep_config.bulkhead.max_queue, name=name, clock=clock)
    hedging_policy = None
    if hedging and dep_config.hedging is not None:
        hedging_policy = HedgingPolicy(max_hedged_attempts=dep_config.hedging.max_hedged_attempts,
                                       delay=dep_config.hedging.delay)
    return ResiliencePipeline(
        name,
        attempt_timeout=attempt,
        total_timeout=total,
        retry=retry,
        breaker=breaker,
        bulkhead=bulkhead,
        budget=budget,
        hedging=hedging_policy,
        fallback=fallback,
        is_failure=is_failure,
        is_timeout=is_timeout,
        retry_after=retry_after,
        hooks=hooks,
        clock=clock,
        sleep=sleep,
        rng=rng,
    )
