"""The invariants, checked after every fault has healed and the stack has settled.

`check` is a pure function of what the run left behind: the history (intents, every answer, every replay of
a dead letter), a snapshot of the database, the payment simulator's ledger, the circuits as the admin API
shows them, and when the payment ledger could not be reached. Each violation carries the slice of evidence
that shows it: the key's requests and answers, the order rows, the ledger entries, the jobs, dead letters
and replays of those orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from .history import Attempt, Intent, Replay
from .snapshot import DeadLetterRow, OrderRow, Snapshot, row_json

INVARIANTS: dict[str, str] = {
    "one-key-one-order": "1. one key: at most one order and one capture; every answer names that order",
    "told-orders-exist": "2. every order a client was told about exists in the database",
    "payment-outcome": "3. Confirmed with exactly one capture, or PaymentFailed with none; no charge without order",
    "no-500": "4. no HTTP 500",
    "settled": "5. every circuit closed; no payment job pending or running past its lease",
    "dead-letters": "6. one unreplayed dead letter (the newest) per order given up, none for others; "
                    "replayed ones replayed by the campaign, their orders moved on",
    "ledger-decides": "7. no dead letter for an order the ledger held a capture of, nor while the ledger was "
                      "unreachable",
    "idempotent-replay": "8. a key sent twice gets one answer: the same order, replayed, in use only for a while",
    "time-bound": "no POST /api/orders longer than api.request_deadline + 1 s",
}
GIVEN_UP = ("retries_exhausted", "rejected")
# A give-up asks the ledger (for at most 2 s) before it writes the dead letter, stamped just after: a capture
# older than this was in the ledger when it was asked.
LEDGER_MARGIN = 3.0
# A dead letter stamped this soon after the ledger became unreachable may come from a lookup answered just
# before.
OUTAGE_MARGIN = 1.0


@dataclass(frozen=True)
class LedgerOutage:
    """A span (unix seconds) in which no worker could read the payment ledger, and the fault that caused it."""

    start: float
    end: float
    fault: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Violation:
    invariant: str
    subject: str  # the Idempotency-Key, order id, capture id or circuit it is about
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"invariant": self.invariant, "subject": self.subject, "message": self.message,
                "evidence": self.evidence}


class _Run:
    """The inputs, indexed the ways the checks look them up."""

    def __init__(self, intents: Iterable[Intent], attempts: Iterable[Attempt], snapshot: Snapshot,
                 ledger: Sequence[dict[str, Any]], replays: Iterable[Replay]) -> None:
        self.intents = {i.key: i for i in intents}
        self.replays = sorted(replays, key=lambda r: r.sent)
        self.snapshot = snapshot
        self.ledger = list(ledger)
        self.attempts: dict[str, list[Attempt]] = {}
        for attempt in sorted(attempts, key=lambda a: a.sent):
            self.attempts.setdefault(attempt.key, []).append(attempt)
        key_of_signature = {i.signature: i.key for i in self.intents.values()}
        self.orders_of: dict[str, list[OrderRow]] = {}
        self.key_of: dict[str, str] = {}
        self.orphans: list[OrderRow] = []
        for order in sorted(snapshot.orders.values(), key=lambda o: (o.created_at is None, o.created_at)):
            key = key_of_signature.get(order.signature)
            if key is None:
                self.orphans.append(order)
            else:
                self.orders_of.setdefault(key, []).append(order)
                self.key_of[order.id] = key
        self.captures: dict[str, list[dict[str, Any]]] = {}
        for entry in self.ledger:
            self.captures.setdefault(str(entry.get("order_id")), []).append(entry)
        self.dead_letters: dict[str, list[Any]] = {}
        for dead in snapshot.dead_letters:
            self.dead_letters.setdefault(dead.order_id, []).append(dead)
        self.jobs = {job.order_id: job for job in snapshot.jobs}

    def evidence(self, *, key: str | None = None, order_ids: Iterable[str] = (),
                 **extra: Any) -> dict[str, Any]:
        ids = list(dict.fromkeys(order_ids))
        if key is None:
            key = next((self.key_of[i] for i in ids if i in self.key_of), None)
        if key is not None:
            ids = list(dict.fromkeys([*ids, *(o.id for o in self.orders_of.get(key, []))]))
        intent = self.intents.get(key) if key else None
        found = [self.snapshot.orders[i] for i in ids if i in self.snapshot.orders]
        return {
            "key": key,
            "intent": intent.body if intent else None,
            "attempts": [a.to_json() for a in self.attempts.get(key, [])] if key else [],
            "orders": [row_json(o) for o in found],
            "ledger": [entry for i in ids for entry in self.captures.get(i, [])],
            "jobs": [row_json(self.jobs[i]) for i in ids if i in self.jobs],
            "dead_letters": [row_json(d) for i in ids for d in self.dead_letters.get(i, [])],
            "replays": [r.to_json() for r in self.replays if r.order_id in ids],
            **extra,
        }


def check(
    *,
    intents: Iterable[Intent],
    attempts: Iterable[Attempt],
    snapshot: Snapshot,
    ledger: Sequence[dict[str, Any]],
    circuits: Sequence[dict[str, Any]] | None,
    request_deadline: float,
    replays: Iterable[Replay],
    ledger_outages: Sequence[LedgerOutage],
) -> list[Violation]:
    """Every violation of the invariants (`INVARIANTS`) the evidence shows; none for a clean run."""
    run = _Run(intents, attempts, snapshot, ledger, replays)
    return [
        *_one_key_one_order(run, request_deadline),
        *_told_orders_exist(run),
        *_payment_outcome(run),
        *_no_500(run),
        *_settled(run, circuits),
        *_dead_letters(run),
        *_replays(run),
        *_ledger_decides(run, ledger_outages),
        *_idempotent_replay(run, request_deadline),
        *_time_bound(run, request_deadline + 1.0),
    ]


def _one_key_one_order(run: _Run, request_deadline: float) -> Iterator[Violation]:
    for key in sorted(run.intents):
        orders = run.orders_of.get(key, [])
        mine = {o.id for o in orders}
        attempts = run.attempts.get(key, [])
        problems = []
        if len(orders) > 1:
            problems.append(f"{len(orders)} orders stored for one key")
        captures = sum(len(run.captures.get(o.id, [])) for o in orders)
        if captures > 1:
            problems.append(f"{captures} captures for one key")
        named = set().union(*(a.named_orders() for a in attempts)) if attempts else set()
        if len(named) > 1:
            problems.append(f"answers name {len(named)} different orders: {sorted(named)}")
        strangers = sorted(n for n in named - mine if n in run.snapshot.orders)
        if strangers:
            problems.append(f"answers name orders of other intents: {strangers}")
        if orders and any(a.status == 422 for a in attempts):
            problems.append("answered 422 (no order) although an order was stored for the key")
        for attempt in _nothing_changed_after_commit(attempts, orders, request_deadline):
            problems.append(f"attempt {attempt.attempt} answered 503 naming no order after its order "
                            f"{orders[0].id} was stored")
        if problems:
            yield Violation("one-key-one-order", key, "; ".join(problems),
                            run.evidence(key=key, order_ids=[*mine, *named]))
    for order in run.orphans:
        yield Violation("one-key-one-order", order.id, "an order that matches no client's intent",
                        run.evidence(order_ids=[order.id]))


def _nothing_changed_after_commit(attempts: list[Attempt], orders: list[OrderRow],
                                  request_deadline: float) -> Iterator[Attempt]:
    """503s that name no order, sent by the request that stored the key's order: it says nothing was changed
    while an order row was committed. A 503 while another request of the key could have stored it proves
    nothing of the kind, and is skipped: an earlier one that timed out on the client's side (it may still
    run), or the other copy of a key sent twice, in flight when the order was stored."""
    stored = [o.created_at.timestamp() for o in orders if o.created_at is not None]
    for attempt in attempts:
        if attempt.status != 503 or attempt.named_orders():
            continue
        during = [at for at in stored if attempt.wall <= at <= attempt.answered_wall]
        if not during:
            continue
        overlapping = [b for b in attempts if b.sent < attempt.sent and b.status is None
                       and b.answered_wall + request_deadline + 1.0 > attempt.wall]
        twins = [b for b in attempts if b.copy != attempt.copy
                 and any(_in_flight(b, at, request_deadline) for at in during)]
        if not overlapping and not twins:
            yield attempt


def _in_flight(attempt: Attempt, at: float, request_deadline: float) -> bool:
    """Whether the request may have been running at `at` (unix seconds): between its send and its answer, or
    for as long as the API may run it when no answer came."""
    end = attempt.answered_wall + (request_deadline + 1.0 if attempt.status is None else 0.5)
    return attempt.wall - 0.5 <= at <= end


def _told_orders_exist(run: _Run) -> Iterator[Violation]:
    for key, attempts in sorted(run.attempts.items()):
        for attempt in attempts:
            missing = sorted(n for n in attempt.named_orders() if n not in run.snapshot.orders)
            if missing:
                yield Violation("told-orders-exist", key,
                                f"attempt {attempt.attempt} ({attempt.status}) names {missing}, not in the database",
                                run.evidence(key=key, order_ids=missing))
                break


def _payment_outcome(run: _Run) -> Iterator[Violation]:
    for order in run.snapshot.orders.values():
        captures = len(run.captures.get(order.id, []))
        message = None
        if order.status == "Confirmed" and captures != 1:
            message = f"Confirmed with {captures} captures"
        elif order.status == "PaymentFailed" and captures:
            message = f"PaymentFailed ({order.failure_reason}) yet charged {captures} time(s)"
        elif order.status == "PaymentPending":
            message = f"still PaymentPending after the settle bound ({captures} captures)"
        elif order.status not in ("Confirmed", "PaymentFailed", "PaymentPending"):
            message = f"unknown status {order.status!r}"
        if message:
            yield Violation("payment-outcome", order.id, message, run.evidence(order_ids=[order.id]))
    for order_id, entries in sorted(run.captures.items()):
        if order_id not in run.snapshot.orders:
            yield Violation("payment-outcome", order_id,
                            f"{len(entries)} capture(s) for an order the database does not hold",
                            run.evidence(order_ids=[order_id], ledger=entries))


def _no_500(run: _Run) -> Iterator[Violation]:
    for key, attempts in sorted(run.attempts.items()):
        failed = [a.attempt for a in attempts if a.status == 500]
        if failed:
            yield Violation("no-500", key, f"HTTP 500 on attempt(s) {failed}", run.evidence(key=key))
    for replay in run.replays:
        if replay.status == 500:
            yield Violation("no-500", f"dead letter {replay.dead_letter}", "HTTP 500 on its replay",
                            run.evidence(order_ids=[replay.order_id]))


def _settled(run: _Run, circuits: Sequence[dict[str, Any]] | None) -> Iterator[Violation]:
    if circuits is None:
        yield Violation("settled", "circuits", "GET /admin/circuits could not be read after the settle bound")
    for circuit in circuits or []:
        if circuit.get("state") != "closed":
            yield Violation("settled", str(circuit.get("name")),
                            f"circuit {circuit.get('state')} after the settle bound", {"circuit": dict(circuit)})
    taken = run.snapshot.taken_at
    for job in run.snapshot.jobs:
        if job.state == "pending":
            message = f"payment job still pending (due {job.next_attempt_at}, {job.retries} retries)"
        elif job.state == "running" and job.lease_until is not None and job.lease_until < taken:
            message = f"payment job running past its lease ({job.lease_until})"
        else:
            continue
        yield Violation("settled", job.order_id, message, run.evidence(order_ids=[job.order_id]))


def _dead_letters(run: _Run) -> Iterator[Violation]:
    for order in run.snapshot.orders.values():
        letters = sorted(run.dead_letters.get(order.id, []), key=lambda d: d.id)
        open_letters = [d for d in letters if d.replayed_at is None]
        gave_up = order.status == "PaymentFailed" and order.failure_reason in GIVEN_UP
        if gave_up and not open_letters and letters:
            message = (f"PaymentFailed ({order.failure_reason}) again after dead letter {letters[-1].id} was "
                       "replayed, without a new dead letter")
        elif gave_up and len(open_letters) != 1:
            message = f"PaymentFailed ({order.failure_reason}) with {len(open_letters)} unreplayed dead letters"
        elif not gave_up and open_letters:
            message = f"{order.status} ({order.failure_reason}) has {len(open_letters)} unreplayed dead letter(s)"
        elif open_letters and open_letters[-1] is not letters[-1]:
            message = f"dead letter {open_letters[-1].id} unreplayed under a newer one, {letters[-1].id}, replayed"
        else:
            continue
        yield Violation("dead-letters", order.id, message, run.evidence(order_ids=[order.id]))
    for order_id, letters in sorted(run.dead_letters.items()):
        if order_id not in run.snapshot.orders:
            yield Violation("dead-letters", order_id, f"{len(letters)} dead letter(s) of an order not stored",
                            run.evidence(order_ids=[order_id]))


def _replays(run: _Run) -> Iterator[Violation]:
    """Each dead letter marked replayed was replayed by the campaign (the only client of the admin API), and
    each replay the API accepted marked its dead letter."""
    accepted = {r.dead_letter for r in run.replays if r.status == 202}
    unanswered = {r.dead_letter for r in run.replays if r.status is None or r.status >= 500}
    for letter in run.snapshot.dead_letters:
        if letter.replayed_at is not None and letter.id not in accepted | unanswered:
            message = f"dead letter {letter.id} marked replayed at {letter.replayed_at.isoformat()}, but never replayed"
        elif letter.replayed_at is None and letter.id in accepted:
            message = f"dead letter {letter.id}: its replay was accepted (202), yet it is not marked replayed"
        else:
            continue
        yield Violation("dead-letters", letter.order_id, message, run.evidence(order_ids=[letter.order_id]))
    for replay in run.replays:
        if replay.status != 409 or not replay.problem_type().endswith("/dead-letter-already-replayed"):
            continue
        earlier = [r for r in run.replays if r.dead_letter == replay.dead_letter and r.sent < replay.sent
                   and (r.status is None or r.status == 202 or r.status >= 500)]
        if not earlier:
            yield Violation("dead-letters", replay.order_id,
                            f"dead letter {replay.dead_letter}: its first replay was answered 409 already replayed",
                            run.evidence(order_ids=[replay.order_id]))


def _ledger_decides(run: _Run, outages: Sequence[LedgerOutage]) -> Iterator[Violation]:
    """A give-up asks the ledger first: no dead letter for an order it held a capture of, and no dead letter
    while it could not be asked (the job waits and asks again)."""
    for letter in run.snapshot.dead_letters:
        if letter.dead_lettered_at is None:
            continue
        at = letter.dead_lettered_at.timestamp()
        stamped = letter.dead_lettered_at.isoformat()
        for entry in run.captures.get(letter.order_id, []):
            captured = _unix(entry.get("captured_at"))
            if captured is not None and captured < at - LEDGER_MARGIN:
                yield _letter_violation(run, letter, f"dead letter {letter.id} written at {stamped} although the "
                                        f"ledger held capture {entry.get('id')} since {entry.get('captured_at')}")
                break
        for outage in outages:
            if outage.start + OUTAGE_MARGIN < at < outage.end:
                yield _letter_violation(run, letter, f"dead letter {letter.id} written at {stamped}, while the "
                                        f"payment ledger could not be reached ({outage.fault})",
                                        outage=outage.to_json())
                break


def _letter_violation(run: _Run, letter: DeadLetterRow, message: str, **extra: Any) -> Violation:
    return Violation("ledger-decides", letter.order_id, message, run.evidence(order_ids=[letter.order_id], **extra))


def _unix(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _idempotent_replay(run: _Run, request_deadline: float) -> Iterator[Violation]:
    """Keys sent twice on purpose: the copy gets the key's one answer. After a stored answer, that answer
    replayed (`Idempotent-Replayed: true`; or, if the first stored no response, the order as it is now, 201);
    while the first runs, 409 in use, then the same. Whatever the timing, one fresh answer at most."""
    for key in sorted(run.intents):
        attempts = run.attempts.get(key, [])
        problems = []
        fresh = [a for a in attempts if a.status in (201, 402) and not a.replayed]
        if len(fresh) > 1:
            problems.append(f"{len(fresh)} answers {[a.status for a in fresh]} without Idempotent-Replayed")
        first = _final([a for a in attempts if not a.copy])
        for copy in sorted({a.copy for a in attempts if a.copy}):
            mine = [a for a in attempts if a.copy == copy]
            stuck = _in_use_for(mine)
            if stuck > 2 * (request_deadline + 1.0):
                problems.append(f"the {copy} copy was told in use for {stuck:.1f} s and never answered")
            last = _final(mine)
            if first is None or last is None:
                continue
            if last.named_orders() != first.named_orders() or (first.status == 422) != (last.status == 422):
                problems.append(f"the {copy} copy was answered {last.status} {sorted(last.named_orders())}, the "
                                f"first request {first.status} {sorted(first.named_orders())}")
            elif copy == "after" and first.named_orders() and (not last.replayed
                                                                  or last.status not in (first.status, 201)):
                problems.append(f"the copy sent after the answer got {last.status}"
                                f"{'' if last.replayed else ' without Idempotent-Replayed'}, not the stored "
                                f"{first.status} replayed")
        if problems:
            yield Violation("idempotent-replay", key, "; ".join(problems), run.evidence(key=key))


def _final(attempts: list[Attempt]) -> Attempt | None:
    """The answer retrying could not change, if the requests got one."""
    if not attempts:
        return None
    last = attempts[-1]
    unanswered = last.status is None or last.status >= 500 or last.status == 429 or _in_use(last)
    return None if unanswered else last


def _in_use(attempt: Attempt) -> bool:
    return attempt.status == 409 and attempt.problem_type().endswith("/idempotency-key-in-use")


def _in_use_for(attempts: list[Attempt]) -> float:
    """Seconds the last answers of these requests said in use, when those were their last answers."""
    streak = []
    for attempt in reversed(attempts):
        if not _in_use(attempt):
            break
        streak.append(attempt)
    return streak[0].answered_wall - streak[-1].wall if streak else 0.0


def _time_bound(run: _Run, bound: float) -> Iterator[Violation]:
    for key, attempts in sorted(run.attempts.items()):
        slow = [a for a in attempts if a.elapsed > bound]
        if slow:
            worst = max(slow, key=lambda a: a.elapsed)
            yield Violation("time-bound", key,
                            f"{len(slow)} request(s) over {bound:g} s, the slowest {worst.elapsed:.2f} s "
                            f"(attempt {worst.attempt}: {worst.status or worst.error})", run.evidence(key=key))
