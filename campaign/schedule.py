"""The fault schedule: a pure function of the seed, the duration and the database kind.

Faults are drawn from a shuffled deck holding every kind once (database faults twice), refilled when it
runs out, so even a short run meets every kind of fault, and a longer one meets each many times. Start times
follow a Poisson process; each fault is held for a bounded random time, then healed. Faults that would fight
over one thing (two `PUT /faults` on one simulator, two write locks, a Redis restart during a Redis restart)
never overlap, and process kills are spaced so the supervisor (which stops the stack when one process dies
more than 5 times in 60 s) keeps restarting what dies.

Under the `give-up` policy (see `policies.py`) payment outages are held long enough for jobs to use up their
retries. A few seconds after each payment fault heals, the schedule replays every dead letter (an admin
action, not a fault), so replayed jobs run while later faults come and go.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from .policies import policy_for

DEPENDENCIES = ("payment", "inventory", "notification")
# Where a dependency fault lands: payment twice as often, as that is where a charge can be lost or doubled.
TARGETS = ("payment", "payment", "inventory", "notification")
CIRCUITS = ("payment", "inventory")
FLAGS = ("RealTimePayments", "Notifications")
MEAN_GAP = 2.5  # seconds between two fault starts, on average: a 75 s run draws a whole deck
TAIL = 2.0  # no fault starts in the last seconds of the run: its effect could not show
MAX_HOLD = 20.0
REPLAY = "replay_dead_letters"  # the admin action scheduled after payment faults; not a fault
REPLAY_AFTER = (3.0, 8.0)  # seconds after a payment fault heals
STORM_PAUSE = 0.4  # seconds between two stalls of a SQLite storm
# Payment faults that make jobs fail fast (an answer or a refused connection) and slowly (a timeout each):
# under the give-up policy they are held at least this long, so the jobs of the orders they hit use up
# their retries while they last.
FAST_OUTAGES = ("simulator_5xx", "simulator_429", "fail_after_capture", "proxy_disabled", "toxic_reset_peer")
SLOW_OUTAGES = ("toxic_timeout", "toxic_latency", "simulator_latency")
FAST_OUTAGE_HOLD = (5.0, 10.0)
SLOW_OUTAGE_HOLD = (12.0, MAX_HOLD)


@dataclass(frozen=True)
class Fault:
    id: int
    kind: str
    target: str
    at: float  # seconds from the start of the fault phase
    hold: float  # seconds until it is healed; 0 for a kill, which heals itself (something restarts it)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def heal_at(self) -> float:
        return self.at + self.hold

    def describe(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k != "pick")
        return f"{self.kind} {self.target}" + (f" ({detail})" if detail else "")

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "target": self.target, "at": self.at, "hold": self.hold,
                "params": dict(self.params)}


@dataclass(frozen=True)
class _Kind:
    """How to draw one kind of fault: its target, its hold and parameters, and what it keeps to itself."""

    name: str
    draw: Callable[[random.Random], tuple[str, float, dict[str, Any]]]
    resource: Callable[[str], str | None]  # faults with one resource never overlap
    gap: float = 0.0  # the resource stays busy this much longer than the hold
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    copies: int = 1  # cards of this kind in each deck


def _seconds(rng: random.Random, low: float, high: float) -> float:
    return round(rng.uniform(low, high), 2)


def _toxic(kind: str, attributes: Callable[[random.Random], dict[str, Any]], low: float, high: float) -> _Kind:
    def draw(rng: random.Random) -> tuple[str, float, dict[str, Any]]:
        target = rng.choice(TARGETS)
        hold = _seconds(rng, low, high)
        stream = "upstream" if rng.random() < 0.25 else "downstream"
        toxicity = 1.0 if rng.random() < 0.6 else round(rng.uniform(0.3, 0.9), 2)
        return target, hold, {"stream": stream, "toxicity": toxicity, **attributes(rng)}

    return _Kind(f"toxic_{kind}", draw, lambda target: f"toxic:{target}:{kind}")


def _simulator(kind: str, faults: Callable[[random.Random], dict[str, Any]],
               targets: tuple[str, ...] = TARGETS) -> _Kind:
    def draw(rng: random.Random) -> tuple[str, float, dict[str, Any]]:
        return rng.choice(targets), _seconds(rng, 3, 15), faults(rng)

    # PUT /faults replaces a simulator's whole configuration: one at a time per simulator.
    return _Kind(kind, draw, lambda target: f"simulator:{target}")


def _kill(kind: str, target: str, gap: float) -> _Kind:
    # `pick` chooses which of the processes of that kind alive at the time (a fraction of their count).
    return _Kind(kind, lambda rng: (target, 0.0, {"pick": round(rng.random(), 4)}), lambda _: f"kill:{target}", gap)


def _lock_storm(rng: random.Random) -> tuple[str, float, dict[str, Any]]:
    """SQLite's connection storm: the write lock taken again and again, 0.3-2.5 s each (some past the API's
    2 s wait for the database), with short pauses between, for 4-10 s."""
    length = _seconds(rng, 4, 10)
    stalls: list[float] = []
    while sum(stalls) + STORM_PAUSE * len(stalls) < length:
        stalls.append(_seconds(rng, 0.3, 2.5))
    return "database", round(sum(stalls) + STORM_PAUSE * len(stalls), 2), {"stalls": stalls, "pause": STORM_PAUSE}


KINDS: tuple[_Kind, ...] = (
    _toxic("latency", lambda rng: {"latency": rng.choice((300, 1000, 2500, 6000)),
                                   "jitter": rng.choice((0, 200, 1000))}, 3, 15),
    _toxic("timeout", lambda rng: {"timeout": rng.choice((0, 0, 2000))}, 2, 10),
    _toxic("reset_peer", lambda rng: {"timeout": rng.choice((0, 50, 500))}, 2, 10),
    _toxic("slicer", lambda rng: {"average_size": rng.choice((1, 8, 64)), "size_variation": 0,
                                  "delay": rng.choice((20_000, 100_000, 400_000))}, 3, 12),
    _toxic("bandwidth", lambda rng: {"rate": rng.choice((1, 2, 8))}, 3, 12),
    _Kind("proxy_disabled", lambda rng: (rng.choice(TARGETS), _seconds(rng, 2, 10), {}),
          lambda target: f"proxy:{target}"),
    _simulator("simulator_5xx", lambda rng: {"error_rate": rng.choice((0.3, 0.7, 1.0)),
                                             "error_status": rng.choice((500, 502, 503, 504))}),
    _simulator("simulator_429", lambda rng: {"error_rate": rng.choice((0.5, 1.0)), "error_status": 429}),
    _simulator("simulator_latency", lambda rng: {"latency_ms": rng.choice((500, 2000, 4000, 7000))}),
    _simulator("fail_after_capture", lambda rng: {"fail_after_capture": True,
                                                  "error_status": rng.choice((500, 503, 504))}, ("payment",)),
    _Kind("db_stall", lambda rng: ("database", _seconds(rng, 1, 6), {}), lambda _: "database:lock", 2.0, copies=2),
    _Kind("db_kill", lambda rng: ("database", _seconds(rng, 1, 6),
                                  {"interval": rng.choice((0.3, 0.7, 1.5)), "busy_only": rng.random() < 0.5}),
          lambda _: "database:kill", 2.0, databases=("postgresql",)),
    # A connection storm: every backend of the stack terminated every 0.3 s while orders flow (PostgreSQL);
    # the write lock taken in short bursts (SQLite).
    _Kind("db_storm", lambda rng: ("database", _seconds(rng, 3, 8), {"interval": 0.3, "busy_only": False}),
          lambda _: "database:kill", 2.0, databases=("postgresql",), copies=2),
    _Kind("db_storm", _lock_storm, lambda _: "database:lock", 2.0, databases=("sqlite",), copies=2),
    _kill("kill_api_worker", "api", 8.0),
    _kill("kill_pool_process", "worker-pool", 8.0),
    # The whole worker counts against the supervisor's limit (5 exits in 60 s): at most 3 a minute.
    _kill("kill_celery_worker", "worker", 20.0),
    _Kind("redis_restart", lambda rng: ("redis", _seconds(rng, 1, 5), {}), lambda _: "redis", 15.0),
    _Kind("flag_off", lambda rng: (rng.choice(FLAGS), _seconds(rng, 3, 15), {}), lambda target: f"flag:{target}"),
    _Kind("circuit_isolated", lambda rng: (rng.choice(CIRCUITS), _seconds(rng, 3, 12), {}),
          lambda target: f"circuit:{target}"),
)


def kinds_for(database: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(kind.name for kind in KINDS if database in kind.databases))


def make_schedule(seed: int, duration: float, *, database: str) -> tuple[Fault, ...]:
    """Every fault of a run, and the dead-letter replays after the payment ones, in start order. The same
    arguments give the same schedule, on any machine."""
    if database not in ("sqlite", "postgresql"):
        raise ValueError(f"database: sqlite or postgresql, not {database!r}")
    give_up = policy_for(seed).name == "give-up"
    # A string seed goes through SHA-512: stable across processes and Python versions, unlike hash().
    rng = random.Random(f"orderflow-campaign/{seed}/{duration:g}/{database}")
    kinds = [kind for kind in KINDS if database in kind.databases for _ in range(kind.copies)]
    deck: list[_Kind] = []
    busy_until: dict[str, float] = {}
    faults: list[Fault] = []
    t = round(rng.uniform(0.5, MEAN_GAP), 2)
    while t < duration - TAIL:
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        # The first kind whose resource is free now; a busy one keeps its place in the deck.
        chosen = None
        for kind in deck:
            target, hold, params = kind.draw(rng)
            if give_up and target == "payment":
                hold = _outage_hold(rng, kind.name, hold)
            resource = kind.resource(target)
            if resource is None or busy_until.get(resource, float("-inf")) <= t:
                chosen = kind
                break
        if chosen is None:
            t = round(t + rng.expovariate(1 / MEAN_GAP), 2)
            continue
        deck.remove(chosen)
        hold = round(min(hold, duration - t), 2)
        if resource is not None:
            busy_until[resource] = t + hold + chosen.gap
        faults.append(Fault(len(faults) + 1, chosen.name, target, t, hold, params))
        t = round(t + rng.expovariate(1 / MEAN_GAP), 2)
    events = sorted([*faults, *_replays(rng, faults, duration)], key=lambda f: (f.at, f.id))
    return tuple(replace(event, id=number) for number, event in enumerate(events, 1))


def _outage_hold(rng: random.Random, kind: str, hold: float) -> float:
    if kind in FAST_OUTAGES:
        return max(hold, _seconds(rng, *FAST_OUTAGE_HOLD))
    if kind in SLOW_OUTAGES:
        return max(hold, _seconds(rng, *SLOW_OUTAGE_HOLD))
    return hold


def _replays(rng: random.Random, faults: list[Fault], duration: float) -> list[Fault]:
    """A replay of every dead letter a few seconds after each payment fault heals (one for faults that heal
    close together); the run replays once more after healing everything, whatever the schedule says."""
    replays: list[Fault] = []
    for fault in sorted(faults, key=lambda f: f.heal_at):
        if fault.target != "payment" or fault.hold <= 0:
            continue
        at = round(fault.heal_at + rng.uniform(*REPLAY_AFTER), 2)
        if at >= duration or (replays and at - replays[-1].at < REPLAY_AFTER[0]):
            continue
        # Ids above every fault's keep the sort stable before they are numbered in start order.
        replays.append(Fault(len(faults) + len(replays) + 1, REPLAY, "admin", at, 0.0))
    return replays
