"""The policy file (`resilience.toml`, CONTRACT section 6): the order API's request deadline, each dependency's
resilience policies and the workers' payment jobs, parsed into frozen dataclasses.

Every key is optional; a key left out takes the contract's default. Unknown keys and bad values raise
`PolicyFileError` naming the dotted key, so a typo stops start-up instead of silently using a default. Keys
that bound one another are checked together (an attempt within its call's total timeout, the base delay within
the cap, the order API's calls within its request deadline), and the message names both keys and their values.
The dependencies' own tables are parsed by the policy library (`app.resilience`); the API's and the jobs'
settings are OrderFlow's and live here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from app.resilience import (
    BreakerConfig,
    BudgetConfig,
    BulkheadConfig,
    DependencyConfig,
    HedgingConfig,
    PolicyFileError,
    RetryConfig,
    duration,
    integer,
    parse_dependency,
    parse_table,
    positive_duration,
)

DEPENDENCY_NAMES = ("payment", "inventory", "notification")


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
class Policies:
    api: ApiConfig
    dependencies: Mapping[str, DependencyConfig]
    jobs_payment: JobsPaymentConfig


DEFAULTS = Policies(
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

_API = {"request_deadline": positive_duration}
_JOBS_PAYMENT = {
    "attempt_timeout": positive_duration,
    "max_retries": lambda k, v: integer(k, v, minimum=0),
    "backoff_base": duration,
    "backoff_max": duration,
}
# The dependencies whose calls a `POST /api/orders` makes, all under the one request deadline.
_UNDER_REQUEST_DEADLINE = ("inventory", "payment")


def _fail(key: str, message: str) -> PolicyFileError:
    return PolicyFileError(f"{key}: {message}")


def _table(key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise _fail(key, f"must be a table, got {value!r}")
    return value


def _from_document(document: Mapping[str, Any]) -> Policies:
    api, jobs_payment = DEFAULTS.api, DEFAULTS.jobs_payment
    dependencies = dict(DEFAULTS.dependencies)
    for name, raw in document.items():
        if name == "api":
            api = parse_table("api", raw, api, _API)
        elif name == "dependencies":
            for dep, dep_raw in _table("dependencies", raw).items():
                if dep not in dependencies:
                    raise _fail(f"dependencies.{dep}",
                                f"unknown dependency (expected one of: {', '.join(DEPENDENCY_NAMES)})")
                dependencies[dep] = parse_dependency(f"dependencies.{dep}", dep_raw, dependencies[dep])
        elif name == "jobs":
            for job, job_raw in _table("jobs", raw).items():
                if job != "payment":
                    raise _fail(f"jobs.{job}", "unknown key (expected: payment)")
                jobs_payment = parse_table("jobs.payment", job_raw, jobs_payment, _JOBS_PAYMENT)
        else:
            raise _fail(name, "unknown key (expected one of: api, dependencies, jobs)")
    policies = Policies(api=api, dependencies=MappingProxyType(dependencies), jobs_payment=jobs_payment)
    _check_bounds(policies)
    return policies


def _check_bounds(policies: Policies) -> None:
    """Checks between sections (a dependency's own keys are checked with its table)."""
    deadline = policies.api.request_deadline
    for name in _UNDER_REQUEST_DEADLINE:
        total = policies.dependencies[name].total_timeout
        if deadline < total:
            raise _fail("api.request_deadline",
                       f"{deadline:g} is less than dependencies.{name}.total_timeout = {total:g}; an order's "
                       f"inventory and payment calls share the request deadline, so raise it or lower that "
                       f"total_timeout")
    jobs = policies.jobs_payment
    if jobs.backoff_base > jobs.backoff_max:
        raise _fail("jobs.payment.backoff_base", f"{jobs.backoff_base:g} exceeds jobs.payment.backoff_max = "
                    f"{jobs.backoff_max:g}; backoff_max caps every delay between retries")


def parse_policies(text: str) -> Policies:
    """Parse the text of a policy file; an empty text gives `DEFAULTS`."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyFileError(f"not valid TOML: {exc}") from exc
    return _from_document(document)


def load_policies(path: str | Path | None) -> Policies:
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


__all__ = ["DEFAULTS", "DEPENDENCY_NAMES", "ApiConfig", "JobsPaymentConfig", "Policies", "PolicyFileError",
           "load_policies", "parse_policies"]
