"""The campaign's report: tables on the terminal, everything (history included) in JSON."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .checker import INVARIANTS, Violation
from .runner import Result

SHOWN = 25  # violations printed in full; the JSON holds them all


def summary(result: Result) -> str:
    lines: list[str] = []
    out = lines.append
    options = result.options
    out("")
    out(f"== campaign seed {options.seed}: {options.duration:g} s of faults, {options.clients} clients, "
        f"{result.database} ({result.database_note}), code at {result.commit}")
    if result.policy is not None:
        out(f"   policy {result.policy.describe()}")

    out("")
    out(f"{'faults injected':<28}{'scheduled':>10}{'applied':>9}{'failed':>8}")
    scheduled = Counter(f.kind for f in result.schedule)
    applied = Counter(r.fault.kind for r in result.applied if r.applied_at is not None)
    failed = Counter(r.fault.kind for r in result.applied if r.applied_at is None)
    for kind in sorted(scheduled):
        out(f"  {kind:<26}{scheduled[kind]:>10}{applied[kind]:>9}{failed[kind]:>8}")
    out(f"  {'total':<26}{sum(scheduled.values()):>10}{sum(applied.values()):>9}{sum(failed.values()):>8}")
    for record in result.applied:
        if record.error:
            out(f"  #{record.fault.id} {record.fault.describe()}: {record.error}")
    for problem in result.unhealed:
        out(f"  not healed: {problem}")
    for outage in result.ledger_outages:
        out(f"  payment ledger unreachable for {outage.end - outage.start:5.1f} s: {outage.fault}")

    intents, attempts = result.history.snapshot()
    out("")
    out("orders")
    kinds = Counter(i.kind for i in intents)
    out(f"  intents (one Idempotency-Key each)  {len(intents)}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        + f"; gave up on {len(result.history.gave_up)}")
    statuses = Counter("error" if a.status is None else str(a.status) for a in attempts)
    out(f"  requests  {len(attempts)}: " + ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()))
        + f"; replayed {sum(1 for a in attempts if a.replayed)}")
    final = _final_answers(attempts)
    out("  final answer per key: " + ", ".join(f"{k} x{v}" for k, v in sorted(final.items())))
    for copy in ("after", "concurrent"):
        sent = [i for i in intents if i.duplicate == copy]
        answers = Counter(_answer(a) for a in attempts if a.copy == copy)
        out(f"  sent twice ({copy})  {len(sent)} keys; their copies' requests: "
            + (", ".join(f"{k} x{v}" for k, v in sorted(answers.items())) or "none"))
    replays = result.history.replayed()
    replay_answers = Counter(_answer(r) for r in replays)
    out(f"  dead-letter replays  {len({r.dead_letter for r in replays})} letters, {len(replays)} requests: "
        + (", ".join(f"{k} x{v}" for k, v in sorted(replay_answers.items())) or "none")
        + (f"; after healing: {result.final_replay}" if result.final_replay else ""))
    if result.snapshot is not None:
        states = Counter(o.status + (f"/{o.failure_reason}" if o.failure_reason else "")
                         for o in result.snapshot.orders.values())
        out(f"  orders in the database  {len(result.snapshot.orders)}: "
            + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
        replayed = sum(1 for d in result.snapshot.dead_letters if d.replayed_at is not None)
        out(f"  dead letters {len(result.snapshot.dead_letters)} ({replayed} replayed); captures in the ledger "
            f"{len(result.ledger)}")
    circuits = ", ".join(f"{c['name']} {c['state']}" for c in result.circuits or []) or "unread"
    out(f"  circuits at the end: {circuits}")
    settle = f"settled in {result.settled_after:.1f} s" if result.settled_after is not None else "did NOT settle"
    out(f"  {settle} (bound {options.settle:g} s)")

    out("")
    counts = Counter(v.invariant for v in result.violations)
    out("violations")
    for name, text in INVARIANTS.items():
        out(f"  {counts.get(name, 0):>5}  {text}")
    for name in sorted(set(counts) - set(INVARIANTS)):
        out(f"  {counts[name]:>5}  {name}")
    for number, violation in enumerate(result.violations[:SHOWN], 1):
        out("")
        out(f"-- violation {number}: [{violation.invariant}] {violation.subject}: {violation.message}")
        lines.extend("   " + line for line in evidence_lines(violation))
    if len(result.violations) > SHOWN:
        out(f"\n({len(result.violations) - SHOWN} more violations in the JSON report)")
    out("")
    out(f"{'FAILED' if result.violations else 'PASSED'}: {len(result.violations)} violation(s). "
        f"Replay: {result.command}")
    return "\n".join(lines)


def _answer(call: Any) -> str:
    if call.status is None:
        return "error"
    problem = call.problem_type().rsplit("/", 1)[-1]
    return f"{call.status}{' ' + problem if call.status == 409 and problem else ''}" + (
        " replayed" if getattr(call, "replayed", False) else "")


def _final_answers(attempts: list[Any]) -> Counter[str]:
    last: dict[str, Any] = {}
    for attempt in attempts:
        last[attempt.key] = attempt
    return Counter("error" if a.status is None else str(a.status) for a in last.values())


def evidence_lines(violation: Violation) -> list[str]:
    evidence = violation.evidence
    lines = []
    if evidence.get("intent") is not None:
        lines.append(f"key {evidence['key']}  body {json.dumps(evidence['intent'], sort_keys=True)}")
    for a in evidence.get("attempts", []):
        body = a["body"]
        if isinstance(body, dict):
            keep = {k: body[k] for k in ("id", "status", "type", "order_id", "detail") if k in body}
            if isinstance(body.get("payment"), dict):
                keep["payment"] = {k: body["payment"].get(k) for k in ("status", "attempts", "failure_reason")}
            shown = json.dumps(keep, sort_keys=True)
        else:
            shown = repr(body)[:120] if body is not None else ""
        flags = (" replayed" if a["replayed"] else "") + (f" [{a['copy']} copy]" if a.get("copy") else "")
        answer = a["status"] if a["status"] is not None else f"no answer: {a['error']}"
        lines.append(f"  +{a['sent']:8.3f} s  attempt {a['attempt']:<2} {a['elapsed']:6.2f} s  {answer}{flags}"
                     f"{'  Location ' + a['location'] if a['location'] else ''}  {shown}")
    for o in evidence.get("orders", []):
        lines.append(f"  order {o['id']}  {o['status']}  failure_reason={o['failure_reason']}  "
                     f"payment_id={o['payment_id']}  attempts={o['payment_attempts']}  customer={o['customer_id']}  "
                     f"created {o['created_at']}  updated {o['updated_at']}")
    for e in evidence.get("ledger", []):
        lines.append(f"  capture {e.get('id')}  order {e.get('order_id')}  amount {e.get('amount')}  "
                     f"key {e.get('idempotency_key')}  at {e.get('captured_at')}")
    for j in evidence.get("jobs", []):
        lines.append(f"  payment job of {j['order_id']}: {j['state']}, {j['retries']} retries, "
                     f"due {j['next_attempt_at']}, lease {j['lease_until']}")
    for d in evidence.get("dead_letters", []):
        lines.append(f"  dead letter {d['id']} of {d['order_id']}: attempts {d['attempts']}, written "
                     f"{d.get('dead_lettered_at')}, replayed {d['replayed_at']}, "
                     f"last error {str(d['last_error'])[:100]}")
    for r in evidence.get("replays", []):
        answer = r["status"] if r["status"] is not None else f"no answer: {r['error']}"
        lines.append(f"  +{r['sent']:8.3f} s  replay of dead letter {r['dead_letter']} ({r['origin']}) "
                     f"{r['elapsed']:6.2f} s  {answer}")
    if "outage" in evidence:
        lines.append(f"  ledger unreachable {json.dumps(evidence['outage'], sort_keys=True)}")
    if "circuit" in evidence:
        lines.append(f"  circuit {json.dumps(evidence['circuit'], sort_keys=True)}")
    return lines


def to_json(result: Result) -> dict[str, Any]:
    options = result.options
    return {
        "seed": options.seed,
        "duration": options.duration,
        "clients": options.clients,
        "settle_bound": options.settle,
        "database": result.database,
        "database_note": result.database_note,
        "commit": result.commit,
        "replay": result.command,
        "request_deadline": result.request_deadline,
        "stack_log": result.stack_log,
        "schedule": [f.to_json() for f in result.schedule],
        "faults": [r.to_json() for r in result.applied],
        "fault_counts": dict(Counter(r.fault.kind for r in result.applied if r.applied_at is not None)),
        "unhealed": result.unhealed,
        "policy": {**asdict(result.policy), "text": result.policy.toml()} if result.policy is not None else None,
        "final_replay": result.final_replay,
        "ledger_outages": [o.to_json() for o in result.ledger_outages],
        "settled_after": result.settled_after,
        "violation_counts": dict(Counter(v.invariant for v in result.violations)),
        "violations": [v.to_json() for v in result.violations],
        "circuits": result.circuits,
        "ledger": result.ledger,
        "snapshot": result.snapshot.to_json() if result.snapshot is not None else None,
        "history": result.history.to_json(),
    }


def write_json(result: Result, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(result), default=str))
