"""Requests, responses and the small route table shared by the three simulators."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from email.message import Message


class HttpError(Exception):
    """A client error a handler raises; the router turns it into a JSON answer."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def to_response(self) -> Response:
        body: dict[str, object] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return Response(self.status, body)


@dataclass(frozen=True)
class Response:
    status: int
    body: object
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    headers: Message
    body: bytes
    params: tuple[str, ...] = ()

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def json_object(self) -> dict[str, object]:
        if not self.body.strip():
            raise HttpError(400, "request body must be a JSON object")
        try:
            data = json.loads(self.body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # decode errors, NaN, absurd nesting or digit counts
            raise HttpError(400, "malformed JSON") from exc
        if not isinstance(data, dict):
            raise HttpError(400, "request body must be a JSON object")
        return data


def _reject_constant(name: str) -> object:
    # NaN and Infinity are not JSON; Python accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]


def route(pattern: str, **methods: Handler) -> Route:
    """A path (a regular expression matched in full; groups become ``Request.params``) and its methods."""
    return Route(re.compile(pattern), methods)


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self._routes = tuple(routes)

    def dispatch(self, request: Request) -> Response:
        for candidate in self._routes:
            match = candidate.pattern.fullmatch(request.path)
            if match is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            handler = candidate.methods.get(method)
            if handler is None:
                allow = ", ".join(sorted(candidate.methods))
                return Response(405, {"error": "method not allowed"}, (("Allow", allow),))
            try:
                return handler(replace(request, params=match.groups()))
            except HttpError as exc:
                return exc.to_response()
        return Response(404, {"error": "not found"})


@dataclass(frozen=True)
class Simulator:
    """One dependency double: its in-memory state (for tests) and its business routes."""

    kind: str
    state: object
    routes: tuple[Route, ...]
