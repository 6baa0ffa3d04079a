"""Validation of the body fields the business routes share."""

from __future__ import annotations

from collections.abc import Mapping

from ._routing import HttpError

MAX_TEXT = 255


def identifier(body: Mapping[str, object], name: str) -> str | int:
    """An id as the caller gave it: a non-empty string or an integer, kept as it is, not converted."""
    value = body.get(name)
    # bool is an int in Python, but true is not an id.
    if isinstance(value, bool) or not (
        isinstance(value, int) or (isinstance(value, str) and 0 < len(value) <= MAX_TEXT)
    ):
        raise HttpError(400, f"{name} must be an integer or a string of 1 to {MAX_TEXT} chars", field=name)
    return value


def text(body: Mapping[str, object], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT:
        raise HttpError(400, f"{name} must be a string of 1 to {MAX_TEXT} characters", field=name)
    return value


def matches_order(value: str | int, wanted: str | None) -> bool:
    # Query strings are text, so an integer order id matches its decimal form.
    return wanted is None or str(value) == wanted
