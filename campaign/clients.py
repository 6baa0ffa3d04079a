"""Careful clients: each order under its own Idempotency-Key, retried with the same key and body on a timeout,
a connection error, a 5xx, a 429 or a 409 `idempotency-key-in-use`, with backoff, until the settle bound.

Every intent's body is unique (its own customer id, or for the always-declined customer 402 its own lines),
so the checker can find the orders of a key in the database even when no answer ever named them.

A few intents are sent twice on purpose, as a double-clicking user or a client that lost the answer would:
once more after the answer, or a second time while the first request is still in flight. Each copy is seen
through to an answer of its own, like the original.
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
DUPLICATE_AFTER = 0.05  # the share of intents sent again once answered
DUPLICATE_CONCURRENT = 0.05  # the share sent a second time while the first request runs
CONCURRENT_DELAY = (0.0, 0.15)  # seconds between the two concurrent sends


def retryable(attempt: Attempt) -> bool:
    if attempt.status is None or attempt.status >= 500 or attempt.status == 429:
        return True
    return attempt.status == 409 and attempt.problem_type().endswith("/idempotency-key-in-use")


def make_intent(rng: random.Random, *, seed: int, client: int, number: int, started: float) -> Intent:
    """A valid order (most), one of customer 402 (declined), or one with product 13 (out of stock)."""
    roll = rng.random()
    others = rng.sample(PRODUCTS[3:], rng.randint(0, 2))
    if roll < 0.08:
        kind = "declined"
        customer = DECLINED_CUSTOMER
        # Customer 402 is shared, so these lines carry the intent's identity: client and number (a quantity is at
        # most 1000, so the number takes two lines: a long run has more than a thousand intents per client).
        lines = [(PRODUCTS[0], client + 1), (PRODUCTS[1], number % 1000 + 1), (PRODUCTS[2], number // 1000 + 1),
                 *((p, rng.randint(1, 3)) for p in others)]
    else:
        customer = 1_000_000 + client * 100_000 + number
        lines = [(p, rng.randint(1, 5)) for p in rng.sample(PRODUCTS, rng.randint(1, 3))]
        kind = "valid"
        if roll < 0.14:
            kind = "out_of_stock"
            lines.insert(rng.randint(0, len(lines)), (OUT_OF_STOCK_PRODUCT, rng.randint(1, 3)))
    body = {"customer_id": customer, "lines": [{"product_id": p, "quantity": q} for p, q in lines], "currency": "USD"}
    roll = rng.random()
    duplicate = "after" if roll < DUPLICATE_AFTER else "concurrent" if roll < DUPLICATE_AFTER + DUPLICATE_CONCURRENT \
        else ""
    return Intent(f"campaign-{seed}-c{client}-{number}", client, kind, body, started, duplicate)


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
            self.see_through(intent)
        finally:
            self.busy = False
        return intent

    def see_through(self, intent: Intent) -> None:
        """The intent until answered, and its copy if it is one to send twice."""
        if intent.duplicate == "concurrent":
            self.pursue_twice(intent)
            return
        last = self.pursue(intent)
        if intent.duplicate == "after" and not retryable(last):
            self.pursue(intent, copy="after")

    def pursue_twice(self, intent: Intent) -> None:
        """The intent and its copy at once, the copy a moment later, each retried until answered."""
        rng = random.Random(f"orderflow-campaign/{self.seed}/client/{self.index}/{intent.key}")
        delay = rng.uniform(*CONCURRENT_DELAY)

        def copy() -> None:
            if not self.abort.wait(delay):
                self.pursue(intent, copy="concurrent", rng=rng)

        twin = threading.Thread(target=copy, name=f"{self.name}-copy", daemon=True)
        twin.start()
        self.pursue(intent)
        twin.join(timeout=self.give_up_after + self.read_timeout + CONNECT_TIMEOUT + BACKOFF_MAX)

    def pursue(self, intent: Intent, *, copy: str = "", rng: random.Random | None = None) -> Attempt:
        """Sends the intent until an answer that retrying cannot change, or until the settle bound; returns the
        last attempt."""
        rng = rng or self.rng
        number = 0
        while True:
            attempt = self.send(intent, number, copy=copy)
            self.history.add_attempt(attempt)
            if not retryable(attempt):
                return attempt
            if self.clock() - intent.started > self.give_up_after or self.abort.is_set():
                self.history.give_up(intent.key)
                return attempt
            delay = rng.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**number)) + 0.1
            if attempt.retry_after is not None:
                delay = max(delay, min(attempt.retry_after, BACKOFF_MAX))
            if self.abort.wait(delay):
                self.history.give_up(intent.key)
                return attempt
            number += 1

    def send(self, intent: Intent, number: int, *, copy: str = "") -> Attempt:
        sent, wall = self.clock(), time.time()
        started = time.monotonic()
        common: dict[str, Any] = {"key": intent.key, "client": self.index, "attempt": number, "sent": round(sent, 3),
                                  "wall": wall, "phase": self.phase(), "copy": copy}
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
