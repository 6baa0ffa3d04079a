"""What the chaos scenarios share: timed orders, bursts on fresh connections, metrics, faults, waits."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from chaosproxy.client import ToxiproxyClient
from tests.stack import RunningStack

PENDING = "PaymentPending"
CONFIRMED = "Confirmed"
SIMULATORS = ("payment", "inventory", "notification")
CIRCUITS = ("payment", "inventory")


def order_body(*, product_id: int = 1, customer_id: int = 11) -> dict[str, Any]:
    return {"customer_id": customer_id, "lines": [{"product_id": product_id, "quantity": 1}]}


def timed_order(stack: RunningStack, body: dict[str, Any] | None = None) -> tuple[requests.Response, float]:
    """One POST /api/orders on a connection of its own, and how long it took in seconds."""
    started = time.monotonic()
    response = stack.order(body)
    return response, time.monotonic() - started


def burst(stack: RunningStack, count: int, *, parallel: int = 8,
          body: dict[str, Any] | None = None) -> list[requests.Response]:
    """`count` orders, `parallel` at a time, each on a fresh connection so gunicorn spreads them over its
    processes (a kept-alive connection would stay with one process)."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda _: stack.order(body), range(count)))


def created(responses: Iterable[requests.Response]) -> list[dict[str, Any]]:
    orders = []
    for response in responses:
        assert response.status_code == 201, response.text
        orders.append(response.json())
    return orders


# -- faults --------------------------------------------------------------------------------------------

def set_faults(stack: RunningStack, simulator: str, **faults: Any) -> None:
    requests.put(f"{stack.simulators[simulator]}/faults", json=faults, timeout=5).raise_for_status()


def calm(stack: RunningStack, chaos: ToxiproxyClient) -> None:
    """Every proxy enabled without toxics, no simulator fault, every circuit closed with an empty window,
    and no order left waiting for its payment (so no job of an earlier test runs under a later one's
    faults and opens the shared circuit before that test's first call)."""
    chaos.reset()
    for name in SIMULATORS:
        requests.delete(f"{stack.simulators[name]}/faults", timeout=5).raise_for_status()
    for name in CIRCUITS:
        reset_circuit(stack, name)
    stack.wait_settled()
    # A call that was under way when the faults went may have failed since: start from an empty window.
    for name in CIRCUITS:
        reset_circuit(stack, name)


def reset_circuit(stack: RunningStack, name: str) -> dict[str, Any]:
    response = requests.post(f"{stack.api}/admin/circuits/{name}/reset", headers=stack.admin(), timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def isolate_circuit(stack: RunningStack, name: str) -> dict[str, Any]:
    response = requests.post(f"{stack.api}/admin/circuits/{name}/isolate", headers=stack.admin(), timeout=5)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


def circuit_state(stack: RunningStack, name: str) -> str:
    response = requests.get(f"{stack.api}/admin/circuits", headers=stack.admin(), timeout=5)
    response.raise_for_status()
    states = {c["name"]: c["state"] for c in response.json()["circuits"]}
    return states[name]  # type: ignore[no-any-return]


# -- waiting -------------------------------------------------------------------------------------------

def wait_all_confirmed(stack: RunningStack, order_ids: Iterable[str], *, timeout: float) -> dict[str, str]:
    """Waits until every order is Confirmed (one shared deadline); returns the others' statuses."""
    deadline = time.monotonic() + timeout
    waiting = set(order_ids)
    while waiting and time.monotonic() < deadline:
        waiting = {oid for oid in waiting if stack.get_order(oid)["status"] != CONFIRMED}
        if waiting:
            time.sleep(0.25)
    return {oid: stack.get_order(oid)["status"] for oid in waiting}


# -- metrics -------------------------------------------------------------------------------------------

def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    response = requests.get(url, timeout=5)
    response.raise_for_status()
    return [(sample.name, dict(sample.labels), sample.value)
            for family in text_string_to_metric_families(response.text) for sample in family.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of `name` over every series whose labels include `labels`."""
    return sum(value for sample, have, value in samples
               if sample == name and all(have.get(k) == v for k, v in labels.items()))


# -- processes and logs ----------------------------------------------------------------------------------

def api_worker_pids(stack: RunningStack) -> set[int]:
    """The gunicorn processes that serve requests: children of the gunicorn master."""
    return stack.api_processes()


def log_size(stack: RunningStack) -> int:
    try:
        return os.path.getsize(stack.log)
    except OSError:
        return 0


def log_events(stack: RunningStack, *, since: int = 0) -> list[dict[str, Any]]:
    """The JSON log lines written after byte offset `since` (every process's; what make printed skipped)."""
    with open(stack.log, "rb") as f:
        f.seek(since)
        lines = f.read().decode(errors="replace").splitlines()
    events = []
    for line in lines:
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events
