"""What each toxic does to the bytes of one connection direction.

A ``Stage`` is one toxic on one connection: a pipe in, an outlet out, and a task running the toxic's
behaviour. As in Toxiproxy, whether a connection is affected (``toxicity``) is decided when the toxic
starts on that connection and again when it is updated. A stage can be *interrupted* (to rewire the
chain when a toxic is added, updated or removed): its task is cancelled and whatever data the
behaviour holds is passed on at once, so no byte is lost or reordered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from chaosproxy.model import Toxic
from chaosproxy.pipe import Chunk, Outlet, Pipe

log = logging.getLogger("chaosproxy")

Sleep = Callable[[float], Awaitable[None]]


def latency_delay(latency_ms: int, jitter_ms: int, rng: random.Random) -> float:
    """Seconds to hold a chunk: latency plus a uniform jitter in [-jitter, +jitter) as Toxiproxy draws it."""
    delay = latency_ms
    if jitter_ms > 0:
        delay += rng.randrange(jitter_ms * 2) - jitter_ms
    return delay / 1000.0


def slice_offsets(size: int, average: int, variation: int, rng: random.Random) -> list[tuple[int, int]]:
    """Cut ``size`` bytes into pieces of about ``average`` +/- ``variation`` bytes (Toxiproxy's halving)."""
    average = max(average, 1)
    variation = max(variation, 0)
    pieces: list[tuple[int, int]] = []
    pending = [(0, size)]
    while pending:
        start, end = pending.pop()
        if (end - start) - average <= variation or end - start < 2:
            pieces.append((start, end))
            continue
        offset = rng.randrange(variation * 2) - variation if variation else 0
        middle = min(max(start + (end - start) // 2 + offset, start + 1), end - 1)
        # Right half first on the stack so the left half comes out first.
        pending.append((middle, end))
        pending.append((start, middle))
    return pieces


class Stage:
    """One toxic applied to one direction of one connection."""

    def __init__(
        self,
        toxic: Toxic,
        outlet: Outlet,
        *,
        release: Callable[[int], None],
        clock: Callable[[], float],
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.toxic = toxic
        self.inlet = Pipe(release)
        self.outlet = outlet
        self.release = release
        self.clock = clock
        self.rng = rng
        self.sleep = sleep
        self.held: Chunk | None = None
        self.state: dict[str, Any] = {}
        self.closed = False
        self.active = False
        self._task: asyncio.Task[None] | None = None

    def start(self, *, roll: bool = True) -> None:
        if self.closed:
            return
        if roll:
            self.active = self.rng.random() < self.toxic.toxicity
        behaviour = BEHAVIOURS[self.toxic.type] if self.active else _noop
        self._task = asyncio.get_running_loop().create_task(_guarded(behaviour, self))

    def interrupt(self) -> None:
        """Stop the behaviour and pass on what it holds; the stage keeps its pipe and state."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        held, self.held = self.held, None
        if held is not None:
            self.outlet.put(held)

    def close(self) -> None:
        """End this stream here (Toxiproxy's ``stub.Close``): later data is dropped, the outlet sees EOF."""
        if self.closed:
            return
        self.closed = True
        self.held = None
        self.inlet.discard()
        self.outlet.close()

    def cancel(self) -> None:
        """Stop without passing anything on: the connection is gone."""
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def drop(self, chunk: Chunk) -> None:
        self.release(len(chunk.data))


async def _guarded(behaviour: Callable[[Stage], Awaitable[None]], stage: Stage) -> None:
    try:
        await behaviour(stage)
    except asyncio.CancelledError:
        raise
    except Exception:  # a toxic bug must end its connection, not the proxy
        log.exception("toxic %s failed; closing its stream", stage.toxic.name)
        stage.close()


async def _noop(stage: Stage) -> None:
    while True:
        chunk = await stage.inlet.get()
        if chunk is None:
            stage.close()
            return
        stage.outlet.put(chunk)


async def _latency(stage: Stage) -> None:
    latency, jitter = stage.toxic.attribute("latency"), stage.toxic.attribute("jitter")
    while True:
        chunk = await stage.inlet.get()
        if chunk is None:
            stage.close()
            return
        # Delay from arrival, not from when this toxic got to the chunk: chunks of one response overlap.
        wait = latency_delay(latency, jitter, stage.rng) - (stage.clock() - chunk.stamp)
        if wait > 0:
            stage.held = chunk
            await stage.sleep(wait)
            stage.held = None
        chunk.stamp += wait
        stage.outlet.put(chunk)


async def _bandwidth(stage: Stage) -> None:
    rate = stage.toxic.attribute("rate")  # KB/s, i.e. bytes per millisecond
    debt = 0.0
    while True:
        chunk = await stage.inlet.get()
        if chunk is None:
            stage.close()
            return
        if rate <= 0:
            stage.outlet.put(chunk)
            continue
        debt += len(chunk.data) / rate / 1000.0
        stage.held = chunk
        step = rate * 100
        # Large chunks go out in 100 ms slices so a slow rate still trickles.
        while len(chunk.data) > step:
            await stage.sleep(0.1)
            stage.outlet.put(Chunk(chunk.data[:step], chunk.stamp))
            chunk.data = chunk.data[step:]
            debt -= 0.1
        started = stage.clock()
        if debt > 0:
            await stage.sleep(debt)
        debt -= stage.clock() - started
        stage.held = None
        stage.outlet.put(chunk)


async def _slow_close(stage: Stage) -> None:
    while True:
        chunk = await stage.inlet.get()
        if chunk is not None:
            stage.outlet.put(chunk)
            continue
        deadline = stage.state.setdefault("close_at", stage.clock() + stage.toxic.attribute("delay") / 1000.0)
        remaining = deadline - stage.clock()
        if remaining > 0:
            await stage.sleep(remaining)
        stage.close()
        return


async def _timeout(stage: Stage) -> None:
    timeout_ms = stage.toxic.attribute("timeout")
    while True:
        # Toxiproxy re-arms the timer for every chunk it drops: the stream closes after that much silence.
        ready = await stage.inlet.wait(timeout_ms / 1000.0 if timeout_ms > 0 else None)
        if not ready:
            stage.close()
            return
        chunk = stage.inlet.take()
        if chunk is None:
            stage.close()
            return
        stage.drop(chunk)


async def _reset_peer(stage: Stage) -> None:
    if "reset_at" not in stage.state:
        chunk = await stage.inlet.get()
        if chunk is not None:
            stage.drop(chunk)
        stage.state["reset_at"] = stage.clock() + stage.toxic.attribute("timeout") / 1000.0
    remaining = stage.state["reset_at"] - stage.clock()
    if remaining > 0:
        await stage.sleep(remaining)
    # The link set SO_LINGER 0 on both sockets, so the close that follows is a TCP RST.
    stage.state["reset"] = True
    stage.close()


async def _slicer(stage: Stage) -> None:
    average, variation = stage.toxic.attribute("average_size"), stage.toxic.attribute("size_variation")
    pause = stage.toxic.attribute("delay") / 1_000_000.0
    while True:
        chunk = await stage.inlet.get()
        if chunk is None:
            stage.close()
            return
        data = chunk.data
        for start, end in slice_offsets(len(data), average, variation, stage.rng):
            stage.outlet.put(Chunk(data[start:end], chunk.stamp))
            rest = data[end:]
            stage.held = Chunk(rest, chunk.stamp) if rest else None
            await stage.sleep(pause)
        stage.held = None


async def _limit_data(stage: Stage) -> None:
    limit = stage.toxic.attribute("bytes")
    sent = stage.state.setdefault("sent", 0)
    while True:
        if limit - sent <= 0 and sent > 0:
            stage.close()
            return
        chunk = await stage.inlet.get()
        if chunk is None:
            stage.close()
            return
        allowed = max(limit - sent, 0)
        if allowed < len(chunk.data):
            stage.release(len(chunk.data) - allowed)
            chunk.data = chunk.data[:allowed]
        if chunk.data:
            stage.outlet.put(chunk)
            sent += len(chunk.data)
            stage.state["sent"] = sent
        if limit - sent <= 0:
            stage.close()
            return


BEHAVIOURS: dict[str, Callable[[Stage], Awaitable[None]]] = {
    "latency": _latency,
    "bandwidth": _bandwidth,
    "slow_close": _slow_close,
    "timeout": _timeout,
    "reset_peer": _reset_peer,
    "slicer": _slicer,
    "limit_data": _limit_data,
}
