"""Order counts by status for the admin page, behind the admin token."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app

from app.api.admin import require_token
from app.services.ordering import order_counts

bp = Blueprint("admin_summary", __name__, url_prefix="/admin/orders")


@bp.before_request
def _needs_the_admin_token() -> None:
    require_token()


def _services() -> Any:
    return current_app.extensions["orderflow"]


@bp.get("/summary")
def order_summary() -> Response:
    counts = order_counts(_services().uow)
    return Response(json.dumps({"counts": counts}), status=200, mimetype="application/json")
