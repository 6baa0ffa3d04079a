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
Answers = queue.SimpleQueue[Outcome]


def launch_in_thread(thunk: Thunk, answers: Answers) -> None:
    """Run an attempt on a thread of its own; its outcome goes to `answers`."""
    # Daemon threads: an abandoned attempt must never keep the process from exiting.
    threading.Thread(target=lambda: answers.put(thunk()), name="hedged-attempt", daemon=True).start()


def receive_waiting(answers: Answers, timeout: float) -> Outcome | None:
    """The next outcome, waiting at most `timeout` seconds; None when none came."""
    try:
        return answers.get(timeout=timeout)
    except queue.Empty:
        return None


class HedgingPolicy:
    """`launch` starts an attempt and `receive` waits for the next outcome: threads and a real wait unless
    told otherwise (a test runs attempts in its own order and moves a fake clock instead of waiting)."""

    def __init__(
        self,
        *,
        max_hedged_attempts: int = 1,
        delay: float = 0.5,
        launch: Callable[[Thunk, Answers], None] = launch_in_thread,
        receive: Callable[[Answers, float], Outcome | None] = receive_waiting,
    ) -> None:
        if max_hedged_attempts < 1 or delay < 0:
            raise ValueError("max_hedged_attempts must be >= 1 and delay >= 0")
        self.max_hedged_attempts = max_hedged_attempts
        self.delay = delay
        self._launch = launch
        self._receive = receive

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
        answers: Answers = queue.SimpleQueue()
        self._launch(primary, answers)
        running, hedges = 1, 0
        last: Outcome | None = None
        while True:
            wait = give_up_at()
            can_hedge = hedges < self.max_hedged_attempts
            if can_hedge:
                wait = min(wait, self.delay)
            outcome = self._receive(answers, max(wait, 0.0))
            if outcome is None:
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

