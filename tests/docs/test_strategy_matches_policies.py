"""docs/resilience-strategy.md states the numbers OrderFlow runs with: its tables must match the code.

Three kinds of table are read: `setting` rows (every value of `resilience.toml` as `load_policies` sees it),
`derived` rows (what the settings add up to, recomputed here with the project's own backoff functions) and
`constant` rows (numbers that live in the code, read from the code). A row missing, a row too many or one
differing value fails.
"""

from __future__ import annotations

import inspect
import os
import re
import runpy
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from app.adapters.db import DB_WAIT_SECONDS
from app.adapters.payment_client import PaymentClient
from app.adapters.redis_breaker_store import RedisBreakerStore
from app.bootstrap import payment_probe_timeout
from app.config import Settings
from app.policies import Policies, load_policies, parse_policies
from app.resilience import DependencyConfig
from app.resilience.backoff import constant_delay, exponential_delay
from app.resilience.budget import DEFAULT_WINDOW
from app.resilience.circuit_breaker import BUCKETS
from app.resilience.pipeline import build_pipeline
from app.services import load, notifications
from app.services.flags import CACHE_SECONDS
from app.services.notifications import NotificationRunner
from app.services.payment_jobs import DEFAULT_LEASE_MARGIN
from app.stack.supervisor import stack_processes
from workers.relay import DEFAULT_REPUBLISH_AFTER

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "resilience-strategy.md"
POLICY_FILE = REPO / "resilience.toml"

# The header of each checked table; the first column names the kind of row.
KINDS = ("setting", "derived", "constant")
_HEADER = re.compile(r"^\|\s*(setting|derived|constant)\s*\|\s*value\s*\|\s*unit\s*\|")
_ROW = re.compile(r"^\|\s*`(?P<key>[a-z_.]+)`\s*\|\s*`(?P<value>[^`]+)`\s*\|")
_SEPARATOR = re.compile(r"^\|[\s:|-]+\|\s*$")

Table = dict[str, Any]


# --- reading the document ----------------------------------------------------------------------------

def doc_tables(text: str) -> dict[str, Table]:
    """Every checked row of the document by kind: {kind: {dotted key: TOML value}}."""
    tables: dict[str, Table] = {kind: {} for kind in KINDS}
    kind: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            kind = header.group(1)
            continue
        if kind is None or _SEPARATOR.match(line):
            continue
        if not line.startswith("|"):
            kind = None  # the table ended
            continue
        row = _ROW.match(line)
        if row is None:
            raise AssertionError(f"line {number}: a {kind} row needs `key` and `value` cells: {line}")
        key = row.group("key")
        if key in tables[kind]:
            raise AssertionError(f"line {number}: {kind} {key} appears twice")
        tables[kind][key] = _literal(row.group("value"), where=f"line {number}")
    return tables


def _literal(text: str, *, where: str) -> Any:
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError as exc:
        raise AssertionError(f"{where}: {text!r} is not a TOML literal ({exc})") from None


# --- what the code says ------------------------------------------------------------------------------

_POLICIES = ("circuit_breaker", "bulkhead", "retry_budget", "hedging")


def setting_rows(policies: Policies) -> Table:
    """The policy file flattened to dotted keys; a policy that is off is `false`."""
    rows: Table = {"api.request_deadline": policies.api.request_deadline}
    for name, dep in policies.dependencies.items():
        rows.update(_dependency_rows(f"dependencies.{name}", dep))
    for field in fields(policies.jobs_payment):
        rows[f"jobs.payment.{field.name}"] = getattr(policies.jobs_payment, field.name)
    return rows


def _dependency_rows(prefix: str, dep: DependencyConfig) -> Iterator[tuple[str, Any]]:
    yield f"{prefix}.attempt_timeout", dep.attempt_timeout
    yield f"{prefix}.total_timeout", dep.total_timeout
    for field in fields(dep.retry):
        yield f"{prefix}.retry.{field.name}", getattr(dep.retry, field.name)
    for policy in _POLICIES:
        config = getattr(dep, policy)
        if config is None:
            yield f"{prefix}.{policy}", False
            continue
        for field in fields(config):
            yield f"{prefix}.{policy}.{field.name}", getattr(config, field.name)
    yield f"{prefix}.cache_ttl", False if dep.cache_ttl is None else dep.cache_ttl


def _delay_caps(dep: DependencyConfig) -> list[float]:
    retry = dep.retry
    shape = exponential_delay if retry.backoff == "exponential" else constant_delay
    return [shape(n, retry.base_delay, retry.max_delay) for n in range(retry.max_retries)]


def _probe_timeout(policies: Policies) -> float:
    # As the composition root builds it (with an in-process store: only the breaker's spec is read).
    dep = policies.dependencies["payment"]
    breaker = build_pipeline("payment", dep, hedging=False, probe_timeout=payment_probe_timeout(policies)).breaker
    assert breaker is not None
    return breaker.spec.probe_timeout


def derived_rows(policies: Policies) -> Table:
    deps, jobs, api = policies.dependencies, policies.jobs_payment, policies.api
    payment, inventory = deps["payment"], deps["inventory"]
    job_caps = [exponential_delay(n, jobs.backoff_base, jobs.backoff_max) for n in range(jobs.max_retries)]
    hedges = inventory.hedging.max_hedged_attempts if inventory.hedging is not None else 0
    runner = _notification_runner_defaults()
    rows: Table = {
        "payment.retry.delay_caps": _delay_caps(payment),
        "inventory.retry.delay_caps": _delay_caps(inventory),
        "notification.retry.delay_caps": _delay_caps(deps["notification"]),
        "jobs.payment.backoff_caps": job_caps,
        "jobs.payment.backoff_caps_total": sum(job_caps),
        "payment.api_attempts_max": 1 + payment.retry.max_retries,
        "jobs.payment.attempts_max": 1 + jobs.max_retries,
        "payment.attempts_before_dead_letter_max": 2 + payment.retry.max_retries + jobs.max_retries,
        "inventory.attempts_per_lookup_max": (1 + inventory.retry.max_retries) * (1 + hedges),
        "payment.real_time_max": min(payment.total_timeout, api.request_deadline),
        "payment.circuit.probe_timeout": _probe_timeout(policies),
        "jobs.payment.lease": jobs.attempt_timeout + DEFAULT_LEASE_MARGIN,
        "api.idempotency_claim": api.request_deadline,
        "notification.job.backoff_caps": [
            exponential_delay(n, runner["backoff_base"], runner["backoff_max"])
            for n in range(runner["max_attempts"] - 1)
        ],
    }
    for name in ("payment", "inventory"):
        budget = deps[name].retry_budget
        if budget is not None:
            rows[f"{name}.retry_budget.floor_per_window"] = budget.min_per_second * DEFAULT_WINDOW
    return rows


def _default(function: Callable[..., Any], parameter: str) -> Any:
    return inspect.signature(function).parameters[parameter].default


def _gunicorn_setting(name: str) -> Any:
    # Evaluated as gunicorn does, without the API_* overrides a caller's environment might carry.
    names = ("API_PROCESSES", "API_THREADS", "API_PORT")
    saved = {key: os.environ.pop(key) for key in names if key in os.environ}
    try:
        return runpy.run_path(str(REPO / "app" / "gunicorn_config.py"))[name]
    finally:
        os.environ.update(saved)


def _notification_runner_defaults() -> dict[str, Any]:
    return {field.name: field.default for field in fields(NotificationRunner)}


def _worker_concurrency() -> int:
    worker = next(spec for spec in stack_processes(Settings()) if spec.name == "worker")
    (option,) = [arg for arg in worker.argv if arg.startswith("--concurrency=")]
    return int(option.split("=", 1)[1])


def constant_rows() -> Table:
    runner = _notification_runner_defaults()
    return {
        "retry_budget.window": DEFAULT_WINDOW,
        "circuit.buckets": BUCKETS,
        "circuit.shared.flush_interval": _default(RedisBreakerStore.__init__, "flush_interval"),
        "circuit.shared.retry_interval": _default(RedisBreakerStore.__init__, "retry_interval"),
        "payment.ledger_lookup_timeout": _default(PaymentClient.__init__, "lookup_timeout"),
        "jobs.payment.lease_margin": DEFAULT_LEASE_MARGIN,
        "relay.interval": Settings().relay_interval,
        "relay.republish_after": DEFAULT_REPUBLISH_AFTER,
        "notification.job.max_attempts": runner["max_attempts"],
        "notification.job.backoff_base": runner["backoff_base"],
        "notification.job.backoff_max": runner["backoff_max"],
        "notification.confirmation.send_timeout": notifications.CONFIRMATION_SEND_TIMEOUT,
        "notification.confirmation.pause": notifications.CONFIRMATION_PAUSE,
        "notification.confirmation.queue": notifications.CONFIRMATION_QUEUE,
        "notification.confirmation.batch": notifications.CONFIRMATION_BATCH,
        "notification.confirmation.linger": notifications.CONFIRMATION_LINGER,
        "notification.confirmation.hold": notifications.CONFIRMATION_HOLD,
        "notification.confirmation.held": notifications.CONFIRMATION_HELD,
        "load.window": load.LOAD_WINDOW,
        "load.gap": load.LOAD_GAP,
        "load.saturated": load.SATURATED,
        "flags.cache": CACHE_SECONDS,
        "database.wait": DB_WAIT_SECONDS,
        "api.processes": _gunicorn_setting("workers"),
        "api.threads_per_process": _gunicorn_setting("threads"),
        "worker.concurrency": _worker_concurrency(),
    }


# --- comparing -----------------------------------------------------------------------------------------

def _same(documented: Any, actual: Any) -> bool:
    # The form is fixed: a count stays an integer, a duration a float, a flag a boolean.
    if isinstance(actual, list):
        return isinstance(documented, list) and len(documented) == len(actual) and all(
            _same(d, a) for d, a in zip(documented, actual, strict=True))
    if isinstance(actual, float) and isinstance(documented, float):
        return documented == pytest.approx(actual, rel=1e-9, abs=1e-12)
    return type(documented) is type(actual) and documented == actual


def mismatches(documented: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between a documented table and the code's values (empty: they agree)."""
    problems = [f"{key}: documented, but unknown to the code"
                for key in sorted(set(documented) - set(actual))]
    problems += [f"{key}: {actual[key]!r} in the code, missing from the document"
                 for key in sorted(set(actual) - set(documented))]
    problems += [f"{key}: documented {documented[key]!r}, the code has {actual[key]!r}"
                 for key in sorted(set(documented) & set(actual)) if not _same(documented[key], actual[key])]
    return problems


# Keys the policy file holds as counts; every other number there is a duration or a ratio (a float).
_INTEGER_KEYS = frozenset({"max_retries", "minimum_throughput", "max_concurrency", "max_queue",
                           "max_hedged_attempts"})


def raw_file_rows(text: str) -> Table:
    """Every key written in the policy file itself, flattened as the document spells it."""
    rows: Table = {}

    def walk(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(dotted, value)
            else:
                rows[dotted] = float(value) if isinstance(value, int) and not isinstance(value, bool) and \
                    key not in _INTEGER_KEYS else value

    walk("", tomllib.loads(text))
    return rows



# --- the tests -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tables() -> dict[str, Table]:
    return doc_tables(DOC.read_text(encoding="utf-8"))


def test_every_policy_value_is_documented_and_agrees(tables: dict[str, Table]) -> None:
    assert mismatches(tables["setting"], setting_rows(load_policies(POLICY_FILE))) == []


def test_every_key_written_in_the_policy_file_is_documented_with_its_value(tables: dict[str, Table]) -> None:
    written = raw_file_rows(POLICY_FILE.read_text(encoding="utf-8"))
    assert written, "resilience.toml holds no keys"
    assert mismatches({key: tables["setting"].get(key) for key in written}, written) == []


def test_derived_bounds_add_up_from_the_policies(tables: dict[str, Table]) -> None:
    assert mismatches(tables["derived"], derived_rows(load_policies(POLICY_FILE))) == []


def test_constants_match_the_code(tables: dict[str, Table]) -> None:
    assert mismatches(tables["constant"], constant_rows()) == []


def test_each_dependency_and_the_request_deadline_have_rows(tables: dict[str, Table]) -> None:
    settings = tables["setting"]
    assert "api.request_deadline" in settings
    for name in ("payment", "inventory", "notification"):
        assert f"dependencies.{name}.attempt_timeout" in settings
    assert {key for key in settings if key.startswith("jobs.payment.")} == {
        "jobs.payment.attempt_timeout", "jobs.payment.max_retries", "jobs.payment.backoff_base",
        "jobs.payment.backoff_max"}


def test_a_changed_number_in_the_policy_file_is_caught(tables: dict[str, Table]) -> None:
    text = POLICY_FILE.read_text(encoding="utf-8")
    changed, count = re.subn(r"^max_retries = 6$", "max_retries = 7", text, flags=re.MULTILINE)
    assert count == 1
    problems = mismatches(tables["setting"], setting_rows(parse_policies(changed)))
    assert problems == ["jobs.payment.max_retries: documented 6, the code has 7"]
    assert mismatches(tables["derived"], derived_rows(parse_policies(changed)))


def test_a_changed_number_in_the_document_is_caught() -> None:
    text = DOC.read_text(encoding="utf-8")
    row = "| `dependencies.inventory.hedging.delay` | `0.5` |"
    assert text.count(row) == 1
    changed = doc_tables(text.replace(row, "| `dependencies.inventory.hedging.delay` | `0.25` |"))
    assert mismatches(changed["setting"], setting_rows(load_policies(POLICY_FILE))) == [
        "dependencies.inventory.hedging.delay: documented 0.25, the code has 0.5"]


def test_a_row_missing_from_the_document_or_in_the_wrong_form_is_caught() -> None:
    text = DOC.read_text(encoding="utf-8")
    key = "`dependencies.payment.bulkhead.max_queue`"
    without = "\n".join(line for line in text.splitlines() if key not in line)
    actual = setting_rows(load_policies(POLICY_FILE))
    assert mismatches(doc_tables(without)["setting"], actual) == [
        "dependencies.payment.bulkhead.max_queue: 20 in the code, missing from the document"]
    as_float = text.replace("| `dependencies.payment.bulkhead.max_queue` | `20` |",
                            "| `dependencies.payment.bulkhead.max_queue` | `20.0` |")
    assert mismatches(doc_tables(as_float)["setting"], actual) == [
        "dependencies.payment.bulkhead.max_queue: documented 20.0, the code has 20"]


def test_a_malformed_row_in_a_checked_table_is_an_error() -> None:
    # Backticks missing: the row would otherwise be skipped silently.
    text = "| setting | value | unit | meaning |\n|---|---|---|---|\n| api.request_deadline | 10.0 | s |\n"
    with pytest.raises(AssertionError, match="line 3"):
        doc_tables(text)
