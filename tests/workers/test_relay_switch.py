"""ORDERFLOW_RELAY=off: a worker of a fleet that only consumes the queues. Real `celery worker` processes."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests

from tests.broker import environment_broker
from tests.support import fresh_database
from tests.workers.processes import WorkerStack, free_port, wait_until, worker_stack

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def stack(tmp_path: Path, redis_url: str, key_prefix: str) -> Iterator[WorkerStack]:
    with (
        fresh_database() as database,
        worker_stack(tmp_path, database, redis_url, key_prefix, broker_url=environment_broker()) as running,
    ):
        yield running


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port`, from /proc/net/tcp (as `ss -ltn` reads them)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def lease(stack: WorkerStack, order_id: str) -> tuple[str, datetime | None]:
    with stack.services.uow(read_only=True) as unit:
        job = unit.outbox.payments.get(order_id)
    assert job is not None
    return job.state, job.lease_until


def test_a_worker_with_the_relay_off_runs_jobs_but_takes_no_lease_back(stack: WorkerStack) -> None:
    stack.set_flag("RealTimePayments", False)
    # A job whose worker died mid-run before any worker of this stack started: its lease ran out already.
    orphan = stack.place()
    now = datetime.now(UTC)
    with stack.services.uow() as unit:
        assert unit.outbox.payments.claim(orphan.id, now=now + timedelta(minutes=1),
                                          lease_until=now - timedelta(seconds=1), token="d" * 32)
        unit.commit()
    expired = lease(stack, orphan.id)

    stack.start_worker(env={"ORDERFLOW_RELAY": "off", "WORKER_METRICS_HOST": "0.0.0.0"})
    assert "outbox relay off on this worker" in stack.log(0)
    assert "outbox relay started" not in stack.log(0)
    # WORKER_METRICS_HOST is where the metrics listen (a container's 0.0.0.0), reached here on loopback.
    assert listening_addresses(stack.metrics_port) == {"0.0.0.0"}
    assert requests.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).status_code == 200

    # The worker runs what reaches it through the queue...
    live = stack.place()
    stack.wait_for_status([live.id], "Confirmed", timeout=20)
    # ...but a relay would have taken the orphan back on its first pass, long before that order was confirmed.
    assert lease(stack, orphan.id) == expired
    assert "lease_expired" not in stack.log(0)

    # A worker with the relay on (the default) takes it back, and the job ends as any other.
    stack.start_worker(env={"WORKER_METRICS_PORT": str(free_port())})
    assert "outbox relay started" in stack.log(1)
    stack.wait_for_status([orphan.id], "Confirmed", timeout=20)
    wait_until(lambda: "lease_expired" in stack.log(1), timeout=5, what="the reclaim in the second worker's log")
    assert len(stack.captures(orphan.id)) == 1
