"""The policy file (`resilience.toml`, CONTRACT section 6) parsed into frozen dataclasses.

Every key is optional; a key left out takes the contract's default. Unknown keys and bad values raise
`PolicyFileError` naming the dotted key, so a typo stops start-up instead of silently using a default. Keys
that bound one another are checked together (an attempt within its call's total timeout, the base delay within
the cap, the order API's calls within its request deadline), and the message names both keys and their values.

Defaults the contract leaves unlisted, used when a file turns a policy on for a dependency that has none by
default (e.g. `circuit_breaker = { failure_ratio = 0.3 }` for `notification`): the other keys of that table
come from the payment/inventory values (breaker 0.5 / 10 s / 10 calls / 30 s, bulkhead 10 + 20 queued,
budget 20 % + 5/s, hedging 1 extra attempt after 0.5 s). `true` turns such a policy on with those defaults,
`false` turns it off.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

BackoffKind = Literal["exponential", "constant"]
DEPENDENCY_NAMES = ("payment", "inventory", "notification")


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


@dataclass(frozen=True)
class ApiConfig:
    request_deadline: float = 10.0


@dataclass(frozen=True)
class JobsPaymentConfig:
    attempt_timeout: float = 10.0
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0


@dataclass(frozen=True)
class ResilienceConfig:
    api: ApiConfig
    dependencies: Mapping[str, DependencyConfig]
    jobs_payment: JobsPaymentConfig


DEFAULTS = ResilienceConfig(
    api=ApiConfig(request_deadline=10.0),
    dependencies=MappingProxyType({
        "payment": DependencyConfig(
            attempt_timeout=5.0,
            total_timeout=8.0,
            retry=RetryConfig(max_retries=1, base_delay=0.2, max_delay=2.0, backoff="exponential"),
            circuit_breaker=BreakerConfig(0.5, 10.0, 10, 30.0),
            bulkhead=BulkheadConfig(max_concurrency=10, max_queue=20),
            retry_budget=BudgetConfig(ratio=0.2, min_per_second=5.0),
        ),
        "inventory": DependencyConfig(
            attempt_timeout=5.0,
            total_timeout=8.0,
            retry=RetryConfig(max_retries=2, base_delay=0.1, max_delay=1.0, backoff="exponential"),
            circuit_breaker=BreakerConfig(0.5, 10.0, 10, 30.0),
            bulkhead=BulkheadConfig(max_concurrency=20, max_queue=40),
            retry_budget=BudgetConfig(ratio=0.2, min_per_second=5.0),
            hedging=HedgingConfig(max_hedged_attempts=1, delay=0.5),
            cache_ttl=300.0,
        ),
        "notification": DependencyConfig(
            attempt_timeout=3.0,
            total_timeout=3.0,
            retry=RetryConfig(max_retries=1, base_delay=0.2, max_delay=0.2, backoff="constant", jitter=False),
        ),
    }),
    jobs_payment=JobsPaymentConfig(attempt_timeout=10.0, max_retries=6, backoff_base=1.0, backoff_max=60.0),
)


# --- value checks: each returns the clean value or raises with the dotted key -----------------------------

def _fail(key: str, message: str) -> PolicyFileError:
    return PolicyFileError(f"{key}: {message}")


def _number(key: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    # bool is an int subclass in Python; `true` is never a duration.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, f"must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")):
        raise _fail(key, "must be a finite number")
    if (strict and value <= minimum) or value < minimum:
        raise _fail(key, f"must be a number {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return float(value)


def _duration(key: str, value: Any) -> float:
    return _number(key, value, minimum=0.0)


def _positive_duration(key: str, value: Any) -> float:
    return _number(key, value, minimum=0.0, strict=True)


def _integer(key: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(key, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _ratio(key: str, value: Any) -> float:
    number = _number(key, value)
    if not 0.0 < number <= 1.0:
        raise _fail(key, f"must be a ratio in (0, 1], got {value!r}")
    return number


def _boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(key, f"must be true or false, got {value!r}")
    return value


def _backoff(key: str, value: Any) -> BackoffKind:
    if value not in ("exponential", "constant"):
        raise _fail(key, f'must be "exponential" or "constant", got {value!r}')
    return value  # type: ignore[no-any-return]


Check = Callable[[str, Any], Any]
T = TypeVar("T")

_RETRY: dict[str, Check] = {
    "max_retries": lambda k, v: _integer(k, v, minimum=0),
    "base_delay": _duration,
    "max_delay": _duration,
    "backoff": _backoff,
    "jitter": _boolean,
}
_BREAKER: dict[str, Check] = {
    "failure_ratio": _ratio,
    "sampling_duration": _positive_duration,
    "minimum_throughput": lambda k, v: _integer(k, v, minimum=1),
    "break_duration": _positive_duration,
}
_BULKHEAD: dict[str, Check] = {
    "max_concurrency": lambda k, v: _integer(k, v, minimum=1),
    "max_queue": lambda k, v: _integer(k, v, minimum=0),
}
_BUDGET: dict[str, Check] = {
    "ratio": _ratio,
    "min_per_second": _duration,
}
_HEDGING: dict[str, Check] = {
    "max_hedged_attempts": lambda k, v: _integer(k, v, minimum=1),
    "delay": _duration,
}
_JOBS_PAYMENT: dict[str, Check] = {
    "attempt_timeout": _positive_duration,
    "max_retries": lambda k, v: _integer(k, v, minimum=0),
    "backoff_base": _duration,
    "backoff_max": _duration,
}


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, f"must be a table, got {value!r}")
    return value


def _merge(key: str, value: Any, base: T, checks: Mapping[str, Check]) -> T:
    """Overlay the keys of one TOML table on `base`, checking each one."""
    table = _table(key, value)
    changes: dict[str, Any] = {}
    for name, raw in table.items():
        check = checks.get(name)
        if check is None:
            raise _fail(f"{key}.{name}", f"unknown key (expected one of: {', '.join(checks)})")
        changes[name] = check(f"{key}.{name}", raw)
    return replace(base, **changes)  # type: ignore[type-var]


def _optional(key: str, value: Any, current: T | None, generic: T, checks: Mapping[str, Check]) -> T | None:
    """A policy that may be switched off with `false`, on with `true`, or tuned with a table."""
    if value is False:
        return None
    if value is True:
        return current or generic
    return _merge(key, value, current or generic, checks)


def _dependency(key: str, value: Any, base: DependencyConfig) -> DependencyConfig:
    table = _table(key, value)
    changes: dict[str, Any] = {}
    for name, raw in table.items():
        sub = f"{key}.{name}"
        if name in ("attempt_timeout", "total_timeout"):
            changes[name] = _positive_duration(sub, raw)
        elif name == "cache_ttl":
            changes[name] = None if raw is False else _duration(sub, raw)
        elif name == "retry":
            changes[name] = _merge(sub, raw, base.retry, _RETRY)
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
            raise _fail(sub, f"unknown key (expected one of: {known})")
    return replace(base, **changes)


def _from_document(document: Mapping[str, Any]) -> ResilienceConfig:
    api, jobs_payment = DEFAULTS.api, DEFAULTS.jobs_payment
    dependencies = dict(DEFAULTS.dependencies)
    for name, raw in document.items():
        if name == "api":
            api = _merge("api", raw, api, {"request_deadline": _positive_duration})
        elif name == "dependencies":
            for dep, dep_raw in _table("dependencies", raw).items():
                if dep not in dependencies:
                    raise _fail(f"dependencies.{dep}",
                                f"unknown dependency (expected one of: {', '.join(DEPENDENCY_NAMES)})")
                dependencies[dep] = _dependency(f"dependencies.{dep}", dep_raw, dependencies[dep])
        elif name == "jobs":
            for job, job_raw in _table("jobs", raw).items():
                if job != "payment":
                    raise _fail(f"jobs.{job}", "unknown key (expected: payment)")
                jobs_payment = _merge("jobs.payment", job_raw, jobs_payment, _JOBS_PAYMENT)
        else:
            raise _fail(name, "unknown key (expected one of: api, dependencies, jobs)")
    config = ResilienceConfig(api=api, dependencies=MappingProxyType(dependencies), jobs_payment=jobs_payment)
    _check_bounds(config)
    return config


# The dependencies whose calls a `POST /api/orders` makes, all under the one request deadline.
_UNDER_REQUEST_DEADLINE = ("inventory", "payment")


def _at_most(key: str, value: float, bound_key: str, bound: float, why: str) -> None:
    if value > bound:
        raise _fail(key, f"{value:g} exceeds {bound_key} = {bound:g}; {why}")


def _check_bounds(config: ResilienceConfig) -> None:
    """Checks between keys: each value may be fine alone and still contradict another (a 9 s attempt in a 1 s
    call). Keys left out of the file take part with their defaults."""
    for name, dep in config.dependencies.items():
        key = f"dependencies.{name}"
        _at_most(f"{key}.attempt_timeout", dep.attempt_timeout, f"{key}.total_timeout", dep.total_timeout,
                 "one attempt cannot outlast the whole call")
        _at_most(f"{key}.retry.base_delay", dep.retry.base_delay, f"{key}.retry.max_delay", dep.retry.max_delay,
                 "max_delay caps every delay between retries")
    deadline = config.api.request_deadline
    for name in _UNDER_REQUEST_DEADLINE:
        total = config.dependencies[name].total_timeout
        if deadline < total:
            raise _fail("api.request_deadline",
                        f"{deadline:g} is less than dependencies.{name}.total_timeout = {total:g}; an order's "
                        f"inventory and payment calls share the request deadline, so raise it or lower that "
                        f"total_timeout")
    jobs = config.jobs_payment
    _at_most("jobs.payment.backoff_base", jobs.backoff_base, "jobs.payment.backoff_max", jobs.backoff_max,
             "backoff_max caps every delay between retries")


def parse_policies(text: str) -> ResilienceConfig:
    """Parse the text of a policy file; an empty text gives `DEFAULTS`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"not valid TOML: {exc}") from exc
    return _from_document(document)


def load_policies(path: str | Path | None) -> ResilienceConfig:
    """Read a policy file; `None` means no file at all, i.e. the contract's defaults."""
    if path is None:
        return DEFAULTS
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyFileError(f"{path}: cannot read the policy file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise PolicyFileError(f"{path}: the policy file is not UTF-8") from exc
    return parse_policies(text)
