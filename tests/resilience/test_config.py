from __future__ import annotations

from pathlib import Path

import pytest

from app.policies import DEFAULTS, PolicyFileError, load_policies, parse_policies
from app.resilience import BreakerConfig, BulkheadConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_shipped_policy_file_parses_to_the_contract_defaults() -> None:
    assert load_policies(REPO_ROOT / "resilience.toml") == DEFAULTS


def test_shipped_policy_file_is_the_contract_block_verbatim() -> None:
    contract = Path("/work/shared/CONTRACT.md")
    if not contract.exists():
        pytest.skip("the contract is not on this machine")
    text = contract.read_text()
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    assert (REPO_ROOT / "resilience.toml").read_text() == block


def test_empty_file_gives_every_default() -> None:
    config = parse_policies("")
    assert config == DEFAULTS
    assert set(config.dependencies) == {"payment", "inventory", "notification"}
    assert load_policies(None) == DEFAULTS


def test_defaults_are_the_contract_numbers() -> None:
    payment = DEFAULTS.dependencies["payment"]
    assert (payment.attempt_timeout, payment.total_timeout) == (5.0, 8.0)
    assert payment.retry.max_retries == 1 and payment.retry.max_delay == 2.0
    assert payment.circuit_breaker == BreakerConfig(0.5, 10.0, 10, 30.0)
    assert payment.bulkhead == BulkheadConfig(10, 20)
    assert payment.hedging is None
    inventory = DEFAULTS.dependencies["inventory"]
    assert inventory.hedging is not None and inventory.hedging.delay == 0.5
    assert inventory.cache_ttl == 300.0
    notification = DEFAULTS.dependencies["notification"]
    assert notification.circuit_breaker is None and notification.bulkhead is None
    assert notification.retry.backoff == "constant" and notification.retry.jitter is False
    assert DEFAULTS.api.request_deadline == 10.0
    assert DEFAULTS.jobs_payment.max_retries == 6 and DEFAULTS.jobs_payment.backoff_max == 60.0


def test_a_partial_table_keeps_the_other_keys_of_that_dependency() -> None:
    config = parse_policies("[dependencies.inventory]\nretry = { max_retries = 5 }\n")
    retry = config.dependencies["inventory"].retry
    assert retry.max_retries == 5
    assert (retry.base_delay, retry.max_delay) == (0.1, 1.0)
    assert config.dependencies["payment"] == DEFAULTS.dependencies["payment"]


def test_false_turns_a_policy_off_and_a_table_turns_it_on_with_defaults() -> None:
    config = parse_policies(
        "[dependencies.payment]\ncircuit_breaker = false\n"
        "[dependencies.notification]\ncircuit_breaker = { failure_ratio = 0.25 }\nbulkhead = true\n"
    )
    assert config.dependencies["payment"].circuit_breaker is None
    assert config.dependencies["notification"].circuit_breaker == BreakerConfig(0.25, 10.0, 10, 30.0)
    assert config.dependencies["notification"].bulkhead == BulkheadConfig(10, 20)


def test_integers_are_accepted_as_durations() -> None:
    config = parse_policies("[api]\nrequest_deadline = 12\n")
    assert config.api.request_deadline == 12.0 and isinstance(config.api.request_deadline, float)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[dependencies.payment]\nretry = { max_retries = -1 }", "dependencies.payment.retry.max_retries"),
        ("[dependencies.payment]\nretry = { max_retries = 1.5 }", "dependencies.payment.retry.max_retries"),
        ("[dependencies.payment]\nretry = { max_retries = true }", "dependencies.payment.retry.max_retries"),
        ("[dependencies.payment]\nattempt_timeout = true", "dependencies.payment.attempt_timeout"),
        ("[dependencies.payment]\nattempt_timeout = -1.0", "dependencies.payment.attempt_timeout"),
        ("[dependencies.payment]\ntotal_timeout = \"8\"", "dependencies.payment.total_timeout"),
        ("[dependencies.payment]\nretry = { base_delay = -0.1 }", "dependencies.payment.retry.base_delay"),
        ("[dependencies.payment]\nretry = { backoff = \"linear\" }", "dependencies.payment.retry.backoff"),
        ("[dependencies.payment]\nretry = { jitter = 1 }", "dependencies.payment.retry.jitter"),
        ("[dependencies.payment]\nretry = { tries = 1 }", "dependencies.payment.retry.tries"),
        ("[dependencies.payment]\ncircuit_breaker = { failure_ratio = 0 }",
         "dependencies.payment.circuit_breaker.failure_ratio"),
        ("[dependencies.payment]\ncircuit_breaker = { failure_ratio = 1.5 }",
         "dependencies.payment.circuit_breaker.failure_ratio"),
        ("[dependencies.payment]\ncircuit_breaker = { minimum_throughput = 0 }",
         "dependencies.payment.circuit_breaker.minimum_throughput"),
        ("[dependencies.payment]\ncircuit_breaker = { break_duration = -30 }",
         "dependencies.payment.circuit_breaker.break_duration"),
        ("[dependencies.payment]\ncircuit_breaker = \"off\"", "dependencies.payment.circuit_breaker"),
        ("[dependencies.payment]\nbulkhead = { max_concurrency = 0 }",
         "dependencies.payment.bulkhead.max_concurrency"),
        ("[dependencies.payment]\nbulkhead = { max_queue = -1 }", "dependencies.payment.bulkhead.max_queue"),
        ("[dependencies.payment]\nretry_budget = { ratio = 2 }", "dependencies.payment.retry_budget.ratio"),
        ("[dependencies.payment]\nretry_budget = { min_per_second = -5 }",
         "dependencies.payment.retry_budget.min_per_second"),
        ("[dependencies.inventory]\nhedging = { max_hedged_attempts = 0 }",
         "dependencies.inventory.hedging.max_hedged_attempts"),
        ("[dependencies.inventory]\ncache_ttl = -1", "dependencies.inventory.cache_ttl"),
        ("[dependencies.inventory]\ncolour = \"red\"", "dependencies.inventory.colour"),
        ("[dependencies.shipping]\nattempt_timeout = 1", "dependencies.shipping"),
        ("[api]\nrequest_deadline = 0", "api.request_deadline"),
        ("[api]\ndeadline = 3", "api.deadline"),
        ("[jobs.payment]\nmax_retries = -2", "jobs.payment.max_retries"),
        ("[jobs.payment]\nbackoff_max = false", "jobs.payment.backoff_max"),
        ("[jobs.refund]\nmax_retries = 1", "jobs.refund"),
        ("[workers]\nx = 1", "workers"),
        ("dependencies = 3", "dependencies"),
    ],
)
def test_every_bad_value_names_its_key(text: str, key: str) -> None:
    with pytest.raises(PolicyFileError) as caught:
        parse_policies(text)
    assert str(caught.value).startswith(f"{key}: ")


def test_the_message_says_what_is_expected() -> None:
    expected = r"^dependencies\.payment\.retry\.max_retries: must be an integer >= 0"
    with pytest.raises(PolicyFileError, match=expected):
        parse_policies("[dependencies.payment]\nretry = { max_retries = -1 }")


def test_broken_toml_and_missing_file_are_policy_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError, match="not valid TOML"):
        parse_policies("[api\n")
    with pytest.raises(PolicyFileError, match="cannot read"):
        load_policies(tmp_path / "missing.toml")


def test_config_objects_are_frozen() -> None:
    with pytest.raises(AttributeError):
        DEFAULTS.api.request_deadline = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        DEFAULTS.dependencies["payment"] = DEFAULTS.dependencies["inventory"]  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dependencies.payment]\nattempt_timeout = 9\ntotal_timeout = 1",
         "dependencies.payment.attempt_timeout: 9 exceeds dependencies.payment.total_timeout = 1; "),
        # A key left out takes part with its default: inventory's total_timeout is 8.
        ("[dependencies.inventory]\nattempt_timeout = 8.5",
         "dependencies.inventory.attempt_timeout: 8.5 exceeds dependencies.inventory.total_timeout = 8; "),
        ("[dependencies.notification]\nretry = { base_delay = 0.5 }",
         "dependencies.notification.retry.base_delay: 0.5 exceeds dependencies.notification.retry.max_delay = 0.2; "),
        ("[dependencies.payment]\nretry = { base_delay = 3.0, max_delay = 2.5 }",
         "dependencies.payment.retry.base_delay: 3 exceeds dependencies.payment.retry.max_delay = 2.5; "),
        ("[api]\nrequest_deadline = 7\n[dependencies.inventory]\nattempt_timeout = 1\ntotal_timeout = 2",
         "api.request_deadline: 7 is less than dependencies.payment.total_timeout = 8; "),
        ("[api]\nrequest_deadline = 3\n[dependencies.payment]\nattempt_timeout = 1\ntotal_timeout = 2",
         "api.request_deadline: 3 is less than dependencies.inventory.total_timeout = 8; "),
        ("[jobs.payment]\nbackoff_base = 5\nbackoff_max = 1",
         "jobs.payment.backoff_base: 5 exceeds jobs.payment.backoff_max = 1; "),
    ],
)
def test_keys_that_bound_each_other_are_checked_together(text: str, message: str) -> None:
    with pytest.raises(PolicyFileError) as caught:
        parse_policies(text)
    assert str(caught.value).startswith(message)


def test_equal_bounds_are_accepted_and_notifications_are_not_under_the_request_deadline() -> None:
    config = parse_policies(
        "[api]\nrequest_deadline = 2\n"
        "[dependencies.payment]\nattempt_timeout = 2\ntotal_timeout = 2\nretry = { base_delay = 1, max_delay = 1 }\n"
        "[dependencies.inventory]\nattempt_timeout = 1\ntotal_timeout = 2\n"
        "[dependencies.notification]\nattempt_timeout = 5\ntotal_timeout = 5\n"
        "[jobs.payment]\nbackoff_base = 3\nbackoff_max = 3\n"
    )
    assert config.api.request_deadline == config.dependencies["payment"].total_timeout == 2.0
    assert config.dependencies["notification"].total_timeout == 5.0
    assert config.jobs_payment.backoff_base == config.jobs_payment.backoff_max == 3.0
