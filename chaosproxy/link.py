"""One proxied TCP connection: two directions, each a chain of toxic stages ending at a socket.

With no toxic on a direction the event loop hands what it reads from the source socket straight to the
destination transport's ``write``: no Python frame, chunk object, queue or task in between, and the write
goes out at once rather than at the end of the loop iteration. That is the path the < 100 us budget is for.
Adding a toxic puts ``data_received`` back in between, so the toxic acts on the open connection at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import struct
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from chaosproxy.model import Toxic
from chaosproxy.pipe import Chunk, Outlet
from chaosproxy.toxics import Stage

if TYPE_CHECKING:
    from chaosproxy.proxy import Proxy

log = logging.getLogger("chaosproxy")

# Bytes a toxic chain may hold per direction before the proxy stops reading its source.
_HIGH_WATER = 1 << 20
_LOW_WATER = 1 << 18


class Endpoint(asyncio.Protocol):
    """One socket of a connection; what it reads feeds ``inbound``, ``outbound`` writes to it."""

    def __init__(self, connection: Connection, side: str) -> None:
        self.connection = connection
        self.side = side
        self.transport: asyncio.Transport | None = None
        self.inbound: Direction | None = None
        self.outbound: Direction | None = None
        self.early: list[bytes] = []  # read before the directions exist (some loops start reading at once)
        self.early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # TCP transports are full Transports (uvloop's do not subclass asyncio's, hence no isinstance).
        self.transport = tcp = cast(asyncio.Transport, transport)
        # Write at once (uvloop otherwise defers small writes to the end of the loop iteration) and say
        # "full" as soon as anything waits in user space: the kernel's socket buffers are the proxy's buffer.
        tcp.set_write_buffer_limits(high=0)
        self.connection.endpoint_made(self)

    def data_received(self, data: bytes) -> None:
        inbound = self.inbound
        if inbound is not None:
            inbound.feed(data)
        else:
            self.early.append(data)

    def read_into(self, write: Callable[[bytes], object] | None) -> None:
        """Hand what this socket reads straight to ``write``; None: to ``data_received`` again.

        The instance attribute shadows the method. The event loop looks ``data_received`` up when the
        protocol is set, so it is set again (a closing transport reads nothing more and is left alone).
        """
        if write is None:
            self.__dict__.pop("data_received", None)
        else:
            self.__dict__["data_received"] = write
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.set_protocol(self)

    def eof_received(self) -> bool:
        if self.inbound is not None:
            self.inbound.feed_eof()
        else:
            self.early_eof = True
        return True  # keep our write side open: the other direction may still be delivering

    def connection_lost(self, exc: Exception | None) -> None:
        if self.inbound is not None:
            self.inbound.feed_eof()
        else:
            self.early_eof = True
        self.connection.endpoint_lost(self)

    def pause_writing(self) -> None:
        if self.outbound is not None:
            self.outbound.dest_full(True)

    def resume_writing(self) -> None:
        if self.outbound is not None:
            self.outbound.dest_full(False)


class _Destination:
    """The end of a chain: writes chunks to the destination socket, closes it at end of stream."""

    def __init__(self, direction: Direction) -> None:
        self.direction = direction

    def put(self, chunk: Chunk) -> None:
        direction = self.direction
        direction.release(len(chunk.data))
        transport = direction.dest.transport
        if chunk.data and transport is not None and not transport.is_closing():
            transport.write(chunk.data)

    def close(self) -> None:
        self.direction.finish()


class Direction:
    """Bytes from ``source`` to ``dest`` through the toxics of one stream ("upstream" or "downstream")."""

    def __init__(
        self,
        connection: Connection,
        stream: str,
        source: Endpoint,
        dest: Endpoint,
        *,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.source = source
        self.dest = dest
        self.clock = clock
        self.rng = rng
        self.stages: list[Stage] = []
        self.sink = _Destination(self)
        self.head: Outlet = self.sink
        self.finished = False
        self._eof_fed = False
        self._inflight = 0
        self._dest_full = False
        self._over_budget = False
        self._reading_paused = False
        self._direct = False

    def reroute(self) -> None:
        """Relay straight from socket to socket while no toxic is on this direction and both are open.

        Called after anything that changes that: toxics added or removed, the end of the direction, the
        destination closing. The loop runs one callback at a time, so no read falls between two paths.
        """
        dest = self.dest.transport
        direct = not self.stages and not self.finished and dest is not None and not dest.is_closing()
        if direct == self._direct:
            return
        self._direct = direct
        self.source.read_into(dest.write if direct and dest is not None else None)

    # -- data in -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if not self.stages:
            transport = self.dest.transport
            if transport is not None and not transport.is_closing():
                transport.write(data)
            return
        self._inflight += len(data)
        self.head.put(Chunk(data, self.clock()))
        if self._inflight > _HIGH_WATER and not self._over_budget:
            self._over_budget = True
            self._update_reading()

    def feed_eof(self) -> None:
        if self._eof_fed:
            return
        self._eof_fed = True
        self.head.close()

    def release(self, nbytes: int) -> None:
        self._inflight -= nbytes
        if self._over_budget and self._inflight < _LOW_WATER:
            self._over_budget = False
            self._update_reading()

    def dest_full(self, full: bool) -> None:
        self._dest_full = full
        self._update_reading()

    def _update_reading(self) -> None:
        transport = self.source.transport
        if transport is None or transport.is_closing():
            return
        pause = self._dest_full or self._over_budget
        if pause and not self._reading_paused:
            transport.pause_reading()
        elif not pause and self._reading_paused:
            transport.resume_reading()
        self._reading_paused = pause

    # -- end of stream -----------------------------------------------------------------------------
    def finish(self) -> None:
        """The chain delivered its end of stream: close the destination, as Toxiproxy's link does."""
        if self.finished:
            return
        self.finished = True
        self.reroute()
        self.connection.close_endpoint(self.dest)

    # -- toxics added, updated, removed on a live connection ----------------------------------------
    def _new_stage(self, toxic: Toxic, outlet: Outlet) -> Stage:
        return Stage(toxic, outlet, release=self.release, clock=self.clock, rng=self.rng)

    def build(self, toxics: Iterable[Toxic]) -> None:
        for toxic in toxics:
            self._append(toxic)

    def add(self, toxic: Toxic) -> None:
        if self.finished or (self.stages and self.stages[-1].closed):
            return
        self._append(toxic)

    def _append(self, toxic: Toxic) -> None:
        stage = self._new_stage(toxic, self.sink)
        if self.stages:
            last = self.stages[-1]
            last.interrupt()
            last.outlet = stage.inlet
            last.start(roll=False)
        else:
            self.head = stage.inlet
            if self._eof_fed:
                stage.inlet.close()
        self.stages.append(stage)
        self.reroute()
        stage.start()

    def update(self, toxic: Toxic) -> None:
        stage = self._find(toxic.name)
        if stage is None or stage.closed or self.finished:
            return
        stage.interrupt()
        stage.toxic = toxic
        stage.start()

    def remove(self, toxic: Toxic) -> None:
        stage = self._find(toxic.name)
        if stage is None or stage.closed or self.finished:
            return
        index = self.stages.index(stage)
        stage.interrupt()
        if toxic.type == "timeout":
            # Toxiproxy's timeout toxic cleans up by closing its stream: removing it ends the connection.
            stage.close()
            return
        previous = self.stages[index - 1] if index > 0 else None
        if previous is not None:
            previous.interrupt()
        for chunk in stage.inlet.drain():
            stage.outlet.put(chunk)
        if previous is not None:
            previous.outlet = stage.outlet
        else:
            self.head = stage.outlet
        del self.stages[index]
        if stage.inlet.at_eof:
            stage.outlet.close()
        if previous is not None:
            previous.start(roll=False)
        self.reroute()

    def _find(self, name: str) -> Stage | None:
        for stage in self.stages:
            if stage.toxic.name == name:
                return stage
        return None

    def cancel(self) -> None:
        for stage in self.stages:
            stage.cancel()


class Connection:
    """A client connection and its upstream connection, joined by two directions."""

    def __init__(self, proxy: Proxy, *, rng: random.Random) -> None:
        self.proxy = proxy
        self.rng = rng
        self.client = Endpoint(self, "client")
        self.upstream: Endpoint | None = None
        self.directions: dict[str, Direction] = {}
        self.closed = False
        self._linger_zero = False
        self._connect_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def endpoint_made(self, endpoint: Endpoint) -> None:
        if endpoint is self.client:
            assert endpoint.transport is not None
            endpoint.transport.pause_reading()  # nothing to forward to until upstream answers
            self.proxy.connections.add(self)
            self._connect_task = asyncio.get_running_loop().create_task(self._connect())
        else:
            self._join(endpoint)

    async def _connect(self) -> None:
        host, port = self.proxy.upstream_address()
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: Endpoint(self, "upstream"), host, port)
        except (OSError, ValueError) as exc:
            log.info("proxy %s: upstream %s unreachable: %s", self.proxy.name, self.proxy.upstream, exc)
            self.abort()

    def _join(self, upstream: Endpoint) -> None:
        """Upstream connected: wire both directions with the proxy's toxics as they are now."""
        if self.closed:
            assert upstream.transport is not None
            upstream.transport.abort()
            return
        self.upstream = upstream
        loop = asyncio.get_running_loop()
        client = self.client
        for stream, source, dest in (("upstream", client, upstream), ("downstream", upstream, client)):
            direction = Direction(self, stream, source, dest, clock=loop.time, rng=self.rng)
            source.inbound = direction
            dest.outbound = direction
            self.directions[stream] = direction
        toxics = self.proxy.toxics_in_order()
        if any(toxic.type == "reset_peer" for toxic in toxics):
            self.set_linger_zero()
        for stream, direction in self.directions.items():
            direction.build(t for t in toxics if t.stream == stream)
        for endpoint in (client, upstream):
            early, endpoint.early = endpoint.early, []
            for data in early:
                self.directions_from(endpoint).feed(data)
            if endpoint.early_eof:
                self.directions_from(endpoint).feed_eof()
        for direction in self.directions.values():
            direction.reroute()
        if client.transport is not None and not client.transport.is_closing():
            client.transport.resume_reading()

    def directions_from(self, endpoint: Endpoint) -> Direction:
        return self.directions["upstream" if endpoint is self.client else "downstream"]

    def set_linger_zero(self) -> None:
        """Closing with SO_LINGER 0 sends RST instead of FIN (what reset_peer needs), as Toxiproxy does."""
        self._linger_zero = True
        for endpoint in (self.client, self.upstream):
            sock = _socket_of(endpoint)
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def close_endpoint(self, endpoint: Endpoint) -> None:
        """Close one socket (its writes flushed first) and end the direction that was reading from it."""
        transport = endpoint.transport
        if transport is not None and not transport.is_closing():
            if self._linger_zero:
                transport.abort()
            else:
                transport.close()
        if endpoint.outbound is not None:
            endpoint.outbound.reroute()
        if endpoint.inbound is not None:
            endpoint.inbound.feed_eof()
        self._check_done()

    def endpoint_lost(self, endpoint: Endpoint) -> None:
        if endpoint.outbound is not None:
            endpoint.outbound.reroute()
        if endpoint is self.client and self.upstream is None:
            self.abort()
        self._check_done()

    def _check_done(self) -> None:
        if self.closed:
            return
        if self.directions and all(d.finished for d in self.directions.values()):
            self._forget()

    def _forget(self) -> None:
        self.closed = True
        for direction in self.directions.values():
            direction.cancel()
        self.proxy.connections.discard(self)

    def abort(self) -> None:
        """Drop both sockets now (proxy disabled, deleted or upstream unreachable)."""
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        for endpoint in (self.client, self.upstream):
            if endpoint is not None and endpoint.transport is not None:
                endpoint.transport.abort()
        for direction in self.directions.values():
            direction.finished = True
        if not self.closed:
            self._forget()

    # -- toxics changing while the connection is open -----------------------------------------------
    def toxic_added(self, toxic: Toxic) -> None:
        direction = self.directions.get(toxic.stream)
        if direction is None:
            return
        if toxic.type == "reset_peer":
            self.set_linger_zero()
        direction.add(toxic)

    def toxic_updated(self, toxic: Toxic) -> None:
        direction = self.directions.get(toxic.stream)
        if direction is not None:
            direction.update(toxic)

    def toxic_removed(self, toxic: Toxic) -> None:
        direction = self.directions.get(toxic.stream)
        if direction is not None:
            direction.remove(toxic)


def _socket_of(endpoint: Endpoint | None) -> socket.socket | None:
    if endpoint is None or endpoint.transport is None:
        return None
    sock = endpoint.transport.get_extra_info("socket")
    return sock if sock is not None else None
