"""Liveness and readiness (application/health+json)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app

bp = Blueprint("health", __name__, url_prefix="/health")


@bp.get("/live")
def live() -> Response:
    return Response(json.dumps({"status": "pass"}), mimetype="application/health+json")


@bp.get("/ready")
def ready() -> Response:
    services: Any = current_app.extensions["orderflow"]
    report = services.readiness.report()
    status = 503 if report["status"] == "fail" else 200
    return Response(json.dumps(report), status=status, mimetype="application/health+json")
