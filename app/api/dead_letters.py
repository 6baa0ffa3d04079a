"""Admin routes of the dead letters: list them, replay one."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app

from app.api.admin import require_token
from app.api.problems import Problem
from app.services import dead_letters

# dead_letters.id is a 32-bit integer column: a larger id names no dead letter, and must not reach the
# database (SQLite overflows, PostgreSQL rejects it).
MAX_ID = 2**31 - 1

bp = Blueprint("dead_letters", __name__, url_prefix="/admin/dead-letters")


@bp.before_request
def _needs_the_admin_token() -> None:
    require_token()


def _services() -> Any:
    return current_app.extensions["orderflow"]


def _json(status: int, payload: object) -> Response:
    return Response(json.dumps(payload), status=status, mimetype="application/json")


@bp.get("")
def list_dead_letters() -> Response:
    items = dead_letters.list_dead_letters(_services().uow)
    return _json(200, {"items": [d.to_dict() for d in items]})


@bp.post("/<int:dead_letter_id>/replay")
def replay(dead_letter_id: int) -> Response:
    services = _services()
    if dead_letter_id > MAX_ID:
        raise Problem(404, "Unknown dead letter", f"There is no dead letter {dead_letter_id}.", slug="not-found")
    try:
        replayed = dead_letters.replay_dead_letter(services.uow, dead_letter_id)
    except dead_letters.DeadLetterNotFound as exc:
        raise Problem(404, "Unknown dead letter", str(exc), slug="not-found") from exc
    except dead_letters.DeadLetterAlreadyReplayed as exc:
        raise Problem(409, "Already replayed", str(exc), slug="dead-letter-already-replayed",
                      dead_letter=exc.dead_letter.to_dict()) from exc
    except dead_letters.OrderNotReplayable as exc:
        raise Problem(409, "Order not replayable", str(exc), slug="order-not-replayable") from exc
    return _json(202, replayed.to_dict())
