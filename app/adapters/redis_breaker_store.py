"""Circuit and retry-budget state shared by every API and worker process, in Redis.

One script call (EVALSHA) per admitted attempt reads the state, claims the half-open probe and counts or
charges the retry budget. Outcomes are counted locally and flushed in batches by a background thread (one
per process, started lazily and again after a fork, so every gunicorn and Celery child has its own); the
flush script updates the time-bucketed window and opens the circuit. A probe's outcome is written at once.

Open and the probe claim are keys with an expiry, so Redis's clock decides when a break ends and a lost
probe frees itself; isolated is a key without expiry. While Redis cannot be reached the store decides from
an in-process window (`degraded` is true), starting from the shared state it last saw (isolated stays
isolated, open stays open until its break ends), and tries Redis again after `retry_interval`: a call never
waits on Redis beyond the client's own socket timeout.

The admission is the hot path, so it costs one round trip and little else: each thread keeps its own
connection (no pool checkout per call) and sends a command packed once per circuit, flags and thread; with
the circuit closed and no budget the script reads three keys with one MGET and answers a bare integer.

Keys, under `key_prefix` and per circuit `<prefix>:{cb:<name>}:`: `open` (value: break end, epoch ms),
`isolated`, `tripped` ("open" until the first probe is claimed, then "half"; gone when closed), `probe`
(the token of the probe claimed last, handed out with its admission and reported back with its outcome),
`win` (hash `<bucket>:t` / `<bucket>:f`), `budget` (hash `<bucket>:c` / `<bucket>:r`). A bucket's first
write deletes the buckets that left the window, so the hashes stay small however long the traffic lasts.
The braces are a Redis Cluster hash tag: every key of one circuit hashes to the same slot, so each script,
which touches several of them, runs on a cluster too (Redis refuses a script whose keys span slots).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.connection import AbstractConnection, Encoder, PythonRespSerializer
from redis.exceptions import NoScriptError
from redis.retry import Retry

from app.forks import on_fork
from app.resilience import (
    ADMIT,
    CLOSED,
    HALF_OPEN,
    ISOLATED,
    NO_BUDGET,
    OPEN,
    PROBE,
    REJECT_HALF_OPEN,
    REJECT_ISOLATED,
    REJECT_OPEN,
    Admission,
    BreakerSpec,
    BudgetSpec,
    CircuitSnapshot,
    LocalBreakerStore,
    Transition,
)

_log = logging.getLogger(__name__)

# SPAN: buckets per window, as in the policies' local windows (app.resilience.BUCKETS).
# `clock()` only where a script needs the time: Redis 6.2 refuses TIME before a write unless the script
# replicates its effects (a no-op from Redis 7 on, where that is the default).
_PRELUDE = """
local SPAN = 10
local function clock()
  redis.replicate_commands()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function bump(key, bucket, kind, n, a, b, ttl)
  if redis.call('HINCRBY', key, bucket .. ':' .. kind, n) ~= n then return end
  -- the bucket's first write: forget the buckets that left the window since the last one
  local stale = {}
  for old = bucket - 2 * SPAN, bucket - SPAN do
    stale[#stale + 1] = old .. ':' .. a
    stale[#stale + 1] = old .. ':' .. b
  end
  redis.call('HDEL', key, unpack(stale))
  redis.call('PEXPIRE', key, ttl)
end
local function window_sums(key, bucket, a, b)
  local fields = {}
  for live = bucket - SPAN + 1, bucket do
    fields[#fields + 1] = live .. ':' .. a
    fields[#fields + 1] = live .. ':' .. b
  end
  local values = redis.call('HMGET', key, unpack(fields))
  local sa, sb = 0, 0
  for i = 1, #values, 2 do
    if values[i] then sa = sa + tonumber(values[i]) end
    if values[i + 1] then sb = sb + tonumber(values[i + 1]) end
  end
  return sa, sb
end
local function state_of(k_open, k_isolated, k_tripped)
  local v = redis.call('MGET', k_open, k_isolated, k_tripped)
  if v[2] then return 'isolated', v[1] end
  if v[1] then return 'open', v[1] end
  if v[3] then return 'half_open', false end
  return 'closed', false
end
"""

# KEYS: open, isolated, tripped, probe, budget
# ARGV: check_breaker, retry, budget_on, ratio, min_per_second, window_ms, probe_ttl_ms, caller (pid:thread)
# -> code, or {code, break_until_ms, transition (1 = open -> half_open)} when either is set, or
#    {1, 0, transition, token} for the probe
_ACQUIRE = _PRELUDE + """
local code = 0
local tripped = false
if ARGV[1] == '1' then
  local flags = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
  if flags[2] then return 5 end
  if flags[1] then return {3, flags[1], 0} end
  tripped = flags[3]
  if tripped then
    local held = redis.call('PTTL', KEYS[4])
    if held > 0 then return {4, clock() + held, 0} end
    code = 1
  end
end
if ARGV[3] == '1' then
  local window = tonumber(ARGV[6])
  local bucket = math.floor(clock() / (window / SPAN))
  if ARGV[2] == '1' then
    local calls, retries = window_sums(KEYS[5], bucket, 'c', 'r')
    if retries + 1 > tonumber(ARGV[4]) * calls + tonumber(ARGV[5]) * window / 1000 then return 2 end
    bump(KEYS[5], bucket, 'r', 1, 'c', 'r', window * 2)
  else
    bump(KEYS[5], bucket, 'c', 1, 'c', 'r', window * 2)
  end
end
if code == 1 then
  -- The claim's own token, so a probe presumed lost that reports late cannot decide for the next one, even
  -- one the same thread claims (a thread's claims share a token only within a millisecond, by when the
  -- first one has reported).
  local token = ARGV[8] .. ':' .. string.format('%d', clock())
  redis.call('SET', KEYS[4], token, 'PX', ARGV[7])
  local transition = 0
  if tripped == 'open' then
    redis.call('SET', KEYS[3], 'half')
    transition = 1
  end
  return {1, 0, transition, token}
end
return code
"""

# KEYS: open, isolated, tripped, win
# ARGV: successes, failures, ratio, minimum_throughput, sampling_ms, break_ms
# -> 1 when this flush opened the circuit
_FLUSH = _PRELUDE + """
local now = clock()
local sampling = tonumber(ARGV[5])
local bucket = math.floor(now / (sampling / SPAN))
local s, f = tonumber(ARGV[1]), tonumber(ARGV[2])
bump(KEYS[4], bucket, 't', s + f, 't', 'f', sampling * 2)
if f == 0 then return 0 end
redis.call('HINCRBY', KEYS[4], bucket .. ':f', f)
if state_of(KEYS[1], KEYS[2], KEYS[3]) ~= 'closed' then return 0 end
local total, failed = window_sums(KEYS[4], bucket, 't', 'f')
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
local now = clock()
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
local now = clock()
local state, open_until = state_of(KEYS[1], KEYS[2], KEYS[3])
local break_until = 0
if state == 'open' then break_until = tonumber(open_until) or 0 end
local sampling = tonumber(ARGV[2])
local total, failed = window_sums(KEYS[5], math.floor(now / (sampling / SPAN)), 't', 'f')
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
_ADMITTED = Admission(ADMIT)
_NO_BUDGET = Admission(NO_BUDGET)
_CODES = {code: Admission(code) for code in range(6)}
_FLAG = {True: "1", False: "0"}


def connection_factory(client: redis.Redis) -> Callable[[], AbstractConnection]:
    """New connections to the server of `client`, with its socket settings, that never retry a command.

    redis-py retries a failed connection up to ten times with backoff by default: seconds in which a call
    would wait on Redis. A circuit would rather decide locally at once and try Redis again a second later.
    """
    pool = client.connection_pool
    connection_class = pool.connection_class
    kwargs = {**pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
    return lambda: connection_class(**kwargs)


# redis-py's own protocol writer, used without a connection so a command can be packed once and sent often.
_SERIALIZER = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)


def pack_command(*parts: str | bytes) -> list[bytes]:
    """A command in the Redis protocol, ready for `send_packed_command`."""
    return _SERIALIZER.pack(*parts)


def _roundtrip(connection: AbstractConnection, command: list[bytes]) -> Any:
    try:
        connection.send_packed_command(command, False)
        return connection.read_response()
    except redis.ResponseError:
        raise  # a whole reply was read: the connection is still in step
    except BaseException:
        connection.disconnect()  # a reply may still come: the next command must not read it
        raise


class _Script:
    """A Lua script called by its SHA1; loaded on the connection that first finds it missing."""

    __slots__ = ("source", "sha")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[str]) -> list[bytes]:
        return pack_command("EVALSHA", self.sha, str(len(keys)), *keys, *args)


class _Hangup:
    """Closes a thread's connection when the thread ends: the connection sits in reference cycles of its
    own and would otherwise stay open until the garbage collector happens to run."""

    __slots__ = ("connection",)

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection

    def __del__(self) -> None:
        try:
            self.connection.disconnect()
        except Exception:  # noqa: BLE001 - nothing to do about a socket that will not close
            pass


class _ThreadState(threading.local):
    """This thread's connection and the admission commands packed for it (they carry its name, which starts
    the token of each probe it claims)."""

    def __init__(self) -> None:
        self.connection: AbstractConnection | None = None
        self.hangup: _Hangup | None = None
        self.caller = f"{os.getpid()}:{threading.get_ident()}"
        self.commands: dict[tuple[Any, ...], list[bytes]] = {}
        self.generation = -1


_ACQUIRE_SCRIPT = _Script(_ACQUIRE)
_FLUSH_SCRIPT = _Script(_FLUSH)
_PROBE_SCRIPT = _Script(_PROBE_RESULT)
_RELEASE_SCRIPT = _Script(_RELEASE)
_ADMIN_SCRIPT = _Script(_ADMIN)


class RedisBreakerStore:
    """A `BreakerStore` (and budget store) shared through Redis; falls back to this process on errors.

    It talks to the server of `client` with the client's socket settings (keep its timeouts short, ~50 ms)
    but on its own connections, one per thread, without retries (see `connection_factory`).
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
        self._new_connection = connection_factory(client)
        self._prefix = key_prefix
        self._flush_interval = flush_interval
        self._retry_interval = retry_interval
        self._clock = clock
        self._local = LocalBreakerStore(clock=clock, wall_clock=wall_clock)
        self._specs: dict[str, BreakerSpec] = {}
        self._notify: dict[str, Callable[[str, str], None]] = {}
        self._keys: dict[str, tuple[str, ...]] = {}
        self._per_thread = _ThreadState()
        self._generation = 0  # bumped by `register`: the packed admissions carry the probe timeout
        self._connections: weakref.WeakSet[AbstractConnection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        # The shared state of each circuit as last seen, when not closed (state, break end): while Redis is
        # unreachable the local circuits start from it, so an isolated or open circuit stays so.
        self._seen: dict[str, tuple[str, float | None]] = {}
        self._degraded = False
        self._retry_at = 0.0
        self._closed = False
        self._pid = 0  # the process whose flusher thread runs; 0 = none yet (or forked since)
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
            for name in list(self._specs):
                self._local.adopt(name, *self._seen.get(name, (CLOSED, None)))
        self._degraded = True
        self._retry_at = self._clock() + self._retry_interval

    def _recovered(self) -> None:
        if self._degraded:
            _log.info("shared circuit state reachable again")
            self._degraded = False

    # --- the wire ------------------------------------------------------------------------------------------

    def _connection(self, state: _ThreadState) -> AbstractConnection:
        state.connection = connection = self._new_connection()
        state.hangup = _Hangup(connection)
        with self._connections_lock:
            self._connections.add(connection)
        return connection

    def _call(self, state: _ThreadState, script: _Script, command: list[bytes]) -> Any:
        """Send one packed EVALSHA on this thread's connection and read its reply (one round trip)."""
        connection = state.connection
        if connection is None:
            connection = self._connection(state)
        reused = connection.is_connected
        if not reused:
            connection.connect()
        try:
            return _roundtrip(connection, command)
        except NoScriptError:
            pass  # first call since Redis started (or SCRIPT FLUSH): nothing ran, load and send again
        except redis.ConnectionError:
            if not reused:
                raise
            # The server closed the idle socket (restart, idle timeout): one more try on a fresh one.
            connection.connect()
        _roundtrip(connection, pack_command("SCRIPT", "LOAD", script.source))
        return _roundtrip(connection, command)

    def _eval(self, script: _Script, keys: Sequence[str], args: Sequence[str]) -> Any:
        return self._call(self._per_thread, script, script.command(keys, args))

    # --- keys ----------------------------------------------------------------------------------------------

    def _keys_of(self, name: str) -> tuple[str, ...]:
        keys = self._keys.get(name)
        if keys is None:
            base = f"{self._prefix}:{{cb:{name}}}:"  # one hash tag per circuit: see the module's docstring
            keys = tuple(base + part for part in ("open", "isolated", "tripped", "probe", "win", "budget"))
            self._keys[name] = keys
        return keys

    def _spec(self, name: str) -> BreakerSpec:
        return self._specs.get(name) or BreakerSpec()

    # --- BreakerStore -----------------------------------------------------------------------------------

    def register(
        self, name: str, spec: BreakerSpec, notify: Callable[[str, str], None] | None = None
    ) -> None:
        self._specs[name] = spec
        self._generation += 1
        if notify is not None:
            self._notify[name] = notify
        self._local.register(name, spec)

    def acquire(self, name: str, *, retry: bool, budget: BudgetSpec | None) -> Admission:
        return self._admit(name, retry, budget, True)

    def charge_budget(self, name: str, spec: BudgetSpec, *, retry: bool) -> bool:
        return self._admit(name, retry, spec, False).code in (ADMIT, PROBE)

    def _admit(self, name: str, retry: bool, budget: BudgetSpec | None, check_breaker: bool) -> Admission:
        if self._degraded and self._use_local():
            return self._admit_locally(name, retry=retry, budget=budget, check_breaker=check_breaker)
        state = self._per_thread
        if state.generation != self._generation:
            state.commands = {}
            state.generation = self._generation
        key = (name, retry, budget, check_breaker)
        command = state.commands.get(key)
        if command is None:
            command = state.commands[key] = self._admission_command(name, retry, budget, check_breaker, state)
        try:
            reply = self._call(state, _ACQUIRE_SCRIPT, command)
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return self._admit_locally(name, retry=retry, budget=budget, check_breaker=check_breaker)
        if self._degraded:
            self._recovered()
        if reply.__class__ is int:  # the script's short answer: a code without break end or transition
            if reply == 0:
                if self._seen:
                    self._seen.pop(name, None)
                return _ADMITTED
            self._saw(name, reply, None)
            return _CODES[reply]
        code, break_until, transition = int(reply[0]), int(reply[1]), reply[2]
        until = break_until / 1000.0 if break_until else None
        self._saw(name, code, until)
        probe = None
        if code == PROBE:
            probe = reply[3].decode() if isinstance(reply[3], bytes) else str(reply[3])
        return Admission(code, until, (OPEN, HALF_OPEN) if transition else None, probe)

    def _saw(self, name: str, code: int, until: float | None) -> None:
        """Remember what an admission showed of the shared state (see `_seen`)."""
        if code == REJECT_ISOLATED:
            self._seen[name] = (ISOLATED, None)
        elif code in (REJECT_OPEN, REJECT_HALF_OPEN):  # half-open: the probe's end counts as the break's
            self._seen[name] = (OPEN, until)
        elif code in (ADMIT, PROBE):
            self._seen.pop(name, None)

    def _admission_command(
        self, name: str, retry: bool, budget: BudgetSpec | None, check_breaker: bool, state: _ThreadState
    ) -> list[bytes]:
        open_, isolated, tripped, probe, _, budget_key = self._keys_of(name)
        if budget is None:
            budget_args = ["0", "0", "0", "0"]
        else:
            budget_args = ["1", repr(budget.ratio), repr(budget.min_per_second), str(int(budget.window * 1000))]
        probe_ttl = max(1, int(self._spec(name).probe_timeout * 1000))
        return _ACQUIRE_SCRIPT.command(
            [open_, isolated, tripped, probe, budget_key],
            [_FLAG[check_breaker], _FLAG[retry], *budget_args, str(probe_ttl), state.caller])

    def _admit_locally(
        self, name: str, *, retry: bool, budget: BudgetSpec | None, check_breaker: bool
    ) -> Admission:
        if check_breaker:
            return self._local.acquire(name, retry=retry, budget=budget)
        ok = budget is None or self._local.charge_budget(name, budget, retry=retry)
        return _ADMITTED if ok else _NO_BUDGET

    def record(self, name: str, *, success: bool, probe: str | None) -> Transition | None:
        if self._degraded and self._use_local():
            return self._local.record(name, success=success, probe=probe)
        if probe is not None:
            return self._record_probe(name, success, probe)
        if not self._pid:
            self._start_flusher()
        with self._pending_lock:
            counts = self._pending.get(name)
            if counts is None:
                counts = self._pending[name] = [0, 0]
            counts[0 if success else 1] += 1
        return None

    def _record_probe(self, name: str, success: bool, token: str) -> Transition | None:
        open_, isolated, tripped, probe, win, _ = self._keys_of(name)
        break_ms = int(self._spec(name).break_duration * 1000)
        try:
            code = self._eval(_PROBE_SCRIPT, [open_, isolated, tripped, probe, win],
                              [_FLAG[success], token, str(break_ms)])
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return self._local.record(name, success=success, probe=token)
        self._recovered()
        return _TRANSITION_CODES.get(int(code))

    def release_probe(self, name: str, probe: str) -> None:
        try:
            self._eval(_RELEASE_SCRIPT, [self._keys_of(name)[3]], [probe])
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            self._local.release_probe(name, probe)

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
            state, break_until, total, failed = self._eval(
                _ADMIN_SCRIPT, [open_, isolated, tripped, probe, win], [action, str(sampling_ms)])
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        self._recovered()
        state = state.decode() if isinstance(state, bytes) else str(state)
        total, failed = int(total), int(failed)
        until = int(break_until) / 1000.0 if state == OPEN and int(break_until) else None
        # What the action left (isolate and reset answer with the state before them), for `_seen`.
        after = ISOLATED if action == "isolate" else CLOSED if action == "reset" else state
        if after == CLOSED:
            self._seen.pop(name, None)
        elif after == ISOLATED or until is not None:
            self._seen[name] = (after, until)
        return CircuitSnapshot(
            name=name,
            state=state,
            failure_ratio=failed / total if total else 0.0,
            throughput=total,
            break_until=until,
        )

    # --- batched outcomes ---------------------------------------------------------------------------------

    def _start_flusher(self) -> None:
        if self._closed:
            return
        with self._pending_lock:
            if self._pid:
                return
            # First use in this process, or a forked child: the parent's thread did not survive the fork.
            self._pid = pid = os.getpid()
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
            opened = self._eval(
                _FLUSH_SCRIPT, [open_, isolated, tripped, win],
                [str(successes), str(failures), repr(spec.failure_ratio), str(spec.minimum_throughput),
                 str(int(spec.sampling_duration * 1000)), str(int(spec.break_duration * 1000))])
            self._recovered()
            transition = _OPENED if int(opened) == 1 else None
        except _REDIS_ERRORS as exc:
            self._failed(exc)
            # Keep the evidence: the local window decides while Redis is away.
            for success, count in ((True, successes), (False, failures)):
                for _ in range(count):
                    transition = self._local.record(name, success=success, probe=None) or transition
        notify = self._notify.get(name)
        if transition is not None and notify is not None:
            notify(*transition)

    def close(self) -> None:
        """Flush what is pending, stop the flusher thread and close the connections."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._wake.set()
            with self._connections_lock:
                connections = list(self._connections)
            for connection in connections:
                connection.disconnect()


# Locks held by another thread at fork time stay locked forever in the child; give each child fresh ones,
# its own connections (a socket shared with the parent would interleave replies) and its own flusher.
_stores_to_reset_after_fork: weakref.WeakSet[RedisBreakerStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_stores_to_reset_after_fork):
        store._pending_lock = threading.Lock()
        store._wake = threading.Event()
        store._pending = {}
        store._pid = 0
        store._connections_lock = threading.Lock()
        store._connections = weakref.WeakSet()
        store._per_thread = _ThreadState()


on_fork(after_in_child=_after_fork_in_child)
