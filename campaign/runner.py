"""One campaign: start the stack, run clients under the fault schedule, heal, settle, check, report."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from app.policies import load_policies
from bench.environment import ROOT, Database, RedisTarget, commit
from bench.stack import BenchStack, running_stack

from .checker import LedgerOutage, Violation, check
from .clients import Client
from .database import campaign_database, kind_of, read_snapshot, reader, unsettled
from .faults import Applied, Injector, ledger_outages
from .history import History
from .policies import Policy, policy_for
from .redis_server import RedisServer
from .schedule import Fault, make_schedule
from .snapshot import Snapshot

PROGRESS_EVERY = 5.0
QUIET_CHECKS = 2  # settled is when this many checks in a row, a second apart, find nothing moving


@dataclass(frozen=True)
class Options:
    seed: int
    duration: float
    clients: int
    settle: float
    json_path: Path | None
    database_url: str | None


@dataclass
class Result:
    options: Options
    database: str
    database_note: str
    commit: str
    command: str
    schedule: tuple[Fault, ...]
    applied: list[Applied]
    history: History
    policy: Policy | None = None
    final_replay: str = ""  # what the replay of every dead letter after healing did
    ledger_outages: list[LedgerOutage] = field(default_factory=list)
    snapshot: Snapshot | None = None
    ledger: list[dict[str, Any]] = field(default_factory=list)
    circuits: list[dict[str, Any]] | None = None
    violations: list[Violation] = field(default_factory=list)
    settled_after: float | None = None  # seconds of settling; None if the bound ran out
    unhealed: list[str] = field(default_factory=list)
    stack_log: str = ""
    request_deadline: float = 10.0


def say(message: str) -> None:
    print(message, flush=True)


def replay_command(options: Options) -> str:
    parts = ["make campaign", f"SEED={options.seed}", f"DURATION={options.duration:g}",
             f"CLIENTS={options.clients}", f"SETTLE={options.settle:g}"]
    if options.database_url and not options.database_url.startswith("sqlite"):
        parts.insert(0, f"DATABASE_URL={options.database_url}")
    return " ".join(parts)


def run(options: Options, *, on_result: Callable[[Result], None]) -> int:
    """0 when the run shows no violation, 1 when it does, 2 when the stack could not start, 130 on Ctrl-C.
    Every process it starts is stopped before it returns, Ctrl-C and SIGTERM included."""
    signal.signal(signal.SIGTERM, _interrupt)
    database = "postgresql" if options.database_url and not options.database_url.startswith("sqlite") else "sqlite"
    schedule = make_schedule(options.seed, options.duration, database=database)
    policy = policy_for(options.seed)
    run_dir = ROOT / "var" / "campaign" / f"{options.seed}-{database}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    policy_file = run_dir / "resilience.toml"
    policy_file.write_text(policy.toml())
    request_deadline = load_policies(policy_file).api.request_deadline
    _header(options, database, schedule, policy, policy_file)
    try:
        with ExitStack() as resources:
            try:
                return _campaign(options, schedule, policy, run_dir, policy_file, request_deadline, resources,
                                 on_result)
            except KeyboardInterrupt:
                # A second Ctrl-C must not cut the teardown short: it is what stops the stack.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                say("\ninterrupted: healing nothing, stopping every process the campaign started ...")
                raise
    except KeyboardInterrupt:
        say("stopped.")
        return 130


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _header(options: Options, database: str, schedule: tuple[Fault, ...], policy: Policy,
            policy_file: Path) -> None:
    say(f"campaign seed {options.seed}: {options.duration:g} s of faults, {options.clients} clients, "
        f"{database}, settle bound {options.settle:g} s")
    say(f"replay: {replay_command(options)}")
    say(f"policies: {policy_file}, the defaults but {policy.describe()}")
    say(f"schedule ({len(schedule)} faults):")
    for fault in schedule:
        hold = f"held {fault.hold:5.2f} s" if fault.hold else "instant"
        say(f"  +{fault.at:7.2f} s  {hold}  #{fault.id} {fault.describe()}")


def _campaign(options: Options, schedule: tuple[Fault, ...], policy: Policy, run_dir: Path, policy_file: Path,
              request_deadline: float, resources: ExitStack, on_result: Callable[[Result], None]) -> int:
    redis_server = RedisServer(run_dir / "redis")
    resources.callback(redis_server.stop)
    try:
        db: Database = resources.enter_context(campaign_database(options.database_url, run_dir))
        redis_server.start()
    except Exception as exc:  # no database or no Redis: nothing to run the stack on
        say(f"the stack cannot start: {type(exc).__name__}: {exc}")
        return 2
    application_name = f"orderflow-campaign-{options.seed}"[:63]
    say(f"starting the stack ({db.note}; redis {redis_server.url}) ...")
    try:
        stack: BenchStack = resources.enter_context(running_stack(
            db, RedisTarget(redis_server.url, "campaign", "the campaign's own redis-server"), run_dir / "stack",
            extra_env={"RESILIENCE_FILE": str(policy_file), "PGAPPNAME": application_name},
        ))
    except RuntimeError as exc:
        say(f"the stack did not start: {exc}")
        return 2
    say(f"stack ready: API {stack.api}, log {stack.log}")
    clock = _Clock()
    history = History()
    injector = Injector(stack, redis_server, db, application_name=application_name, clock=clock, history=history,
                        say=say)
    resources.callback(injector.close)
    engine = reader(db)
    resources.callback(engine.dispose)
    result = Result(options, kind_of(db), db.note, commit(), replay_command(options), schedule,
                    injector.records, history, policy, stack_log=str(stack.log), request_deadline=request_deadline)
    abort = threading.Event()
    resources.callback(abort.set)
    phase = ["faults"]
    clients = _Clients(stack.api, options, history, clock, abort, request_deadline, lambda: phase[0])

    clients.start()
    stack_died = _run_schedule(schedule, injector, clock, options.duration, history, stack, clients)
    still_moving = ""
    clients.stop_new.set()
    phase[0] = "settle"
    if stack_died is None:
        say(f"[{clock():6.1f} s] faults over: healing everything ...")
        result.unhealed = injector.heal_everything()
        for problem in result.unhealed:
            say(f"  could not heal: {problem}")
        result.final_replay = _final_replay(injector)
        say(f"[{clock():6.1f} s] every dead letter replayed: {result.final_replay}")
        result.settled_after, still_moving = _settle(stack, injector, engine, clients, clock, options.settle)
    abort.set()
    clients.join(timeout=request_deadline + 10)

    if stack_died is not None:
        # Nothing to check against: the simulators (and their ledger) went down with the stack.
        result.violations = [Violation("stack-up", "supervisor", stack_died)]
        on_result(result)
        return 1
    say(f"[{clock():6.1f} s] checking ...")
    result.snapshot = read_snapshot(engine)
    result.ledger = _ledger(stack)
    result.circuits = injector.circuits()
    intents, attempts = history.snapshot()
    result.ledger_outages = ledger_outages(injector.records)
    result.violations = check(intents=intents, attempts=attempts, snapshot=result.snapshot, ledger=result.ledger,
                              circuits=result.circuits, request_deadline=request_deadline,
                              replays=history.replayed(), ledger_outages=result.ledger_outages)
    if result.settled_after is None:
        result.violations.insert(0, Violation("settled", "settle bound",
                                              f"still moving after the settle bound of {options.settle:g} s: "
                                              f"{still_moving}"))
    on_result(result)
    return 1 if result.violations else 0


def _final_replay(injector: Injector) -> str:
    """Every dead letter replayed once the faults are healed (after a scheduled replay still running), so the
    last replayed jobs run before the stack settles."""
    injector.finish_replaying()
    try:
        return injector.replay_dead_letters("final")
    except Exception as exc:  # reported; the checker still sees whatever was replayed
        return f"failed: {type(exc).__name__}: {str(exc)[:300]}"


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.start


class _Clients:
    """The N campaign clients, plus one light client for the settle phase."""

    def __init__(self, api: str, options: Options, history: History, clock: _Clock, abort: threading.Event,
                 request_deadline: float, phase: Callable[[], str]) -> None:
        self.stop_new = threading.Event()
        self.stop_light = threading.Event()
        common: dict[str, Any] = {"api": api, "seed": options.seed, "history": history, "clock": clock,
                                  "abort": abort, "give_up_after": options.settle,
                                  # Longer than the contract's bound, so an answer that comes late is measured.
                                  "read_timeout": request_deadline + 5.0, "phase": phase}
        self.clients = [Client(index=i, stop_new=self.stop_new, **common) for i in range(options.clients)]
        self.light = Client(index=options.clients, stop_new=self.stop_light, think=(1.5, 2.5), **common)

    def start(self) -> None:
        for client in self.clients:
            client.start()

    def busy(self) -> int:
        return sum(1 for c in self.clients if c.is_alive())

    def join(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for client in [*self.clients, self.light]:
            if client.ident is not None:
                client.join(timeout=max(0.0, deadline - time.monotonic()))


def _events(schedule: tuple[Fault, ...]) -> Iterator[tuple[float, int, str, Fault]]:
    for fault in schedule:
        yield fault.at, 1, "apply", fault
        if fault.hold > 0:
            yield fault.heal_at, 0, "heal", fault  # heals first when one ends as another starts


def _run_schedule(schedule: tuple[Fault, ...], injector: Injector, clock: _Clock, duration: float,
                  history: History, stack: BenchStack, clients: _Clients) -> str | None:
    """Applies and heals each fault on time until the duration is over; returns why the stack died, if it did."""
    events = sorted(_events(schedule), key=lambda e: (e[0], e[1], e[3].id))
    next_progress = PROGRESS_EVERY
    while True:
        now = clock()
        while events and events[0][0] <= now:
            _, _, action, fault = events.pop(0)
            if action == "apply":
                record = injector.apply(fault)
                outcome = f"failed: {record.error}" if record.error else (record.note or "on")
                say(f"[{now:6.1f} s] + #{fault.id} {fault.describe()}: {outcome}")
            elif injector.is_on(fault) and injector.heal(fault):
                say(f"[{clock():6.1f} s] - #{fault.id} {fault.kind} {fault.target} healed")
        injector.retry_unhealed(now)
        if stack.process.poll() is not None:
            say(f"[{now:6.1f} s] the stack stopped (supervisor exit {stack.process.returncode}); see {stack.log}")
            return f"the supervisor stopped the stack with exit code {stack.process.returncode} during the faults"
        if now >= next_progress:
            say(_progress(now, injector, history, clients))
            next_progress += PROGRESS_EVERY
        if now >= duration:
            return None
        wake = min([duration, next_progress, *(e[0] for e in events[:1])])
        time.sleep(max(0.01, min(0.25, wake - clock())))


def _progress(now: float, injector: Injector, history: History, clients: _Clients) -> str:
    intents, attempts = history.snapshot()
    statuses = Counter("err" if a.status is None else str(a.status) for a in attempts)
    answers = " ".join(f"{k}:{v}" for k, v in sorted(statuses.items()))
    active = ", ".join(f"#{r.fault.id} {r.fault.kind}" for r in injector.active) or "none"
    return (f"[{now:6.1f} s] intents {len(intents)}, requests {len(attempts)} ({answers}); "
            f"clients busy {clients.busy()}; faults on: {active}")


def _settle(stack: BenchStack, injector: Injector, engine: Any, clients: _Clients, clock: _Clock,
            bound: float) -> tuple[float | None, str]:
    """Light traffic (an order and an inventory read every 2 s or so, so open circuits get probes) until
    nothing moves: every client done, no order pending, no payment job open, every circuit closed. Returns
    how long that took (None when the bound ran out first) and what was still moving then."""
    started = clock()
    clients.light.start()
    quiet = 0
    next_read = 0.0
    while clock() - started < bound:
        if clock() >= next_read:
            next_read = clock() + 2.0
            try:
                requests.get(f"{stack.api}/api/inventory/1", timeout=5)
            except requests.RequestException:
                pass
        try:
            moving = unsettled(engine)
        except Exception as exc:  # the database may still be recovering
            moving = {"error": 1, "detail": str(exc)[:100]}  # type: ignore[dict-item]
        circuits = injector.circuits()
        open_circuits = [c["name"] for c in circuits or [] if c.get("state") != "closed"]
        still = clients.busy() or moving.get("pending_orders") or moving.get("open_jobs") or moving.get("error")
        if still or circuits is None or open_circuits:
            quiet = 0
        else:
            quiet += 1
            clients.stop_light.set()  # the light client finishes its current order, then stops
            if quiet >= QUIET_CHECKS and not clients.light.is_alive():
                say(f"[{clock():6.1f} s] settled after {clock() - started:.1f} s: {moving}")
                return clock() - started, ""
        if int(clock() - started) % 5 == 0:
            say(f"[{clock():6.1f} s] settling: clients busy {clients.busy()}, {moving}, "
                f"circuits not closed: {open_circuits or ('unreadable' if circuits is None else 'none')}")
        time.sleep(1.0)
    say(f"[{clock():6.1f} s] the settle bound ({bound:g} s) ran out with things still moving")
    return None, (f"clients busy {clients.busy()}, {moving}, circuits not closed: "
                  f"{open_circuits or ('unreadable' if circuits is None else 'none')}")


def _ledger(stack: BenchStack) -> list[dict[str, Any]]:
    """Every capture, from the payment simulator itself (not through the proxy)."""
    response = requests.get(f"{stack.simulators['payment']}/payments", timeout=10)
    response.raise_for_status()
    return list(response.json()["items"])

