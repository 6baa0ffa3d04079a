"""GET /metrics: every API process's counters together, plus the fleet-wide gauges."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app

from app import metrics

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    services: Any = current_app.extensions["orderflow"]
    body, content_type = metrics.render(services.fleet_collector)
    return Response(body, content_type=content_type)
