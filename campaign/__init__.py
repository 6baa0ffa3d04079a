"""A seeded, Jepsen-style fault campaign over the real stack (`make campaign`).

Clients place orders under Idempotency-Keys while a schedule drawn from the seed injects faults (database,
chaos-proxy toxics, simulator faults, killed processes, a Redis restart, flags, circuits); then every fault
heals, the stack settles, and `checker.check` holds the history, the database and the payment ledger to the
invariants. `docs/chaos-tests.md` describes it.
"""

from .checker import INVARIANTS, Violation, check
from .schedule import Fault, make_schedule

__all__ = ["INVARIANTS", "Fault", "Violation", "check", "make_schedule"]
