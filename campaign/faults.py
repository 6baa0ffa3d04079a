"""Applying and healing each kind of fault on the running stack."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from bench.environment import Database
from bench.stack import BenchStack
from chaosproxy.client import ToxiproxyClient, ToxiproxyError

from .database import BackendKiller, WriteLockStall
from .redis_server import RedisServer
from .schedule import DEPENDENCIES, FLAGS, Fault

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

    def to_json(self) -> dict[str, Any]:
        return {**self.fault.to_json(), "applied_at": self.applied_at, "healed_at": self.healed_at,
                "note": self.note, "error": self.error}


class Injector:
    def __init__(self, stack: BenchStack, redis_server: RedisServer, db: Database, *, application_name: str,
                 clock: Callable[[], float]) -> None:
        self.stack = stack
        self.redis = redis_server
        self.db = db
        self.application_name = application_name
        self.clock = clock
        self.chaos = ToxiproxyClient(stack.chaos, timeout=HTTP_TIMEOUT)
        self.admin_headers = {"Authorization": f"Bearer {stack.env['ADMIN_TOKEN']}"}
        self.records: list[Applied] = []
        self._unhealed: dict[int, Applied] = {}
        self._held: dict[int, WriteLockStall | BackendKiller] = {}

    @property
    def active(self) -> list[Applied]:
        return list(self._unhealed.values())

    # -- applying ------------------------------------------------------------------------------------

    def apply(self, fault: Fault) -> Applied:
        record = Applied(fault)
        self.records.append(record)
        try:
            record.note = self._apply(fault) or ""
            record.applied_at = round(self.clock(), 2)
            if fault.hold > 0:
                self._unhealed[fault.id] = record
            else:
                record.healed_at = record.applied_at
        except Exception as exc:  # a fault that could not be applied is reported, not fatal
            record.error = f"{type(exc).__name__}: {str(exc)[:300]}"
        return record

    def _apply(self, fault: Fault) -> str | None:
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
        elif kind == "db_kill":
            killer = BackendKiller(self.db, self.application_name, interval=params["interval"],
                                   busy_only=params["busy_only"])
            killer.start()
            self._held[fault.id] = killer
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
        try:
            self._heal(fault)
        except Exception as exc:
            record.error = f"heal: {type(exc).__name__}: {str(exc)[:300]}"
            return False
        record.healed_at = round(self.clock(), 2)
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
        elif kind in ("db_stall", "db_kill"):
            held = self._held.pop(fault.id, None)
            if held is not None:
                held.stop()
                if isinstance(held, BackendKiller):
                    self._unhealed[fault.id].note = f"{held.killed} backends terminated"
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


