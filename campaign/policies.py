"""The stack's resilience policy for a run: one of two variants, picked by the seed.

Both shorten the circuit breaks and the job backoffs so that whatever the faults open closes, and every
payment job ends, within the settle bound. They differ in what a payment outage does to the jobs:

- `defer` (even seeds): the payment circuit opens as usual, so during an outage jobs are deferred to the end
  of the break and use up no retry; dead letters are rare.
- `give-up` (odd seeds): the payment circuit needs far more calls than a run makes before it opens, and a job
  has only 2 or 3 retries a second or so apart, so an outage of a few seconds uses them up. Every give-up
  then goes to the payment ledger, and what it does not confirm is dead-lettered (and later replayed).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BREAK_DURATION = 3.0
# More calls than a 10 s sampling window of a campaign ever holds: the payment circuit stays closed.
NEVER_OPENS = 100_000


@dataclass(frozen=True)
class Policy:
    name: str  # defer | give-up
    max_retries: int  # jobs.payment.max_retries
    attempt_timeout: float  # jobs.payment.attempt_timeout
    backoff_base: float
    backoff_max: float
    minimum_throughput: int | None = None  # the payment circuit's; None keeps the default

    def describe(self) -> str:
        circuit = (f"payment circuit minimum_throughput {self.minimum_throughput} (it does not open: jobs use up "
                   "their retries)" if self.minimum_throughput else "payment circuit as usual (jobs are deferred "
                   "while it is open)")
        return (f"{self.name}: circuit break_duration {BREAK_DURATION:g} s, {circuit}; jobs.payment max_retries "
                f"{self.max_retries}, attempt_timeout {self.attempt_timeout:g} s, backoff {self.backoff_base:g}-"
                f"{self.backoff_max:g} s")

    def toml(self) -> str:
        payment = f"break_duration = {BREAK_DURATION}"
        if self.minimum_throughput:
            payment += f", minimum_throughput = {self.minimum_throughput}"
        return (
            f"# Written by `make campaign` (policy variant {self.name}): the defaults, with short circuit breaks and\n"
            "# job backoffs so that every fault settles within a bounded time.\n"
            "[dependencies.payment]\n"
            f"circuit_breaker = {{ {payment} }}\n"
            "\n"
            "[dependencies.inventory]\n"
            f"circuit_breaker = {{ break_duration = {BREAK_DURATION} }}\n"
            "\n"
            "[jobs.payment]\n"
            f"attempt_timeout = {self.attempt_timeout}\n"
            f"max_retries = {self.max_retries}\n"
            f"backoff_base = {self.backoff_base}\n"
            f"backoff_max = {self.backoff_max}\n"
        )


DEFER = Policy("defer", max_retries=6, attempt_timeout=5.0, backoff_base=1.0, backoff_max=2.0)


def policy_for(seed: int) -> Policy:
    """A pure function of the seed: odd seeds give up, even ones defer."""
    if seed % 2 == 0:
        return DEFER
    rng = random.Random(f"orderflow-campaign/{seed}/policy")
    return Policy("give-up", max_retries=rng.choice((2, 3)), attempt_timeout=3.0, backoff_base=0.2,
                  backoff_max=1.0, minimum_throughput=NEVER_OPENS)
