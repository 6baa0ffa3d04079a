"""One dependency's policies as frozen dataclasses, parsed from a TOML table (`app.policies` reads the whole
policy file, `resilience.toml`, with these).

Every key is optional; a key left out keeps its base value. Unknown keys and bad values raise
`PolicyFileError` naming the dotted key, so a typo stops start-up instead of silently using a default. Keys
that bound one another are checked together (an attempt within its call's total timeout, the base delay within
the cap), and the message names both keys and their values.

Defaults the contract leaves unlisted, used when a file turns a policy on for a dependency that has none by
default (e.g. `circuit_breaker = { failure_ratio = 0.3 }` for `notification`): the other keys of that table
come from the payment/inventory values (breaker 0.5 / 10 s / 10 calls / 30 s, bulkhead 10 + 20 queued,
budget 20 % + 5/s, hedging 1 extra attempt after 0.5 s). `true` turns such a policy on with those defaults,
`false` turns it off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal, TypeVar

BackoffKind = Literal["exponential", "constant"]


class PolicyFileError(ValueError):
    """The policy file is unreadable or holds an unknown key or a bad value; the message names the key."""


@dataclass(frozen=True)
class RetryConfig:
    max_retries: int = 1
    base_delay: float = 0.2
    max_delay: float = 2.0
    backoff: BackoffKind = "exponential"
    jitter: bool = True


@dataclass(frozen=True)
class BreakerConfig:
    failure_ratio: float = 0.5
    sampling_duration: float = 10.0
    minimum_throughput: int = 10
    break_duration: float = 30.0


@dataclass(frozen=True)
class BulkheadConfig:
    max_concurrency: int = 10
    max_queue: int = 20


@dataclass(frozen=True)
class BudgetConfig:
    ratio: float = 0.2
    min_per_second: float = 5.0


@dataclass(frozen=True)
class HedgingConfig:
    max_hedged_attempts: int = 1
    delay: float = 0.5


@dataclass(frozen=True)
class DependencyConfig:
    attempt_timeout: float = 5.0
    total_timeout: float = 8.0
    retry: RetryConfig = field(default_factory=RetryConfig)
    circuit_breaker: BreakerConfig | None = None
    bulkhead: BulkheadConfig | None = None
    retry_budget: BudgetConfig | None = None
    hedging: HedgingConfig | None = None
    cache_ttl: float | None = None


# --- value checks: each returns the clean value or raises with the dotted key -----------------------------

def fail(key: str, message: str) -> PolicyFileError:
    return PolicyFileError(f"{key}: {message}")


def _number(key: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    # bool is an int subclass in Python; `true` is never a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise fail(key, f"must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise fail(key, "must be a finite number")
    if (strict and value <= minimum) or value < minimum:
        raise fail(key, f"must be a number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def duration(key: str, value: Any) -> float:
    return _number(key, value, minimum=0.0)


def positive_duration(key: str, value: Any) -> float:
    return _number(key, value, minimum=0.0, strict=True)


def integer(key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise fail(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _ratio(key: str, value: Any) -> float:
    number = _number(key, value)
    if not 0.0 < number <= 1.0:
        raise fail(key, f"must be a ratio in (0, 1], got {value!r}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(key, f"must be true or false, got {value!r}")
    return value


def _backoff(key: str, value: Any) -> BackoffKind:
    if value not in ("exponential", "constant"):
        raise fail(key, f'must be "exponential" or "constant", got {value!r}')
    return value  # type: ignore[no-any-return]


Check = Callable[[str, Any], Any]
T = TypeVar("T")

_RETRY: dict[str, Check] = {
    "max_retries": lambda k, v: integer(k, v, minimum=0),
    "base_delay": duration,
    "max_delay": duration,
    "backoff": _backoff,
    "jitter": _boolean,
}
_BREAKER: dict[str, Check] = {
    "failure_ratio": _ratio,
    "sampling_duration": positive_duration,
    "minimum_throughput": lambda k, v: integer(k, v, minimum=1),
    "break_duration": positive_duration,
}
_BULKHEAD: dict[str, Check] = {
    "max_concurrency": lambda k, v: integer(k, v, minimum=1),
    "max_queue": lambda k, v: integer(k, v, minimum=0),
}
_BUDGET: dict[str, Check] = {
    "ratio": _ratio,
    "min_per_second": duration,
}
_HEDGING: dict[str, Check] = {
    "max_hedged_attempts": lambda k, v: integer(k, v, minimum=1),
    "delay": duration,
}


def table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise fail(key, f"must be a table, got {value!r}")
    return value


def parse_table(key: str, value: Any, base: T, checks: Mapping[str, Check]) -> T:
    """Overlay the keys of one TOML table on `base` (a frozen dataclass), checking each one with `checks`."""
    entries = table(key, value)
    changes: dict[str, Any] = {}
    for name, raw in entries.items():
        check = checks.get(name)
        if check is None:
            raise fail(f"{key}.{name}", f"unknown key (expected one of: {', '.join(checks)})")
        changes[name] = check(f"{key}.{name}", raw)
    return replace(base, **changes)  # type: ignore[type-var]


def _optional(key: str, value: Any, current: T | None, generic: T, checks: Mapping[str, Check]) -> T | None:
    """A policy that may be switched off with `false`, on with `true`, or tuned with a table."""
    if value is False:
        return None
    if value is True:
        return current or generic
    return parse_table(key, value, current or generic, checks)


def parse_dependency(key: str, value: Any, base: DependencyConfig) -> DependencyConfig:
    """One dependency's table overlaid on `base`; its keys are checked alone and against one another."""
    entries = table(key, value)
    changes: dict[str, Any] = {}
    for name, raw in entries.items():
        sub = f"{key}.{name}"
        if name in ("attempt_timeout", "total_timeout"):
            changes[name] = positive_duration(sub, raw)
        elif name == "cache_ttl":
            changes[name] = None if raw is False else duration(sub, raw)
        elif name == "retry":
            changes[name] = parse_table(sub, raw, base.retry, _RETRY)
        elif name == "circuit_breaker":
            changes[name] = _optional(sub, raw, base.circuit_breaker, BreakerConfig(), _BREAKER)
        elif name == "bulkhead":
            changes[name] = _optional(sub, raw, base.bulkhead, BulkheadConfig(), _BULKHEAD)
        elif name == "retry_budget":
            changes[name] = _optional(sub, raw, base.retry_budget, BudgetConfig(), _BUDGET)
        elif name == "hedging":
            changes[name] = _optional(sub, raw, base.hedging, HedgingConfig(), _HEDGING)
        else:
            known = ", ".join(f.name for f in fields(DependencyConfig))
            raise fail(sub, f"unknown key (expected one of: {known})")
    config = replace(base, **changes)
    check_dependency(key, config)
    return config


def check_dependency(key: str, dep: DependencyConfig) -> None:
    """Checks between the keys of one dependency: each may be fine alone and still contradict another (a 9 s
    attempt in a 1 s call). Keys left out take part with their defaults."""
    at_most(f"{key}.attempt_timeout", dep.attempt_timeout, f"{key}.total_timeout", dep.total_timeout,
            "one attempt cannot outlast the whole call")
    at_most(f"{key}.retry.base_delay", dep.retry.base_delay, f"{key}.retry.max_delay", dep.retry.max_delay,
            "max_delay caps every delay between retries")


def at_most(key: str, value: float, bound_key: str, bound: float, why: str) -> None:
    if value > bound:
        raise fail(key, f"{value:g} exceeds {bound_key} = {bound:g}; {why}")


