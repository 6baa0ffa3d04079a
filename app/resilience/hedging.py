"""Hedging for idempotent reads: when the first attempt is slow, race it against more attempts.

If no attempt has answered after `delay`, another one starts in parallel, up to `max_hedged_attempts`
extra. The first final answer (anything the predicate does not call a failure) wins; the others are
abandoned: their threads run out against their own deadlines and their answers are ignored, though the
circuit still counts them. When every started attempt has failed, the last failure goes back to the retry
policy, which decides whether to try again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from .retry import Outcome

Thunk = Callable[[], Outcome]


class HedgingPolicy:
    def __init__(self, *, max_hedged_attempts: int = 1, delay: float = 0.5) -> None:
        if max_hedged_attempts < 1 or delay < 0:
            raise ValueError("max_hedged_attempts must be >= 1 and delay >= 0")
        self.max_hedged_attempts = max_hedged_attempts
        self.delay = delay

    def run(
        self,
        primary: Thunk,
        start_hedge: Callable[[], Thunk | None],
        *,
        give_up_at: Callable[[], float],
        give_up: Callable[[], Outcome],
    ) -> Outcome:
        """Run `primary`, hedging it; `start_hedge()` admits one more attempt (None = not admitted).

        `give_up_at()` is the number of seconds still worth waiting; when it runs out, `give_up()` answers.
        """
        answers: queue.SimpleQueue[Outcome] = queue.SimpleQueue()
        self._launch(primary, answers)
        running, hedges = 1, 0
        last: Outcome | None = None
        while True:
            wait = give_up_at()
            can_hedge = hedges < self.max_hedged_attempts
            if can_hedge:
                wait = min(wait, self.delay)
            try:
                outcome = answers.get(timeout=max(wait, 0.0))
            except queue.Empty:
                if can_hedge and give_up_at() > 0:
                    hedges += 1
                    thunk = start_hedge()
                    if thunk is not None:
                        self._launch(thunk, answers)
                        running += 1
                    continue
                return last if last is not None else give_up()
            running -= 1
            if not outcome.failed:
                return outcome
            last = outcome
            if running == 0:
                return outcome

    @staticmethod
    def _launch(thunk: Thunk, answers: queue.SimpleQueue[Outcome]) -> None:
        # Daemon threads: an abandoned attempt must never keep the process from exiting.
        threading.Thread(target=lambda: answers.put(thunk()), name="hedged-attempt", daemon=True).start()

