"""The campaign's clients send some intents twice, against a small order API that keeps Idempotency-Keys."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from campaign.clients import Client
from campaign.history import Attempt, History, Intent

BODY = {"customer_id": 1_000_001, "lines": [{"product_id": 3, "quantity": 2}], "currency": "USD"}
WORK = 0.4  # seconds the first request of a key takes: the concurrent copy arrives while it runs


class Orders(BaseHTTPRequestHandler):
    """201 for a key's first request (after WORK seconds), 409 in use while it runs, the stored answer
    replayed after; or 503 for everything when `down`."""

    keys: dict[str, Any] = {}
    lock = threading.Lock()
    down = False
    seen: list[tuple[str, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802 - the http.server API
        key = self.headers["Idempotency-Key"]
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append((key, body))
            stored = self.keys.get(key)
            if stored is None and not self.down:
                self.keys[key] = "running"
        if self.down:
            return self.answer(503, {"type": "/problems/database-unavailable"}, {"Retry-After": "0.1"})
        if stored == "running":
            return self.answer(409, {"type": "/problems/idempotency-key-in-use"}, {"Retry-After": "0.2"})
        if stored is not None:
            return self.answer(201, stored, {"Idempotent-Replayed": "true", "Location": f"/api/orders/{stored['id']}"})
        time.sleep(WORK)
        order = {"id": f"o-{key}", "status": "Confirmed"}
        with self.lock:
            self.keys[key] = order
        self.answer(201, order, {"Location": f"/api/orders/{order['id']}"})

    def answer(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def api() -> Iterator[str]:
    Orders.keys, Orders.seen, Orders.down = {}, [], False
    server = ThreadingHTTPServer(("127.0.0.1", 0), Orders)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def client(api: str, history: History, *, give_up_after: float = 20.0) -> Client:
    start = time.monotonic()
    return Client(index=0, api=api, seed=7, history=history, clock=lambda: time.monotonic() - start,
                  stop_new=threading.Event(), abort=threading.Event(), give_up_after=give_up_after, read_timeout=5.0)


def streams(history: History) -> dict[str, list[Attempt]]:
    found: dict[str, list[Attempt]] = {}
    for attempt in sorted(history.attempts, key=lambda a: a.sent):
        found.setdefault(attempt.copy, []).append(attempt)
    return found


def test_an_intent_sent_again_after_its_answer_gets_that_answer_replayed(api: str) -> None:
    history = History()
    client(api, history).see_through(Intent("k-after", 0, "valid", BODY, 0.0, duplicate="after"))
    mine = streams(history)
    assert [(a.status, a.replayed) for a in mine[""]] == [(201, False)]
    assert [(a.status, a.replayed) for a in mine["after"]] == [(201, True)]
    assert mine["after"][0].sent >= mine[""][0].sent + mine[""][0].elapsed  # sent once the answer was in
    assert mine["after"][0].named_orders() == mine[""][0].named_orders() == {"o-k-after"}
    assert Orders.seen == [("k-after", BODY), ("k-after", BODY)]  # the same key and the same body


def test_an_intent_sent_twice_at_once_is_told_in_use_then_answered(api: str) -> None:
    history = History()
    client(api, history).see_through(Intent("k-twice", 0, "valid", BODY, 0.0, duplicate="concurrent"))
    mine = streams(history)
    assert set(mine) == {"", "concurrent"}
    # Whichever request arrived first made the order; the other was told in use until it could be answered.
    first, second = sorted(mine.values(), key=lambda attempts: attempts[0].status != 201)
    assert [(a.status, a.replayed) for a in first] == [(201, False)]
    assert second[0].status == 409 and second[0].problem_type().endswith("/idempotency-key-in-use")
    assert (second[-1].status, second[-1].replayed) == (201, True)
    assert second[-1].named_orders() == first[0].named_orders() == {"o-k-twice"}
    assert second[0].sent < first[0].sent + first[0].elapsed  # sent while the other was in flight
    assert {key for key, _ in Orders.seen} == {"k-twice"} and all(body == BODY for _, body in Orders.seen)


def test_no_copy_is_sent_after_an_intent_that_was_never_answered(api: str) -> None:
    Orders.down = True
    history = History()
    client(api, history, give_up_after=0.5).see_through(Intent("k-down", 0, "valid", BODY, 0.0, duplicate="after"))
    assert history.attempts and all(a.status == 503 and a.copy == "" for a in history.attempts)
    assert history.gave_up == {"k-down"}


def test_every_intent_of_a_long_run_looks_unlike_every_other_in_the_database() -> None:
    """The checker finds a key's orders by what they look like (customer and lines): two intents alike would
    make one intent's order look like a second order of the other's key."""
    import random

    from campaign.clients import make_intent

    rng = random.Random(202)
    intents = [make_intent(rng, seed=202, client=client, number=number, started=0.0)
               for client in range(8) for number in range(3000)]
    assert len({intent.signature for intent in intents}) == len(intents)
    assert any(intent.kind == "declined" for intent in intents)
