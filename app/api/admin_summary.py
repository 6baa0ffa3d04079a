"""Order counts by status for the admin page, behind the admin token."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app

from app.adapters.db import read
from app.adapters.repository import count_orders_by_status
from app.api.admin import require_token

bp = Blueprint("admin_summary", __name__, url_prefix="/admin/orders")


@bp.before_request
def _needs_the_admin_token() -> None:
    require_token()


def _services() -> Any:
    return current_app.extensions["orderflow"]


@bp.get("/summary")
def order_summary() -> Response:
    with read(_services().engine) as conn:
        counts = count_orders_by_status(conn)
    return Response(json.dumps({"counts": counts}), status=200, mimetype="application/json")
