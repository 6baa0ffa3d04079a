"""Toxiproxy's HTTP control API: routes, bodies, status codes and error messages.

Every request is decoded on the HTTP thread and then handled as one coroutine on the event loop, so the
proxies are only ever touched from the loop thread.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from chaosproxy import errors
from chaosproxy.errors import ApiError
from chaosproxy.model import bool_field, decode_body, parse_new_toxic, parse_toxic_update, string_field
from chaosproxy.proxy import ProxyCollection

# The Toxiproxy release whose API this proxy speaks; the suffix says it is not Toxiproxy itself.
VERSION = "2.12.0-chaosproxy"
DEFAULT_LISTEN = "127.0.0.1:0"
_REQUEST_TIMEOUT = 25.0  # Toxiproxy's own handler timeout


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"


def _json(status: int, payload: Any) -> Response:
    return Response(status, json.dumps(payload).encode())


def _error(error: ApiError) -> Response:
    return Response(error.status, json.dumps(error.as_json()).encode() + b"\n")


Handler = Callable[..., Awaitable[Response]]
_ROUTES: list[tuple[re.Pattern[str], dict[str, str]]] = [
    (re.compile(r"/reset"), {"POST": "reset"}),
    (re.compile(r"/proxies"), {"GET": "proxy_index", "POST": "proxy_create"}),
    (re.compile(r"/populate"), {"POST": "populate"}),
    (re.compile(r"/proxies/([^/]+)"),
     {"GET": "proxy_show", "POST": "proxy_update", "PATCH": "proxy_update", "DELETE": "proxy_delete"}),
    (re.compile(r"/proxies/([^/]+)/toxics"), {"GET": "toxic_index", "POST": "toxic_create"}),
    (re.compile(r"/proxies/([^/]+)/toxics/([^/]+)"),
     {"GET": "toxic_show", "POST": "toxic_update", "PATCH": "toxic_update", "DELETE": "toxic_delete"}),
    (re.compile(r"/version"), {"GET": "version"}),
]


class ControlApi:
    """Maps requests onto a ``ProxyCollection`` that lives on ``loop``."""

    def __init__(self, collection: ProxyCollection, loop: asyncio.AbstractEventLoop) -> None:
        self.collection = collection
        self.loop = loop

    def handle(self, method: str, target: str, body: bytes, *, user_agent: str = "") -> Response:
        """Answer one request; called from any thread except the loop's."""
        if user_agent.startswith("Mozilla/"):
            # Toxiproxy refuses browsers so a web page cannot drive it (CSRF).
            return Response(403, b"User agent not allowed\n", "text/plain; charset=utf-8")
        path = unquote(urlsplit(target).path)
        for pattern, methods in _ROUTES:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            name = methods.get(method)
            if name is None:
                return Response(405, b"", "text/plain; charset=utf-8")
            handler: Handler = getattr(self, name)
            future = asyncio.run_coroutine_threadsafe(self._guard(handler, body, *match.groups()), self.loop)
            return future.result(timeout=_REQUEST_TIMEOUT)
        return Response(404, b"404 page not found\n", "text/plain; charset=utf-8")

    async def _guard(self, handler: Handler, body: bytes, *names: str) -> Response:
        try:
            return await handler(body, *names)
        except ApiError as error:
            return _error(error)

    # -- proxies -----------------------------------------------------------------------------------
    async def proxy_index(self, body: bytes) -> Response:
        return _json(200, {name: proxy.as_json() for name, proxy in self.collection.proxies.items()})

    async def proxy_create(self, body: bytes) -> Response:
        fields = _proxy_fields(decode_body(body, "toxiproxy.Proxy"), "Proxy")
        if not fields["name"]:
            raise errors.MISSING_FIELD.joined("name")
        if not fields["upstream"]:
            raise errors.MISSING_FIELD.joined("upstream")
        proxy = await self.collection.add(
            fields["name"], fields["listen"] or DEFAULT_LISTEN, fields["upstream"], enabled=fields["enabled"]
        )
        return _json(201, proxy.as_json())

    async def proxy_show(self, body: bytes, name: str) -> Response:
        return _json(200, self.collection.get(name).as_json())

    async def proxy_update(self, body: bytes, name: str) -> Response:
        proxy = self.collection.get(name)
        obj = decode_body(body, "toxiproxy.Proxy")
        listen = string_field(obj, "listen", "Proxy")
        upstream = string_field(obj, "upstream", "Proxy")
        enabled = bool_field(obj, "enabled", "Proxy")
        await proxy.update(
            listen=proxy.listen if listen is None else listen,
            upstream=proxy.upstream if upstream is None else upstream,
            enabled=proxy.enabled if enabled is None else enabled,
        )
        return _json(200, proxy.as_json())

    async def proxy_delete(self, body: bytes, name: str) -> Response:
        await self.collection.remove(name)
        return Response(204)

    async def populate(self, body: bytes) -> Response:
        items = decode_body(body, "[]struct { toxiproxy.Proxy; Enabled *bool }", want=list)
        entries = []
        for item in items:
            if not isinstance(item, dict):
                raise errors.BAD_REQUEST_BODY.joined(
                    "json: cannot unmarshal non-object into Go value of type struct { toxiproxy.Proxy }"
                )
            fields = _proxy_fields(item, "Proxy")
            fields["listen"] = fields["listen"] or DEFAULT_LISTEN
            entries.append(fields)
        try:
            proxies = await self.collection.populate(entries)
        except ApiError as error:
            # Toxiproxy answers the error and the (empty) proxy list together.
            return _json(error.status, {**error.as_json(), "proxies": None})
        return _json(201, {"proxies": [proxy.as_json() for proxy in proxies] or None})

    async def reset(self, body: bytes) -> Response:
        await self.collection.reset()
        return Response(204)

    async def version(self, body: bytes) -> Response:
        payload = json.dumps({"version": VERSION}).encode() + b"\n"
        return Response(200, payload, "application/json;charset=utf-8")

    # -- toxics ------------------------------------------------------------------------------------
    async def toxic_index(self, body: bytes, name: str) -> Response:
        proxy = self.collection.get(name)
        return _json(200, [toxic.as_json() for toxic in proxy.toxics_in_order()])

    async def toxic_create(self, body: bytes, name: str) -> Response:
        proxy = self.collection.get(name)
        toxic = parse_new_toxic(body)
        proxy.add_toxic(toxic)
        return _json(200, toxic.as_json())

    async def toxic_show(self, body: bytes, name: str, toxic_name: str) -> Response:
        return _json(200, self.collection.get(name).get_toxic(toxic_name).as_json())

    async def toxic_update(self, body: bytes, name: str, toxic_name: str) -> Response:
        proxy = self.collection.get(name)
        toxic = parse_toxic_update(proxy.get_toxic(toxic_name), body)
        proxy.update_toxic(toxic)
        return _json(200, toxic.as_json())

    async def toxic_delete(self, body: bytes, name: str, toxic_name: str) -> Response:
        self.collection.get(name).remove_toxic(toxic_name)
        return Response(204)


def _proxy_fields(obj: dict[str, Any], struct: str) -> dict[str, Any]:
    enabled = bool_field(obj, "enabled", struct)
    return {
        "name": string_field(obj, "name", struct) or "",
        "listen": string_field(obj, "listen", struct) or "",
        "upstream": string_field(obj, "upstream", struct) or "",
        "enabled": True if enabled is None else enabled,
    }
