"""Careful clients: each order under its own Idempotency-Key, retried with the same key and body on a timeout,
a connection error, a 5xx, a 429 or a 409 `idempotency-key-in-use`, with backoff, until the settle bound.

Every intent's body is unique (its own customer id, or for the always-declined customer 402 its own lines),
so the checker can find the orders of a key in the database even when no answer ever named them.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from .history import Attempt, History, Intent

DECLINED_CUSTOMER = 402
OUT_OF_STOCK_PRODUCT = 13
PRODUCTS = tuple(p for p in range(1, 21) if p != OUT_OF_STOCK_PRODUCT)
BACKOFF_BASE = 0.25
BACKOFF_MAX = 4.0
CONNECT_TIMEOUT = 3.0
MAX_BODY_TEXT = 2000


def retryable(attempt: Attempt) -> bool:
    if attempt.status is None or attempt.status >= 500 or attempt.status == 429:
        return True
    return attempt.status == 409 and attempt.problem_type().endswith("/idempotency-key-in-use")


def make_intent(rng: random.Random, *, seed: int, client: int, number: int, started: float) -> Intent:
    """A valid order (most), one of customer 402 (declined), or one with product 13 (out of stock)."""
    roll = rng.random()
    others = rng.sample(PRODUCTS[2:], rng.randint(0, 2))
    if roll < 0.08:
        kind = "declined"
        customer = DECLINED_CUSTOMER
        # Customer 402 is shared, so these lines carry the intent's identity: client and number.
        lines = [(PRODUCTS[0], client + 1), (PRODUCTS[1], number % 1000 + 1), *((p, rng.randint(1, 3)) for p in others)]
    else:
        customer = 1_000_000 + client * 100_000 + number
        lines = [(p, rng.randint(1, 5)) for p in rng.sample(PRODUCTS, rng.randint(1, 3))]
        kind = "valid"
        if roll < 0.14:
            kind = "out_of_stock"
            lines.insert(rng.randint(0, len(lines)), (OUT_OF_STOCK_PRODUCT, rng.randint(1, 3)))
    body = {"customer_id": customer, "lines": [{"product_id": p, "quantity": q} for p, q in lines], "currency": "USD"}
    return Intent(f"campaign-{seed}-c{client}-{number}", client, kind, body, started)


class Client(threading.Thread):
    """Places orders one after another until told to stop, and sees each one through to an answer."""

    def __init__(
        self,
        *,
        index: int,
        api: str,
        seed: int,
        history: History,
        clock: Callable[[], float],
        stop_new: threading.Event,
        abort: threading.Event,
        give_up_after: float,
        read_timeout: float,
        think: tuple[float, float] = (0.05, 0.4),
        phase: Callable[[], str] = lambda: "faults",
    ) -> None:
        super().__init__(name=f"campaign-client-{index}", daemon=True)
        self.index = index
        self.api = api
        self.seed = seed
        self.history = history
        self.clock = clock
        self.stop_new = stop_new
        self.abort = abort
        self.give_up_after = give_up_after
        self.read_timeout = read_timeout
        self.think = think
        self.phase = phase
        self.rng = random.Random(f"orderflow-campaign/{seed}/client/{index}")
        self.count = 0
        self.busy = False

    def run(self) -> None:
        while not self.stop_new.is_set() and not self.abort.is_set():
            self.place_one()
            self.abort.wait(self.rng.uniform(*self.think))

    def place_one(self) -> Intent:
        intent = make_intent(self.rng, seed=self.seed, client=self.index, number=self.count, started=self.clock())
        self.count += 1
        self.busy = True
        try:
            self.history.add_intent(intent)
            self.pursue(intent)
        finally:
            self.busy = False
        return intent

    def pursue(self, intent: Intent) -> None:
        number = 0
        while True:
            attempt = self.send(intent, number)
            self.history.add_attempt(attempt)
            if not retryable(attempt):
                return
            if self.clock() - intent.started > self.give_up_after or self.abort.is_set():
                self.history.give_up(intent.key)
                return
            delay = self.rng.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**number)) + 0.1
            if attempt.retry_after is not None:
                delay = max(delay, min(attempt.retry_after, BACKOFF_MAX))
            if self.abort.wait(delay):
                self.history.give_up(intent.key)
                return
            number += 1

    def send(self, intent: Intent, number: int) -> Attempt:
        sent, wall = self.clock(), time.time()
        started = time.monotonic()
        common: dict[str, Any] = {"key": intent.key, "client": self.index, "attempt": number, "sent": round(sent, 3),
                                  "wall": wall, "phase": self.phase()}
        try:
            # A fresh connection each time, so the requests spread over the API's processes (a kept-alive one
            # would stay with one) and a killed process costs only the requests it was serving.
            response = requests.post(
                f"{self.api}/api/orders", json=intent.body, headers={"Idempotency-Key": intent.key},
                timeout=(CONNECT_TIMEOUT, self.read_timeout),
            )
        except requests.RequestException as exc:
            return Attempt(**common, elapsed=round(time.monotonic() - started, 3), status=None,
                           error=f"{type(exc).__name__}: {str(exc)[:300]}")
        elapsed = round(time.monotonic() - started, 3)
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text[:MAX_BODY_TEXT]
        return Attempt(**common, elapsed=elapsed, status=response.status_code, body=body,
                       location=response.headers.get("Location"),
                       replayed=response.headers.get("Idempotent-Replayed") == "true",
                       retry_after=_seconds(response.headers.get("Retry-After")))


def _seconds(raw: str | None) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None
