"""Applying and healing each kind of fault on the running stack, and replaying the dead letters."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests

from bench.environment import Database
from bench.stack import BenchStack
from chaosproxy.client import ToxiproxyClient, ToxiproxyError

from .checker import LedgerOutage
from .database import BackendKiller, WriteLockStall, WriteLockStorm
from .history import History, Replay
from .redis_server import RedisServer
from .schedule import DEPENDENCIES, FLAGS, REPLAY, Fault

HTTP_TIMEOUT = 5.0
ADMIN_PATIENCE = 6.0


@dataclass
class Applied:
    """What became of one scheduled fault."""

    fault: Fault
    applied_at: float | None = None  # seconds since the fault phase started
    healed_at: float | None = None
    note: str = ""
    error: str | None = None
    # Unix times: when the fault was surely on (its call had returned) and when the healing call began.
    on_wall: float | None = None
    off_wall: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.fault.to_json(), "applied_at": self.applied_at, "healed_at": self.healed_at,
                "note": self.note, "error": self.error, "on_wall": self.on_wall, "off_wall": self.off_wall}


def ledger_outages(records: Iterable[Applied]) -> list[LedgerOutage]:
    """When no worker could read the payment ledger, which it reads through the payment proxy: the proxy
    disabled, or a timeout toxic on every connection. Faults whose healing never succeeded are left out
    (their end is not known)."""
    outages = []
    for record in records:
        fault = record.fault
        if fault.target != "payment" or record.on_wall is None or record.off_wall is None:
            continue
        if fault.kind == "proxy_disabled" or (fault.kind == "toxic_timeout" and fault.params["toxicity"] >= 1.0):
            outages.append(LedgerOutage(record.on_wall, record.off_wall, f"#{fault.id} {fault.describe()}"))
    return outages


class Injector:
    def __init__(self, stack: BenchStack, redis_server: RedisServer, db: Database, *, application_name: str,
                 clock: Callable[[], float], history: History, say: Callable[[str], None] = print) -> None:
        self.stack = stack
        self.history = history
        self.say = say
        self.redis = redis_server
        self.db = db
        self.application_name = application_name
        self.clock = clock
        self.chaos = ToxiproxyClient(stack.chaos, timeout=HTTP_TIMEOUT)
        self.admin_headers = {"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"}
        self.records: list[Applied] = []
        self._unhealed: dict[int, Applied] = {}
        self._held: dict[int, WriteLockStall | WriteLockStorm | BackendKiller] = {}
        self._replaying: threading.Thread | None = None

    @property
    def active(self) -> list[Applied]:
        return list(self._unhealed.values())

    def is_on(self, fault: Fault) -> bool:
        """Applied and not healed yet (a fault that could not be applied has nothing to heal)."""
        return fault.id in self._unhealed

    # -- applying ------------------------------------------------------------------------------------

    def apply(self, fault: Fault) -> Applied:
        record = Applied(fault)
        self.records.append(record)
        try:
            record.note = self._apply(fault, record) or ""
            record.applied_at = round(self.clock(), 2)
            record.on_wall = time.time()
            if fault.hold > 0:
                self._unhealed[fault.id] = record
            else:
                record.healed_at = record.applied_at
        except Exception as exc:  # a fault that could not be applied is reported, not fatal
            record.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        return record

    def _apply(self, fault: Fault, record: Applied) -> str | None:
        kind, target, params = fault.kind, fault.target, fault.params
        if kind.startswith("toxic_"):
            attributes = {k: v for k, v in params.items() if k not in ("stream", "toxicity")}
            self.chaos.add_toxic(target, kind.removeprefix("toxic_"), attributes, name=_toxic_name(fault),
                                 stream=params["stream"], toxicity=params["toxicity"])
        elif kind == "proxy_disabled":
            self.chaos.disable(target)
        elif kind in ("simulator_5xx", "simulator_429", "simulator_latency", "fail_after_capture"):
            response = requests.put(f"{self.stack.simulators[target]}/faults", json=params, timeout=HTTP_TIMEOUT)
            response.raise_for_status()
        elif kind == "db_stall":
            stall = WriteLockStall(self.db)
            stall.start()
            self._held[fault.id] = stall
            if stall.error:
                raise RuntimeError(stall.error)
        elif kind == "db_storm" and "stalls" in params:
            storm = WriteLockStorm(self.db, stalls=params["stalls"], pause=params["pause"])
            storm.start()
            self._held[fault.id] = storm
        elif kind in ("db_kill", "db_storm"):
            killer = BackendKiller(self.db, self.application_name, interval=params["interval"],
                                   busy_only=params["busy_only"])
            killer.start()
            self._held[fault.id] = killer
        elif kind == REPLAY:
            return self._replay_in_background(f"#{fault.id}", record)
        elif kind in ("kill_api_worker", "kill_pool_process", "kill_celery_worker"):
            return self._kill(kind, params["pick"])
        elif kind == "redis_restart":
            self.redis.stop()
        elif kind == "flag_off":
            self._admin("PUT", f"/admin/flags/{target}", {"enabled": False})
        elif kind == "circuit_isolated":
            self._admin("POST", f"/admin/circuits/{target}/isolate")
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return None

    def _kill(self, kind: str, pick: float) -> str:
        if kind == "kill_api_worker":
            pids = self.stack.api_workers()
        elif kind == "kill_pool_process":
            pids = self.stack.worker_processes()[1:]
        else:
            main = self.stack.worker_main()
            pids = [main] if main is not None else []
        if not pids:
            raise RuntimeError("no such process alive at that moment (restarting?)")
        pid = pids[min(int(pick * len(pids)), len(pids) - 1)]
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL pid {pid}"

    # -- healing -------------------------------------------------------------------------------------

    def heal(self, fault: Fault) -> bool:
        """Undo one fault; False (and it stays in `active`) if that failed for now."""
        record = self._unhealed.get(fault.id)
        if record is None:
            return True
        started = time.time()
        try:
            self._heal(fault)
        except Exception as exc:
            record.error = f"heal: {type(exc).__name__}: {str(exc)[:300]}"
            return False
        record.healed_at = round(self.clock(), 2)
        record.off_wall = started
        del self._unhealed[fault.id]
        return True

    def _heal(self, fault: Fault) -> None:
        kind, target = fault.kind, fault.target
        if kind.startswith("toxic_"):
            try:
                self.chaos.remove_toxic(target, _toxic_name(fault))
            except ToxiproxyError as exc:
                if exc.status != 404:
                    raise
        elif kind == "proxy_disabled":
            self.chaos.enable(target)
        elif kind in ("simulator_5xx", "simulator_429", "simulator_latency", "fail_after_capture"):
            requests.delete(f"{self.stack.simulators[target]}/faults", timeout=HTTP_TIMEOUT).raise_for_status()
        elif kind in ("db_stall", "db_kill", "db_storm"):
            held = self._held.pop(fault.id, None)
            if held is not None:
                held.stop()
                if isinstance(held, BackendKiller):
                    self._unhealed[fault.id].note = f"{held.killed} backends terminated"
                elif isinstance(held, WriteLockStorm):
                    self._unhealed[fault.id].note = f"write lock taken {held.taken} of {len(held.stalls)} times" + (
                        f" (last miss: {held.error})" if held.error else "")
        elif kind == "redis_restart":
            if self.redis.process is None:
                self.redis.start()
        elif kind == "flag_off":
            self._admin("PUT", f"/admin/flags/{target}", {"enabled": True})
        elif kind == "circuit_isolated":
            self._admin("POST", f"/admin/circuits/{target}/reset")

    def retry_unhealed(self, now: float) -> None:
        for record in self.active:
            if record.fault.heal_at <= now:
                self.heal(record.fault)

    def heal_everything(self, *, timeout: float = 60.0) -> list[str]:
        """Every fault off (each one the campaign still holds, then a sweep: no toxic, every proxy enabled,
        no simulator fault, every flag on). Circuits the campaign isolated are reset by their own heal; those
        opened by failures are left to close through traffic. Returns what could not be healed in time."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.active:
                self.heal(record.fault)
            problems = [f"{r.fault.describe()}: {r.error}" for r in self.active]
            problems += self._sweep()
            if not problems or time.monotonic() > deadline:
                return problems
            time.sleep(1.0)

    def _sweep(self) -> list[str]:
        problems = []
        steps: list[tuple[str, Callable[[], object]]] = [("chaos proxy reset", self.chaos.reset)]
        steps += [(f"{name} faults", _deleter(self.stack.simulators[name])) for name in DEPENDENCIES]
        steps += [(f"flag {flag} on", _flag_on(self, flag)) for flag in FLAGS]
        if self.redis.process is None:
            steps.append(("redis start", self.redis.start))
        for what, step in steps:
            try:
                step()
            except Exception as exc:
                problems.append(f"{what}: {type(exc).__name__}: {str(exc)[:200]}")
        return problems

    # -- replaying dead letters ----------------------------------------------------------------------

    def _replay_in_background(self, origin: str, record: Applied) -> str:
        """A scheduled replay runs beside the schedule (a stalled database must not hold back the faults
        after it); one at a time."""
        if self._replaying is not None and self._replaying.is_alive():
            return "skipped: the previous replay is still running"

        def replay() -> None:
            try:
                record.note = self.replay_dead_letters(origin)
            except Exception as exc:
                record.error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.say(f"[{self.clock():6.1f} s]   {origin} {REPLAY}: {record.error or record.note}")

        self._replaying = threading.Thread(target=replay, name="campaign-replay", daemon=True)
        self._replaying.start()
        return "started"

    def finish_replaying(self, *, timeout: float = 60.0) -> None:
        if self._replaying is not None:
            self._replaying.join(timeout=timeout)

    def replay_dead_letters(self, origin: str) -> str:
        """`POST /admin/dead-letters/{id}/replay` for every dead letter not replayed yet, oldest first, as an
        operator would once the payment service is back; every call and its answer go into the history."""
        waiting = [d for d in self._admin("GET", "/admin/dead-letters")["items"] if d.get("replayed_at") is None]
        answers = [self._replay(letter, origin) for letter in sorted(waiting, key=lambda d: int(d["id"]))]
        accepted = sum(1 for status in answers if status == 202)
        return f"{accepted} of {len(waiting)} dead letters replayed" + (
            f" (answers {sorted(set(map(str, answers)))})" if accepted < len(waiting) else "")

    def _replay(self, letter: dict[str, Any], origin: str) -> int | None:
        """One dead letter, sent again for a few seconds while the API answers 503 or not at all."""
        deadline = time.monotonic() + ADMIN_PATIENCE
        while True:
            sent, wall, started = self.clock(), time.time(), time.monotonic()
            status: int | None = None
            body: Any = None
            error = None
            try:
                response = requests.post(f"{self.stack.api}/admin/dead-letters/{letter['id']}/replay",
                                         headers=self.admin_headers, timeout=HTTP_TIMEOUT)
                status = response.status_code
                try:
                    body = response.json()
                except ValueError:
                    body = response.text[:500]
            except requests.RequestException as exc:
                error = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.history.add_replay(Replay(int(letter["id"]), str(letter["order_id"]), origin, round(sent, 3), wall,
                                           round(time.monotonic() - started, 3), status, body, error))
            if (status is not None and status != 503) or time.monotonic() > deadline:
                return status
            time.sleep(0.5)

    def circuits(self) -> list[dict[str, Any]] | None:
        try:
            return list(self._admin("GET", "/admin/circuits", patience=0)["circuits"])
        except Exception:
            return None

    def _admin(self, method: str, path: str, body: Any = None, *, patience: float = ADMIN_PATIENCE) -> Any:
        """An admin call, tried again for a few seconds while it answers 503 or not at all: an operator flipping
        a flag while the database is locked (or an API process restarts) tries again too."""
        deadline = time.monotonic() + patience
        while True:
            try:
                response = requests.request(method, f"{self.stack.api}{path}", json=body,
                                            headers=self.admin_headers, timeout=HTTP_TIMEOUT)
                if response.status_code != 503 or time.monotonic() > deadline:
                    response.raise_for_status()
                    return response.json()
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)

    def close(self) -> None:
        for held in list(self._held.values()):
            held.stop()
        self._held.clear()
        self.chaos.close()


def _toxic_name(fault: Fault) -> str:
    return f"campaign-{fault.id}-{fault.kind.removeprefix('toxic_')}"


def _deleter(url: str) -> Callable[[], object]:
    return lambda: requests.delete(f"{url}/faults", timeout=HTTP_TIMEOUT).raise_for_status()


def _flag_on(injector: Injector, flag: str) -> Callable[[], object]:
    return lambda: injector._admin("PUT", f"/admin/flags/{flag}", {"enabled": True})


