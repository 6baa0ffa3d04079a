"""RFC 9457 problem details: every error the API answers has this shape."""

from __future__ import annotations

import json
from typing import Any

from flask import Response

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "/problems/"


class Problem(Exception):
    """Raised anywhere below a view; the error handler turns it into a problem+json response."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_BASE + self.slug if self.slug else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }

    def response(self) -> Response:
        return problem_response(self.status, self.body(), self.headers)


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def validation_problem(errors: list[dict[str, str]], detail: str = "The request is not valid.") -> Problem:
    return Problem(400, "Invalid request", detail, slug="validation-error", errors=errors)


def database_unavailable() -> Problem:
    return Problem(
        503,
        "Database unavailable",
        "The database could not be reached in time; nothing was changed. Retry shortly.",
        slug="database-unavailable",
        headers={"Retry-After": "2"},
    )
