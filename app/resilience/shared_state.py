"""Circuit and retry-budget state shared by every API and worker process, in Redis.

One script call (EVALSHA) per admitted attempt reads the state, claims the half-open probe and counts or
charges the retry budget. Outcomes are counted locally and flushed in batches by a background thread (one
per process, started lazily and again after a fork, so every gunicorn and Celery child has its own); the
flush script updates the time-bucketed window and opens the circuit. A probe's outcome is written at once.

Open and the probe claim are keys with an expiry, so Redis's clock decides when a break ends and a lost
probe frees itself; isolated is a key without expiry. While Redis cannot be reached the store decides from
an in-process window (`degraded` is true) and tries Redis again after `retry_interval`: a call never waits
on Redis beyond the client's own socket timeout.

Keys, under `key_prefix` and per circuit `<prefix>:cb:<name>:`: `open` (value: break end, epoch ms),
`isolated`, `tripped` ("open" until the first probe is claimed, then "half"; gone when closed), `probe`,
`win` (hash `<bucket>:t` / `<bucket>:f`), `budget` (hash `<bucket>:c` / `<bucket>:r`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .budget import BudgetSpec
from .circuit_breaker import (
    ADMIT,
    CLOSED,
    HALF_OPEN,
    ISOLATED,
    NO_BUDGET,
    OPEN,
    PROBE,
    Admission,
    BreakerSpec,
    CircuitSnapshot,
    LocalBreakerStore,
    Transition,
)

_log = logging.getLogger(__name__)

# Redis 6.2 refuses TIME before a write unless the script replicates its effects, not itself.
_PRELUDE = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function window_sums(key, width, span, a, b)
  local oldest = math.floor(now / width) - span
  local fields = redis.call('HGETALL', key)
  local sa, sb = 0, 0
  for i = 1, #fields, 2 do
    local f = fields[i]
    local sep = string.find(f, ':', 1, true)
    local bucket = tonumber(string.sub(f, 1, sep - 1))
    local kind = string.sub(f, sep + 1)
    if bucket <= oldest then
      redis.call('HDEL', key, f)
    elseif kind == a then
      sa = sa + tonumber(fields[i + 1])
    elseif kind == b then
      sb = sb + tonumber(fields[i + 1])
    end
  end
  return sa, sb
end
local function state_of(k_open, k_isolated, k_tripped)
  if redis.call('EXISTS', k_isolated) == 1 then return 'isolated' end
  if redis.call('EXISTS', k_open) == 1 then return 'open' end
  if redis.call('EXISTS', k_tripped) == 1 then return 'half_open' end
  return 'closed'
end
"""

# KEYS: open, isolated, tripped, probe, budget
# ARGV: check_breaker, retry, budget_on, ratio, min_per_second, window_ms, probe_ttl_ms, token
# -> {code, break_until_ms, transition (1 = open -> half_open)}
_ACQUIRE = _PRELUDE + """
local code = 0
local tripped = false
if ARGV[1] == '1' then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {5, 0, 0} end
  local open_until = redis.call('GET', KEYS[1])
  if open_until then return {3, open_until, 0} end
  tripped = redis.call('GET', KEYS[3])
  if tripped then
    local held = redis.call('PTTL', KEYS[4])
    if held > 0 then return {4, now + held, 0} end
    code = 1
  end
end
if ARGV[3] == '1' then
  local window = tonumber(ARGV[6])
  local width = window / 10
  local bucket = math.floor(now / width)
  if ARGV[2] == '1' then
    local calls, retries = window_sums(KEYS[5], width, 10, 'c', 'r')
    if retries + 1 > tonumber(ARGV[4]) * calls + tonumber(ARGV[5]) * window / 1000 then
      return {2, 0, 0}
    end
    redis.call('HINCRBY', KEYS[5], bucket .. ':r', 1)
  else
    redis.call('HINCRBY', KEYS[5], bucket .. ':c', 1)
  end
  redis.call('PEXPIRE', KEYS[5], window * 2)
end
local transition = 0
if code == 1 then
  redis.call('SET', KEYS[4], ARGV[8], 'PX', ARGV[7])
  if tripped == 'open' then
    redis.call('SET', KEYS[3], 'half')
    transition = 1
  end
end
return {code, 0, transition}
"""

# KEYS: open, isolated, tripped, win
# ARGV: successes, failures, ratio, minimum_throughput, sampling_ms, break_ms
# -> 1 when this flush opened the circuit
_FLUSH = _PRELUDE + """
local sampling = tonumber(ARGV[5])
local width = sampling / 10
local bucket = math.floor(now / width)
local s, f = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('HINCRBY', KEYS[4], bucket .. ':t', s + f)
if f > 0 then redis.call('HINCRBY', KEYS[4], bucket .. ':f', f) end
redis.call('PEXPIRE', KEYS[4], sampling * 2)
if f == 0 or state_of(KEYS[1], KEYS[2], KEYS[3]) ~= 'closed' then return 0 end
local total, failed = window_sums(KEYS[4], width, 10, 't', 'f')
if total >= tonumber(ARGV[4]) and failed / total >= tonumber(ARGV[3]) then
  local brk = tonumber(ARGV[6])
  redis.call('SET', KEYS[1], now + brk, 'PX', brk)
  redis.call('SET', KEYS[3], 'open')
  redis.call('DEL', KEYS[4])
  return 1
end
return 0
"""

# KEYS: open, isolated, tripped, probe, win   ARGV: success, token, break_ms
# -> 1 = half_open -> closed, 2 = half_open -> open, 0 = nothing (the probe was no longer ours)
_PROBE_RESULT = _PRELUDE + """
if state_of(KEYS[1], KEYS[2], KEYS[3]) ~= 'half_open' then return 0 end
local holder = redis.call('GET', KEYS[4])
if holder and holder ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[4], KEYS[5])
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[3])
  return 1
end
local brk = tonumber(ARGV[3])
redis.call('SET', KEYS[1], now + brk, 'PX', brk)
redis.call('SET', KEYS[3], 'open')
return 2
"""

# KEYS: probe   ARGV: token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: open, isolated, tripped, probe, win   ARGV: action ('isolate' | 'reset' | 'read'), sampling_ms
# -> {previous state, break_until_ms, total, failed}
_ADMIN = _PRELUDE + """
local state = state_of(KEYS[1], KEYS[2], KEYS[3])
local break_until = 0
if state == 'open' then break_until = tonumber(redis.call('GET', KEYS[1])) or 0 end
local sampling = tonumber(ARGV[2])
local total, failed = window_sums(KEYS[5], sampling / 10, 10, 't', 'f')
if ARGV[1] == 'isolate' then
  redis.call('SET', KEYS[2], '1')
elseif ARGV[1] == 'reset' then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
end
return {state, break_until, total, failed}
"""

_REDIS_ERRORS = (redis.RedisError, OSError)
_TRANSITION_CODES: dict[int, Transition] = {1: (HALF_OPEN, CLOSED), 2: (HALF_OPEN, OPEN)}
_OPENED: Transition = (CLOSED, OPEN)


def without_retries(client: redis.Redis) -> redis.Redis:
    """A client on the same server and socket settings, which never retries a failed command.

    redis-py retries a failed connection up to ten times with backoff by default: seconds in which a call
    would wait on Redis. A circuit would rather decide locally at once and try Redis again a second later.
    """
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["retry"] = Retry(NoBackoff(), 0)
    own_pool = redis.ConnectionPool(connection_class=pool.connection_class,
                                    max_connections=pool.max_connections, **kwargs)
    return redis.Redis(connection_pool=own_pool)


class RedisBreakerStore:
    """A `BreakerStore` (and budget store) shared through Redis; falls back to this process on errors.

    It talks to the server of `client` with the client's socket settings (keep its timeouts short, ~50 ms)
    but through its own connection pool without retries (see `without_retries`).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str = "orderflow:resilience",
        flush_interval: float = 0.05,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client = without_retries(client)
        self._prefix = key_prefix
        self._flush_interval = flush_interval
        self._retry_interval = retry_interval
        self._clock = clock
        self._local = LocalBreakerStore(clock=clock, wall_clock=wall_clock)
        self._specs: dict[str, BreakerSpec] = {}
        self._notify: dict[str, Callable[[str, str], None]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._acquire_script = client.register_script(_ACQUIRE)
        self._flush_script = client.register_script(_FLUSH)
        self._probe_script = client.register_script(_PROBE_RESULT)
        self._release_script = client.register_script(_RELEASE)
        self._admin_script = client.register_script(_ADMIN)
        self._degraded = False
        self._retry_at = 0.0
        self._closed = False
        self._pid = 0
        self._pending: dict[str, list[int]] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        _stores_to_reset_after_fork.add(self)

    # --- health ------------------------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while Redis cannot be reached and circuits are decided by this process alone."""
        return self._degraded

    def _use_local(self) -> bool:
        return self._degraded and self._clock() < self._retry_at

    def _failed(self, exc: BaseException) -> None:
        if not self._degraded:
            _log.warning("shared circuit state unavailable, deciding locally: %s", exc)
        self._degraded = True
        self._retry_at = self._clock() + self._retry_interval

    def _recovered(self) -> None:
        if self._degraded:
            _log.info("shared circuit state reachable again")
            self._degraded = False

    # --- keys ----------------------------------------------------------------------------------------------

    def _keys_of(self, name: str) -> tuple[str, ...]:
        keys = self._keys.get(name)
        if keys is None:
            base = f"{self._prefix}:cb:{name}:"
            keys = tuple(base + part for part in ("open", "isolated", "tripped", "probe", "win", "budget"))
            self._keys[name] = keys
        return keys

    @staticmethod
    def _token() -> str:
        return f"{os.getpid()}:{threading.get_ident()}"

    def _spec(self, name: str) -> BreakerSpec:
        return self._specs.get(name) or BreakerSpec()

    # --- BreakerStore -----------------------------------------------------------------------------------

    def register(
        self, name: str, spec: BreakerSpec, notify: Callable[[str, str], None] | None = None
    ) -> None:
        self._specs[name] = spec
        if notify is not None:
            self._notify[name] = notify
        self._local.register(name, spec)

    def acquire(self, name: str, *, retry: bool, budget: BudgetSpec | None) -> Admission:
        return self._admit(name, retry=retry, budget=budget, check_breaker=True)

    def charge_budget(self, name: str, spec: BudgetSpec, *, retry: bool) -> bool:
        code, _, _ = self._admit(name, retry=retry, budget=spec, check_breaker=False)
        return code in (ADMIT, PROBE)

    def _admit(self, name: str, *, retry: bool, budget: BudgetSpec | None, check_breaker: bool) -> Admission:
        if self._use_local():
            return self._admit_locally(name, retry=retry, budget=budget, check_breaker=check_breaker)
        open_, isolated, tripped, probe, _, budget_key = self._keys_of(name)
        spec = self._spec(name)
        args: list[Any] = [
            "1" if check_breaker else "0",
            "1" if retry else "0",
            "1" if budget is not None else "0",
            budget.ratio if budget is not None else 0,
            budget.min_per_second if budget is not None else 0,
            int(budget.window * 1000) if budget is not None else 0,
            max(1, int(spec.probe_timeout * 1000)),
            self._token(),
        ]
        try:
            code, break_until, transition = self._acquire_script(
                keys=[open_, isolated, tripped, probe, budget_key], args=args)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return self._admit_locally(name, retry=retry, budget=budget, check_breaker=check_breaker)
        self._recovered()
        until = int(break_until) / 1000.0 if int(break_until) else None
        return int(code), until, ((OPEN, HALF_OPEN) if transition else None)

    def _admit_locally(
        self, name: str, *, retry: bool, budget: BudgetSpec | None, check_breaker: bool
    ) -> Admission:
        if check_breaker:
            return self._local.acquire(name, retry=retry, budget=budget)
        ok = budget is None or self._local.charge_budget(name, budget, retry=retry)
        return (ADMIT, None, None) if ok else (NO_BUDGET, None, None)

    def record(self, name: str, *, success: bool, probe: bool) -> Transition | None:
        if self._use_local():
            return self._local.record(name, success=success, probe=probe)
        if probe:
            return self._record_probe(name, success)
        self._ensure_flusher()
        with self._pending_lock:
            counts = self._pending.get(name)
            if counts is None:
                counts = self._pending[name] = [0, 0]
            counts[0 if success else 1] += 1
        return None

    def _record_probe(self, name: str, success: bool) -> Transition | None:
        open_, isolated, tripped, probe, win, _ = self._keys_of(name)
        break_ms = int(self._spec(name).break_duration * 1000)
        try:
            code = self._probe_script(keys=[open_, isolated, tripped, probe, win],
                                      args=["1" if success else "0", self._token(), break_ms])
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return self._local.record(name, success=success, probe=True)
        self._recovered()
        return _TRANSITION_CODES.get(int(code))

    def release_probe(self, name: str) -> None:
        try:
            self._release_script(keys=[self._keys_of(name)[3]], args=[self._token()])
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            self._local.release_probe(name)

    def isolate(self, name: str) -> Transition | None:
        previous = self._admin(name, "isolate")
        if previous is None:  # Redis unreachable: best effort, this process only
            return self._local.isolate(name)
        return None if previous.state == ISOLATED else (previous.state, ISOLATED)

    def reset(self, name: str) -> Transition | None:
        previous = self._admin(name, "reset")
        if previous is None:
            return self._local.reset(name)
        self._local.reset(name)
        return None if previous.state == CLOSED else (previous.state, CLOSED)

    def snapshot(self, name: str) -> CircuitSnapshot:
        if self._use_local():
            return self._local.snapshot(name)
        snapshot = self._admin(name, "read")
        return snapshot if snapshot is not None else self._local.snapshot(name)

    def _admin(self, name: str, action: str) -> CircuitSnapshot | None:
        open_, isolated, tripped, probe, win, _ = self._keys_of(name)
        sampling_ms = int(self._spec(name).sampling_duration * 1000)
        try:
            state, break_until, total, failed = self._admin_script(
                keys=[open_, isolated, tripped, probe, win], args=[action, sampling_ms])
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        self._recovered()
        state = state.decode() if isinstance(state, bytes) else str(state)
        total, failed = int(total), int(failed)
        return CircuitSnapshot(
            name=name,
            state=state,
            failure_ratio=failed / total if total else 0.0,
            throughput=total,
            break_until=int(break_until) / 1000.0 if state == OPEN and int(break_until) else None,
        )

    # --- batched outcomes ---------------------------------------------------------------------------------

    def _ensure_flusher(self) -> None:
        pid = os.getpid()
        if self._pid == pid or self._closed:
            return
        with self._pending_lock:
            if self._pid == pid:
                return
            # First use in this process, or a forked child: the parent's thread did not survive the fork.
            self._pid = pid
            self._pending = {}
            threading.Thread(target=self._flush_loop, args=(weakref.ref(self), pid), daemon=True,
                             name="circuit-flusher").start()

    @staticmethod
    def _flush_loop(ref: weakref.ref[RedisBreakerStore], pid: int) -> None:
        while True:
            store = ref()
            if store is None or store._closed or store._pid != pid:
                return
            wake, interval = store._wake, store._flush_interval
            del store  # hold no strong reference while sleeping
            wake.wait(interval)
            store = ref()
            if store is None:
                return
            wake.clear()
            try:
                store.flush()
            except Exception:  # noqa: BLE001 - the flusher must outlive any surprise
                _log.exception("flushing circuit outcomes failed")
            del store

    def flush(self) -> None:
        """Send the outcomes counted so far to Redis now (the flusher does this every `flush_interval`)."""
        with self._pending_lock:
            batch, self._pending = self._pending, {}
        for name, (successes, failures) in batch.items():
            self._flush_one(name, successes, failures)

    def _flush_one(self, name: str, successes: int, failures: int) -> None:
        open_, isolated, tripped, _, win, _ = self._keys_of(name)
        spec = self._spec(name)
        transition: Transition | None = None
        try:
            opened = self._flush_script(
                keys=[open_, isolated, tripped, win],
                args=[successes, failures, spec.failure_ratio, spec.minimum_throughput,
                      int(spec.sampling_duration * 1000), int(spec.break_duration * 1000)])
            self._recovered()
            transition = _OPENED if int(opened) == 1 else None
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            # Keep the evidence: the local window decides while Redis is away.
            for success, count in ((True, successes), (False, failures)):
                for _ in range(count):
                    transition = self._local.record(name, success=success, probe=False) or transition
        notify = self._notify.get(name)
        if transition is not None and notify is not None:
            notify(*transition)

    def close(self) -> None:
        """Flush what is pending and stop the flusher thread."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._wake.set()
            self._client.connection_pool.disconnect()


# Locks held by another thread at fork time stay locked forever in the child; give each child fresh ones.
_stores_to_reset_after_fork: weakref.WeakSet[RedisBreakerStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores_to_reset_after_fork):
        store._pending_lock = threading.Lock()
        store._wake = threading.Event()
        store._pending = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
