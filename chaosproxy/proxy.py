"""Proxies and the collection of them; every method runs on the event loop thread."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from typing import Any

from chaosproxy import errors
from chaosproxy.link import Connection
from chaosproxy.model import STREAMS, Toxic

log = logging.getLogger("chaosproxy")


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` as Go's ``net.SplitHostPort`` reads them."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"address {address}: missing port in address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        number = int(port) if port else 0
    except ValueError:
        raise ValueError(f"address {address}: invalid port") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"address {address}: invalid port")
    return host, number


def _join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve_listen(address: str) -> str:
    """The address a listen string binds to, as Toxiproxy compares them (``localhost`` -> ``127.0.0.1``)."""
    host, port = split_host_port(address)
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return _join_host_port(str(sockaddr[0]), int(sockaddr[1]))


class Proxy:
    """A listener forwarding each accepted connection to ``upstream`` through the proxy's toxics."""

    def __init__(self, name: str, listen: str, upstream: str, *, rng: random.Random) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.connections: set[Connection] = set()
        self._rng = rng
        self._server: asyncio.base_events.Server | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [toxic.as_json() for toxic in self.toxics_in_order()],
        }

    def toxics_in_order(self) -> list[Toxic]:
        """Upstream toxics first, then downstream, each in the order added (Toxiproxy's listing)."""
        return [t for stream in STREAMS for t in self.toxics.values() if t.stream == stream]

    def upstream_address(self) -> tuple[str, int]:
        return split_host_port(self.upstream)

    # -- listening ---------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.enabled:
            return
        try:
            host, port = split_host_port(self.listen)
            infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (ValueError, OSError) as exc:
            raise errors.internal(f"listen tcp {self.listen}: {exc}") from None
        family, kind, proto, _, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
            raise errors.internal(f"listen tcp {self.listen}: bind: {reason}") from None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, sock=sock, backlog=512)
        bound = sock.getsockname()
        self.listen = _join_host_port(str(bound[0]), int(bound[1]))
        self.enabled = True
        log.info("proxy %s listening on %s, upstream %s", self.name, self.listen, self.upstream)

    def _accept(self) -> asyncio.Protocol:
        return Connection(self, rng=self._rng).client

    async def stop(self) -> None:
        """Stop listening and drop every open connection (``enabled: false``)."""
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for connection in list(self.connections):
            connection.abort()
        if server is not None:
            await server.wait_closed()
        log.info("proxy %s stopped", self.name)

    async def update(self, *, listen: str, upstream: str, enabled: bool) -> None:
        """Toxiproxy's ``Proxy.Update``: a new address restarts the listener; ``enabled`` starts or stops."""
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen = listen
            self.upstream = upstream
        if enabled != self.enabled:
            if enabled:
                await self.start()
            else:
                await self.stop()

    # -- toxics ------------------------------------------------------------------------------------
    def add_toxic(self, toxic: Toxic) -> None:
        if toxic.name in self.toxics:
            raise errors.TOXIC_ALREADY_EXISTS
        self.toxics[toxic.name] = toxic
        for connection in list(self.connections):
            connection.toxic_added(toxic)

    def get_toxic(self, name: str) -> Toxic:
        toxic = self.toxics.get(name)
        if toxic is None:
            raise errors.TOXIC_NOT_FOUND
        return toxic

    def update_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.name] = toxic
        for connection in list(self.connections):
            connection.toxic_updated(toxic)

    def remove_toxic(self, name: str) -> None:
        toxic = self.get_toxic(name)
        del self.toxics[name]
        for connection in list(self.connections):
            connection.toxic_removed(toxic)

    def remove_all_toxics(self) -> None:
        for toxic in self.toxics_in_order():
            self.remove_toxic(toxic.name)


class ProxyCollection:
    """The proxies by name, guarding names as Toxiproxy's ``ProxyCollection`` does."""

    def __init__(self, *, rng: random.Random | None = None) -> None:
        self.proxies: dict[str, Proxy] = {}
        self._rng = rng or random.Random()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise errors.PROXY_NOT_FOUND
        return proxy

    async def add(self, name: str, listen: str, upstream: str, *, enabled: bool) -> Proxy:
        if name in self.proxies:
            raise errors.PROXY_ALREADY_EXISTS
        proxy = Proxy(name, listen, upstream, rng=self._rng)
        if enabled:
            await proxy.start()
        self.proxies[name] = proxy
        return proxy

    async def remove(self, name: str) -> None:
        proxy = self.get(name)
        await proxy.stop()
        del self.proxies[name]

    async def populate(self, entries: list[dict[str, Any]]) -> list[Proxy]:
        """Create missing proxies, replace those whose listen or upstream differ, leave the rest alone.

        Every entry is checked before anything changes, as Toxiproxy's ``PopulateJson`` does.
        """
        seen: set[str] = set()
        for index, entry in enumerate(entries, start=1):
            if not entry["name"]:
                raise errors.MISSING_FIELD.joined(f"name at proxy {index}")
            if not entry["upstream"]:
                raise errors.MISSING_FIELD.joined(f"upstream at proxy {index}")
            if entry["name"] in seen:
                raise errors.internal(f'duplicate proxy name "{entry["name"]}"')
            seen.add(entry["name"])
        result: list[Proxy] = []
        for entry in entries:
            existing = self.proxies.get(entry["name"])
            if existing is not None:
                if not _differs(existing, entry["listen"], entry["upstream"]):
                    result.append(existing)
                    continue
                await existing.stop()
                del self.proxies[existing.name]
            proxy = Proxy(entry["name"], entry["listen"], entry["upstream"], rng=self._rng)
            if entry["enabled"]:
                await proxy.start()
            self.proxies[proxy.name] = proxy
            result.append(proxy)
        return result

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic (``POST /reset``)."""
        for proxy in list(self.proxies.values()):
            await proxy.start()
            proxy.remove_all_toxics()

    async def close(self) -> None:
        for proxy in list(self.proxies.values()):
            await proxy.stop()


def _differs(existing: Proxy, listen: str, upstream: str) -> bool:
    try:
        resolved = resolve_listen(listen)
    except (ValueError, OSError):
        return True
    return resolved != existing.listen or upstream != existing.upstream

