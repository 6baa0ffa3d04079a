"""Frozen records of every decision the policies take; hooks turn them into logs and metrics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CallOutcome = Literal["success", "failure", "rejected", "broken", "fallback"]
TimeoutKind = Literal["attempt", "total"]


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    service: str
    attempt: int  # the number of the attempt about to run (1 = first retry)
    delay: float
    reason: str  # "exception:<Type>", "result" or "timeout"


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    service: str
    from_state: str
    to_state: str


@dataclass(frozen=True, slots=True)
class TimeoutOccurred:
    service: str
    kind: TimeoutKind


@dataclass(frozen=True, slots=True)
class BulkheadRejected:
    service: str


@dataclass(frozen=True, slots=True)
class FallbackExecuted:
    service: str


@dataclass(frozen=True, slots=True)
class HedgeStarted:
    service: str


@dataclass(frozen=True, slots=True)
class BudgetExhausted:
    service: str


@dataclass(frozen=True, slots=True)
class AttemptFinished:
    service: str
    success: bool
    duration: float


@dataclass(frozen=True, slots=True)
class CallFinished:
    service: str
    outcome: CallOutcome
    duration: float


Event = (
    RetryScheduled
    | BreakerTransition
    | TimeoutOccurred
    | BulkheadRejected
    | FallbackExecuted
    | HedgeStarted
    | BudgetExhausted
    | AttemptFinished
    | CallFinished
)
