"""Chunks and the FIFO between two toxics of one connection direction (Toxiproxy's channels)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Protocol


class Chunk:
    """Bytes read from a socket and the loop time they arrived; toxics delay relative to ``stamp``."""

    __slots__ = ("data", "stamp")

    def __init__(self, data: bytes, stamp: float) -> None:
        self.data = data
        self.stamp = stamp


class Outlet(Protocol):
    """Where a toxic sends what it lets through: the next toxic's pipe, or the destination socket."""

    def put(self, chunk: Chunk) -> None: ...

    def close(self) -> None: ...


class Pipe:
    """An unbounded FIFO with one reader; end of stream is sticky, like reading a closed Go channel.

    The byte budget of a direction is enforced where data enters, so the pipe itself needs no bound.
    ``discard`` makes every later put a drop, for a toxic that has closed its stream.
    """

    __slots__ = ("_items", "_eof", "_waiter", "_discarding", "_release")

    def __init__(self, release: Callable[[int], None]) -> None:
        self._items: deque[Chunk] = deque()
        self._eof = False
        self._waiter: asyncio.Future[bool] | None = None
        self._discarding = False
        self._release = release

    def put(self, chunk: Chunk) -> None:
        if self._discarding or self._eof:
            self._release(len(chunk.data))
            return
        self._items.append(chunk)
        self._wake(True)

    def close(self) -> None:
        self._eof = True
        self._wake(True)

    @property
    def at_eof(self) -> bool:
        return self._eof

    def discard(self) -> None:
        """Drop what is queued and everything put later (the reading toxic closed its stream)."""
        self._discarding = True
        while self._items:
            self._release(len(self._items.popleft().data))

    def drain(self) -> list[Chunk]:
        items = list(self._items)
        self._items.clear()
        return items

    def take(self) -> Chunk | None:
        """The oldest chunk, or None at end of stream; call only after ``wait`` said True."""
        return self._items.popleft() if self._items else None

    async def get(self) -> Chunk | None:
        await self.wait()
        return self.take()

    async def wait(self, timeout: float | None = None) -> bool:
        """True once a chunk or the end of stream is there; False when ``timeout`` seconds passed first.

        Only a future is awaited, never the queue itself, so a cancelled reader loses no chunk.
        """
        if self._items or self._eof:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiter = waiter
        timer = loop.call_later(timeout, _resolve, waiter, False) if timeout is not None else None
        try:
            return await waiter
        finally:
            if timer is not None:
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def _wake(self, value: bool) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            _resolve(waiter, value)


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
