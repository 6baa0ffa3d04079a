"""The payment circuit is shared by the API's attempts and the workers' longer ones: a half-open probe holds
it for the longest attempt, so a slow worker probe never has a second probe started beside it."""

from __future__ import annotations

import pytest

from app.bootstrap import build_dependencies
from app.config import Settings
from app.policies import parse_policies
from app.resilience.pipeline import build_pipeline

POLICIES = """
[dependencies.payment]
attempt_timeout = 2.0
total_timeout = 8.0

[jobs.payment]
attempt_timeout = 7.0
"""


@pytest.mark.parametrize(("api", "worker"), [(2.0, 7.0), (6.0, 3.0)])
def test_the_payment_probe_outlives_the_longest_attempt_of_api_and_workers(
    redis_url: str, key_prefix: str, api: float, worker: float
) -> None:
    policies = parse_policies(POLICIES.replace("2.0", str(api)).replace("7.0", str(worker)))
    settings = Settings.from_env({"REDIS_URL": redis_url, "ORDERFLOW_REDIS_PREFIX": key_prefix})
    deps = build_dependencies(settings, policies)
    assert deps["circuits"].breakers["payment"].spec.probe_timeout == max(api, worker)


def test_a_pipeline_probe_lasts_its_attempt_unless_told_otherwise() -> None:
    dep = parse_policies(POLICIES).dependencies["payment"]
    assert build_pipeline("payment", dep).breaker.spec.probe_timeout == 2.0  # type: ignore[union-attr]
    assert build_pipeline("payment", dep, probe_timeout=9.0).breaker.spec.probe_timeout == 9.0  # type: ignore[union-attr]
