"""Fallback: the answer of last resort when the pipeline could not get a good one.

It runs on a broken circuit, a bulkhead rejection, a timeout, or retries ending on a failure (an exception
or a result the predicate calls a failure). An exception the predicate does not handle is a bug, not an
outage, and propagates untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .retry import Outcome


class Fallback:
    def __init__(self, handler: Callable[[Outcome], Any], *, on_results: bool = True) -> None:
        """`handler(outcome)` returns the substitute; `on_results=False` lets failing results through."""
        self.handler = handler
        self.on_results = on_results

    def handles(self, outcome: Outcome) -> bool:
        return outcome.failed and (self.on_results or outcome.exception is not None)

    def __call__(self, outcome: Outcome) -> Any:
        return self.handler(outcome)
