"""Strict parsing of request bodies and headers: ids are 32-bit, booleans are not integers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flask import Request
from werkzeug.exceptions import HTTPException

from app.api.problems import Problem, validation_problem

MAX_ID = 2_147_483_647
MAX_LINES = 100
MAX_QUANTITY = 1000
MAX_BODY = 64 * 1024


@dataclass(frozen=True)
class OrderRequest:
    customer_id: int
    lines: tuple[tuple[int, int], ...]
    currency: str
    document: Any  # the parsed body, for the idempotency fingerprint


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(errors: list[dict[str, str]], field: str, value: Any, low: int, high: int) -> int | None:
    if not _is_int(value):
        errors.append({"field": field, "message": f"must be an integer between {low} and {high}"})
        return None
    if not low <= value <= high:
        errors.append({"field": field, "message": f"must be between {low} and {high}"})
        return None
    return int(value)


def is_json_content_type(mimetype: str) -> bool:
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def read_json_body(request: Request) -> Any:
    if not is_json_content_type(request.mimetype or ""):
        raise Problem(
            415,
            "Unsupported media type",
            "Send the body as JSON with Content-Type: application/json.",
            slug="unsupported-media-type",
        )
    raw = _read_body(request)
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise validation_problem(
            [{"field": "body", "message": f"malformed JSON: {str(exc)[:200]}"}], "The body is not valid JSON."
        ) from None


def _read_body(request: Request) -> bytes:
    """The body, refused when over MAX_BODY whatever its framing.

    A chunked body has no Content-Length to check up front, so this reads one byte past the limit: getting
    it is what tells a body over the limit from one exactly at it (werkzeug's own cap stops reading at the
    limit without saying whether more was coming, so it would cut such a body short and pass it on).
    """
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _too_large()
    parts: list[bytes] = []
    size = 0
    while size <= MAX_BODY:
        try:
            part = request.stream.read(MAX_BODY + 1 - size)
        except HTTPException:
            raise
        except Exception:
            # The server's own reader failed on the client's bytes (a bad chunk size or terminator):
            # a malformed request, not an error of ours.
            raise validation_problem(
                [{"field": "body", "message": "malformed chunked framing"}], "The body could not be read."
            ) from None
        if not part:
            break
        parts.append(part)
        size += len(part)
    if size > MAX_BODY:
        raise _too_large()
    return b"".join(parts)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _too_large() -> Problem:
    return Problem(413, "Body too large", f"The body must be at most {MAX_BODY} bytes.", slug="body-too-large")


def parse_order(document: Any) -> OrderRequest:
    errors: list[dict[str, str]] = []
    if not isinstance(document, dict):
        raise validation_problem([{"field": "body", "message": "must be a JSON object"}])
    customer_id = _int_in(errors, "customer_id", document.get("customer_id"), 1, MAX_ID)
    currency = document.get("currency", "USD")
    if currency != "USD":
        errors.append({"field": "currency", "message": 'must be "USD"'})
    raw_lines = document.get("lines")
    lines: list[tuple[int, int]] = []
    if not isinstance(raw_lines, list):
        errors.append({"field": "lines", "message": f"must be a list of 1 to {MAX_LINES} lines"})
    elif not 1 <= len(raw_lines) <= MAX_LINES:
        errors.append({"field": "lines", "message": f"must hold 1 to {MAX_LINES} lines"})
    else:
        for i, line in enumerate(raw_lines):
            if not isinstance(line, dict):
                errors.append({"field": f"lines[{i}]", "message": "must be an object"})
                continue
            product_id = _int_in(errors, f"lines[{i}].product_id", line.get("product_id"), 1, MAX_ID)
            quantity = _int_in(errors, f"lines[{i}].quantity", line.get("quantity"), 1, MAX_QUANTITY)
            if product_id is not None and quantity is not None:
                lines.append((product_id, quantity))
    if errors or customer_id is None:
        raise validation_problem(errors)
    return OrderRequest(customer_id, tuple(lines), "USD", document)


def parse_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 255 or any(not 0x21 <= ord(ch) <= 0x7E for ch in value):
        raise validation_problem(
            [{"field": "Idempotency-Key", "message": "must be 1 to 255 printable ASCII characters (0x21-0x7E)"}],
            "The Idempotency-Key header is not valid.",
        )
    return value


def canonical_fingerprint(document: Any) -> str:
    import hashlib

    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
