"""The admin API behind a bearer token, and the admin page that uses it."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, current_app, request

from app.api.problems import Problem, validation_problem
from app.api.validation import read_json_body

bp = Blueprint("admin", __name__, url_prefix="/admin")
log = logging.getLogger("orderflow.admin")

PAGE = Path(__file__).resolve().parent / "static" / "admin.html"


def _services() -> Any:
    return current_app.extensions["orderflow"]


def _json(status: int, payload: object) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


@bp.before_request
def _admin_routes_need_the_token() -> None:
    if request.endpoint != "admin.page":
        require_token()


def require_token() -> None:
    """Every admin data route calls this first (blueprints of other admin routes register it too)."""
    token: str | None = _services().settings.admin_token
    if not token:
        # Never open: without a configured token the admin API is closed, not unprotected.
        raise Problem(503, "Admin API disabled", "No admin token is configured (ADMIN_TOKEN).",
                      slug="admin-disabled")
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
        raise Problem(401, "Unauthorized", "Send the admin token as 'Authorization: Bearer <token>'.",
                      slug="unauthorized", headers={"WWW-Authenticate": 'Bearer realm="orderflow-admin"'})


@bp.get("/")
def page() -> Response:
    try:
        html = PAGE.read_text(encoding="utf-8")
    except OSError:
        html = "<!doctype html><title>OrderFlow admin</title><p>The admin page is not installed.</p>"
    response = Response(html, mimetype="text/html")
    # No other site may frame the page: its buttons isolate circuits and replay payments once a token is in,
    # and a framing page could trick a click onto them. X-Frame-Options says the same to older browsers.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/flags")
def list_flags() -> Response:
    return _json(200, {"flags": [f.to_dict() for f in _services().flags.all()]})


@bp.put("/flags/<name>")
def set_flag(name: str) -> Response:
    document = read_json_body(request)
    if not isinstance(document, dict) or not isinstance(document.get("enabled"), bool):
        raise validation_problem([{"field": "enabled", "message": "must be true or false"}])
    flag = None
    if len(name) <= 60 and name.isprintable():
        flag = _services().flags.set(name, enabled=document["enabled"], by="admin-api")
    if flag is None:
        raise Problem(404, "Unknown flag", f"There is no flag {name!r}.", slug="not-found")
    return _json(200, flag.to_dict())


def _circuit(name: str) -> Any:
    circuits = _services().extra.get("circuits")
    breaker = circuits.breakers.get(name) if circuits is not None else None
    if breaker is None:
        raise Problem(404, "Unknown circuit", f"There is no circuit {name!r}.", slug="not-found")
    return breaker


@bp.get("/circuits")
def list_circuits() -> Response:
    circuits = _services().extra.get("circuits")
    return _json(200, {"circuits": circuits.snapshots() if circuits is not None else []})


@bp.post("/circuits/<name>/isolate")
def isolate_circuit(name: str) -> Response:
    return _operate_circuit(name, "isolated", lambda breaker: breaker.isolate())


@bp.post("/circuits/<name>/reset")
def reset_circuit(name: str) -> Response:
    return _operate_circuit(name, "reset", lambda breaker: breaker.reset())


def _operate_circuit(name: str, done: str, operate: Callable[[Any], None]) -> Response:
    """Isolate or reset one circuit (every process sees it through the shared state), log it, show it."""
    from app.adapters.dependency_health import snapshot_dict

    breaker = _circuit(name)
    operate(breaker)
    log.warning("circuit %s", done, extra={"event": f"circuit_{done}", "service": name})
    return _json(200, snapshot_dict(breaker))
