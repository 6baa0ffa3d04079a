"""Delay functions for retries: exponential or constant, optionally with full jitter.

Full jitter (AWS architecture blog, "Exponential Backoff And Jitter") spreads a herd of retrying clients
uniformly over [0, cap], which is what stops a recovering dependency being hit in synchronised waves.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

BackoffKind = Literal["exponential", "constant"]

# 2**64 is far beyond any sane cap; bounding the exponent keeps the float finite for huge retry counts.
_MAX_EXPONENT = 64


def exponential_delay(retries: int, base: float, cap: float) -> float:
    """`base * 2**retries`, capped at `cap` (retries = how many retries already happened)."""
    return min(cap, base * 2.0 ** min(retries, _MAX_EXPONENT))


def constant_delay(retries: int, base: float, cap: float) -> float:
    """Always `base`, still capped at `cap`."""
    return min(cap, base)


def full_jitter_delay(
    retries: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Uniform in [0, min(cap, base * 2**retries)], sub-second precision (the workers' job schedule)."""
    return rng() * exponential_delay(retries, base, cap)


def compute_delay(
    retries: int,
    *,
    base: float,
    cap: float,
    kind: BackoffKind = "exponential",
    jitter: bool = True,
    rng: Callable[[], float] = random.random,
) -> float:
    shape = exponential_delay if kind == "exponential" else constant_delay
    delay = shape(retries, base, cap)
    return rng() * delay if jitter else delay
