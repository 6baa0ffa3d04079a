"""RedisBreakerStore against a real Redis, shared by real processes."""

from __future__ import annotations

import multiprocessing
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.adapters.redis_breaker_store import RedisBreakerStore, _Script
from app.resilience import Attempt, CircuitBreaker, RecordingHook, ResiliencePipeline, RetryBudget, RetryPolicy
from app.resilience.circuit_breaker import ADMIT, PROBE, BrokenCircuitError
from app.resilience.events import BreakerTransition

from . import _shared_workers as workers

SPAWN = multiprocessing.get_context("spawn")
# Breaks, probe timeouts and windows of the timing tests: far longer than a loaded machine's pauses between
# two statements, which must fall inside them.
BREAK = 1.0
WINDOW = 0.5


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> Iterator[RedisBreakerStore]:
    shared = RedisBreakerStore(redis_client, key_prefix=key_prefix)
    yield shared
    shared.close()


def make_breaker(store: RedisBreakerStore, hook: RecordingHook | None = None, **overrides: float) -> CircuitBreaker:
    return CircuitBreaker("payment", store=store, hooks=[hook] if hook else [],
                          **{**workers.SPEC, **overrides})  # type: ignore[arg-type]


def run(target: object, *args: object) -> None:
    process = SPAWN.Process(target=target, args=args)
    process.start()
    process.join(timeout=20)
    assert process.exitcode == 0


def wait_for(predicate: object, timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_failures_in_two_processes_open_the_circuit_a_third_sees(redis_url: str, key_prefix: str) -> None:
    first = SPAWN.Process(target=workers.record_failures, args=(redis_url, key_prefix, 5))
    second = SPAWN.Process(target=workers.record_failures, args=(redis_url, key_prefix, 5))
    first.start()
    second.start()
    first.join(timeout=20)
    second.join(timeout=20)
    assert (first.exitcode, second.exitcode) == (0, 0)
    results = SPAWN.Queue()
    run(workers.try_call, redis_url, key_prefix, results)
    assert results.get(timeout=5) == "open"


def test_isolation_in_one_process_is_seen_by_another(redis_url: str, key_prefix: str, store: RedisBreakerStore) -> None:
    breaker = make_breaker(store)
    assert breaker.acquire().code == ADMIT
    run(workers.isolate, redis_url, key_prefix)
    with pytest.raises(BrokenCircuitError) as caught:
        breaker.acquire()
    assert caught.value.state == "isolated"
    assert breaker.snapshot().state == "isolated"
    breaker.reset()
    results = SPAWN.Queue()
    run(workers.try_call, redis_url, key_prefix, results)
    assert results.get(timeout=5) == "admitted"


def test_exactly_one_half_open_probe_across_processes(
    redis_url: str, key_prefix: str, store: RedisBreakerStore
) -> None:
    breaker = make_breaker(store, break_duration=0.3)
    for _ in range(10):
        breaker.record(False)
    store.flush()
    assert breaker.state == "open"
    go = SPAWN.Event()
    ready, results = SPAWN.Queue(), SPAWN.Queue()
    racers = [SPAWN.Process(target=workers.race_for_probe, args=(redis_url, key_prefix, ready, go, results))
              for _ in range(4)]
    for racer in racers:
        racer.start()
    for _ in racers:  # each has imported and connected: they race at once
        ready.get(timeout=30)
    assert wait_for(lambda: breaker.state == "half_open", timeout=5)
    go.set()
    answers = [results.get(timeout=20) for _ in racers]
    for racer in racers:
        racer.join(timeout=20)
    assert sorted(answers, key=str) == sorted([PROBE, "half_open", "half_open", "half_open"], key=str)


def test_flusher_thread_sends_outcomes_without_being_asked(store: RedisBreakerStore) -> None:
    hook = RecordingHook()
    breaker = make_breaker(store, hook)
    for _ in range(10):
        breaker.acquire()
        breaker.record(False)
    assert wait_for(lambda: breaker.state == "open")
    # the process whose flush opened the circuit reports it
    assert wait_for(lambda: hook.of_type(BreakerTransition) == [BreakerTransition("payment", "closed", "open")])


def test_threshold_and_minimum_throughput_are_evaluated_in_redis(store: RedisBreakerStore) -> None:
    breaker = make_breaker(store)
    for success in [True] * 5 + [False] * 4:
        breaker.record(success)
    store.flush()
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.throughput, snapshot.failure_ratio) == ("closed", 9, pytest.approx(4 / 9))
    breaker.record(False)  # 5 of 10: exactly the ratio
    store.flush()
    snapshot = breaker.snapshot()
    assert snapshot.state == "open"
    assert snapshot.break_until is not None and abs(snapshot.break_until - (time.time() + 30)) < 2


def test_probe_success_closes_and_failure_reopens(store: RedisBreakerStore) -> None:
    hook = RecordingHook()
    # Long enough that the state read right after the failed probe still falls inside the new break.
    breaker = make_breaker(store, hook, break_duration=BREAK)
    for _ in range(10):
        breaker.record(False)
    store.flush()
    assert wait_for(lambda: breaker.state == "half_open", timeout=BREAK + 5)
    admission = breaker.acquire()
    assert admission.code == PROBE
    breaker.record(False, probe=admission.probe)
    assert breaker.state == "open"
    assert wait_for(lambda: breaker.state == "half_open", timeout=BREAK + 5)
    admission = breaker.acquire()
    assert admission.code == PROBE
    breaker.record(True, probe=admission.probe)
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.throughput) == ("closed", 0)
    assert [(e.from_state, e.to_state) for e in hook.of_type(BreakerTransition)] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
        ("half_open", "closed")]


def test_a_lost_probe_frees_itself(store: RedisBreakerStore) -> None:
    # The probe's timeout long enough that the second admission right after it still finds it held.
    breaker = make_breaker(store, break_duration=0.05, probe_timeout=BREAK)
    for _ in range(10):
        breaker.record(False)
    store.flush()
    assert wait_for(lambda: breaker.state == "half_open", timeout=5)
    assert breaker.acquire().code == PROBE
    with pytest.raises(BrokenCircuitError) as held:
        breaker.acquire()
    assert held.value.state == "half_open"

    def probe_admitted() -> bool:
        try:
            return breaker.acquire().code == PROBE
        except BrokenCircuitError:
            return False

    assert wait_for(probe_admitted, timeout=BREAK + 5)


def test_the_budget_is_shared_through_redis(redis_client: redis.Redis, key_prefix: str) -> None:
    first = RedisBreakerStore(redis_client, key_prefix=key_prefix)
    second = RedisBreakerStore(redis.Redis(connection_pool=redis_client.connection_pool), key_prefix=key_prefix)
    budget_a = RetryBudget(ratio=0.5, min_per_second=0.0, name="payment", store=first)
    budget_b = RetryBudget(ratio=0.5, min_per_second=0.0, name="payment", store=second)
    budget_a.record_call()
    budget_a.record_call()
    assert budget_b.try_spend()
    assert not budget_a.try_spend()


def test_a_pipeline_over_the_shared_store_charges_the_budget_in_the_admission(store: RedisBreakerStore) -> None:
    breaker = make_breaker(store)
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, name="payment", store=store)
    pipeline = ResiliencePipeline("payment", breaker=breaker, budget=budget,
                                  retry=RetryPolicy(max_retries=3, base_delay=0.0), sleep=lambda s: None)
    answers = iter([ConnectionError(), "ok"])

    def call(attempt: Attempt) -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(ConnectionError):  # one call earns half a retry: none
        pipeline.execute(call)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_redis_falls_back_to_a_local_window_without_blocking(key_prefix: str) -> None:
    client = redis.Redis(host="127.0.0.1", port=closed_port(), socket_timeout=0.05, socket_connect_timeout=0.05)
    store = RedisBreakerStore(client, key_prefix=key_prefix, flush_interval=0.01)
    breaker = make_breaker(store)
    pipeline = ResiliencePipeline("payment", breaker=breaker)
    started = time.monotonic()
    assert pipeline.execute(lambda attempt: "ok") == "ok"
    assert store.degraded and breaker.degraded
    for _ in range(9):  # with the success: 9 failures of 10 calls
        with pytest.raises(ConnectionError):
            pipeline.execute(lambda attempt: (_ for _ in ()).throw(ConnectionError()))
    with pytest.raises(BrokenCircuitError):  # the local window opened the circuit
        pipeline.execute(lambda attempt: "ok")
    assert time.monotonic() - started < 2.0
    assert breaker.snapshot().state == "open"
    store.close()


def test_after_a_fork_the_child_flushes_through_its_own_thread(
    redis_url: str, key_prefix: str, store: RedisBreakerStore
) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    breaker = make_breaker(store)
    breaker.record(True)  # the parent's flusher is running now
    store.flush()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: record, never flush by hand, stay until the parent saw the flush (or 20 s)
        try:
            os.close(done_w)
            for _ in range(3):
                breaker.record(False)
            select.select([done_r], [], [], 20)
        finally:
            os._exit(0)
    os.close(done_r)
    try:
        assert wait_for(lambda: breaker.snapshot().throughput == 4, timeout=10)
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)


def test_budget_and_window_hashes_forget_buckets_that_left_the_window(
    redis_client: redis.Redis, key_prefix: str, store: RedisBreakerStore
) -> None:
    # A window long enough that the reads right after the loop still find its last calls inside it.
    breaker = make_breaker(store, sampling_duration=WINDOW)
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=WINDOW, name="payment", store=store)
    deadline = time.monotonic() + 2 * WINDOW  # 20 buckets go by
    while time.monotonic() < deadline:
        budget.record_call()
        breaker.record(True)
        store.flush()
        time.sleep(0.002)
    base = f"{key_prefix}:{{cb:payment}}:"
    # one field per live bucket (10), and a few more at most while a bucket starts
    assert redis_client.hlen(base + "budget") <= 12
    assert redis_client.hlen(base + "win") <= 12
    assert breaker.snapshot().throughput > 0
    assert budget.try_spend()  # the calls of the last window earn retries
    time.sleep(WINDOW * 1.25)
    assert not budget.try_spend()  # and no longer once they left the window
    assert breaker.snapshot().throughput == 0


def test_a_script_missing_from_redis_is_loaded_and_the_command_sent_again(
    key_prefix: str, store: RedisBreakerStore
) -> None:
    unknown = _Script(f"return '{key_prefix}'")  # a script this server has never seen
    assert store._eval(unknown, [], []) == key_prefix.encode()
    assert not store.degraded


def test_a_connection_the_server_closed_is_replaced_without_deciding_locally(
    redis_client: redis.Redis, store: RedisBreakerStore
) -> None:
    breaker = make_breaker(store)
    assert breaker.acquire().code == ADMIT
    connection = store._per_thread.connection
    assert connection is not None
    connection.send_command("CLIENT", "ID")
    redis_client.client_kill_filter(_id=connection.read_response())
    assert breaker.acquire().code == ADMIT
    assert not store.degraded


def test_each_thread_talks_on_its_own_connection_which_ends_with_the_thread(
    redis_url: str, key_prefix: str
) -> None:
    name = "t" + key_prefix.replace(":", "-")

    def ours() -> int:
        return sum(1 for client in redis.Redis.from_url(redis_url).client_list() if client["name"] == name)

    store = RedisBreakerStore(redis.Redis.from_url(redis_url, client_name=name), key_prefix=key_prefix)
    breaker = make_breaker(store)
    go, done = threading.Barrier(4), threading.Event()
    answers: list[int] = []

    def admit_many() -> None:
        go.wait()
        answers.extend(breaker.acquire().code for _ in range(300))
        done.wait(10)

    threads = [threading.Thread(target=admit_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert wait_for(lambda: len(answers) == 1200, timeout=20)
    assert set(answers) == {ADMIT} and not store.degraded
    assert ours() == 4
    done.set()
    for thread in threads:
        thread.join()
    assert wait_for(lambda: ours() == 0, timeout=5)
    store.close()


def test_a_decoding_client_gives_the_same_answers(redis_url: str, key_prefix: str) -> None:
    store = RedisBreakerStore(redis.Redis.from_url(redis_url, decode_responses=True), key_prefix=key_prefix)
    breaker = make_breaker(store)
    for _ in range(10):
        breaker.record(False)
    store.flush()
    with pytest.raises(BrokenCircuitError) as caught:
        breaker.acquire()
    assert caught.value.state == "open"
    assert caught.value.break_until is not None and abs(caught.value.break_until - (time.time() + 30)) < 2
    assert breaker.snapshot().state == "open"
    breaker.reset()
    store.close()


def test_a_forked_child_admits_on_its_own_connection_while_the_parent_does(
    store: RedisBreakerStore,
) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    breaker = make_breaker(store)
    assert breaker.acquire().code == ADMIT  # the parent's connection exists before the fork
    pid = os.fork()
    if pid == 0:  # the child: a reply read off the parent's socket would be wrong or missing
        code = 1
        try:
            answers = {breaker.acquire().code for _ in range(500)}
            code = 0 if answers == {ADMIT} and not store.degraded else 1
        finally:
            os._exit(code)
    answers = {breaker.acquire().code for _ in range(500)}
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert answers == {ADMIT} and not store.degraded


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A Redis of this test alone, which the test may stop."""
    from tests.conftest import _embedded_redis

    proc, url = _embedded_redis(tmp_path)
    try:
        yield proc, url
    finally:
        proc.kill()
        proc.wait(timeout=5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait(timeout=5)


def _short_timeouts(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=0.05, socket_connect_timeout=0.05)


@pytest.mark.parametrize("kept", ["isolated", "open"])
def test_a_circuit_isolated_or_open_fleet_wide_stays_so_while_redis_is_unreachable(
    private_redis: tuple[subprocess.Popen[bytes], str], key_prefix: str, kept: str
) -> None:
    proc, url = private_redis
    store = RedisBreakerStore(_short_timeouts(url), key_prefix=key_prefix, retry_interval=60.0)
    breaker = make_breaker(store, break_duration=30.0)
    if kept == "isolated":
        breaker.isolate()
    else:
        for _ in range(10):
            breaker.record(False)
        store.flush()
    with pytest.raises(BrokenCircuitError):  # seen through Redis
        breaker.acquire()
    _stop(proc)
    started = time.monotonic()
    with pytest.raises(BrokenCircuitError):  # Redis gone: this process decides, from what it last saw
        breaker.acquire()
    assert store.degraded and time.monotonic() - started < 1.0
    snapshot = breaker.snapshot()
    assert snapshot.state == kept
    if kept == "open":
        assert snapshot.break_until is not None and snapshot.break_until > time.time() + 25
    store.close()


def test_a_closed_circuit_starts_closed_locally_when_redis_becomes_unreachable(
    private_redis: tuple[subprocess.Popen[bytes], str], key_prefix: str
) -> None:
    proc, url = private_redis
    store = RedisBreakerStore(_short_timeouts(url), key_prefix=key_prefix, retry_interval=60.0)
    breaker = make_breaker(store)
    breaker.isolate()
    with pytest.raises(BrokenCircuitError):
        breaker.acquire()
    breaker.reset()
    assert breaker.acquire().code == ADMIT
    _stop(proc)
    assert breaker.acquire().code == ADMIT  # the reset was the last word: closed, not the isolation before it
    assert store.degraded and breaker.snapshot().state == "closed"
    store.close()
