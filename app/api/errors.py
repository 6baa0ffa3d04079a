"""Every error leaves as problem+json; a store that fails or cannot be reached is a 503 with Retry-After, never a
500."""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.api.problems import Problem, database_unavailable, problem_response
from app.api.validation import MAX_BODY
from app.services.unit_of_work import StorageError

log = logging.getLogger("orderflow.api")


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(Problem)
    def _problem(exc: Problem) -> Response:
        return exc.response()

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_exc: RequestEntityTooLarge) -> Response:
        return Problem(413, "Body too large", f"The body must be at most {MAX_BODY} bytes.",
                       slug="body-too-large").response()

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:  # type: ignore[attr-defined]
            headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
        body = {"type": "about:blank", "title": exc.name, "status": status, "detail": exc.description or exc.name}
        return problem_response(status, body, headers)

    @app.errorhandler(StorageError)
    def _database(exc: Exception) -> Response:
        log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return database_unavailable().response()

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unexpected error")
        body = {"type": "about:blank", "title": "Internal error", "status": 500,
                "detail": "An unexpected error occurred; it has been logged."}
        return problem_response(500, body)
