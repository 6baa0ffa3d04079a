"""How the payment client reads the payment service's answers: only a shown capture is a capture, and only
a definite refusal is a refusal; everything else leaves the decision to a later run and the ledger."""

from __future__ import annotations

import time

import pytest

from app.adapters.http import HttpTransport
from app.adapters.http.outcomes import http_failure
from app.adapters.payment_client import PaymentClient
from app.resilience import ResiliencePipeline

from .conftest import ServerFactory
from .servers import json_response, serve_raw


def capture(server_url: str, transport: HttpTransport) -> tuple[str, int | None]:
    pipeline: ResiliencePipeline[object] = ResiliencePipeline("payment", attempt_timeout=2.0, is_failure=http_failure)
    client = PaymentClient(server_url, transport, pipeline, None)
    result = client.capture(order_id="o-1", customer_id=7, amount="12.50", currency="USD",
                            deadline=time.monotonic() + 3.0, source="worker")
    return result.outcome, result.http_status


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [
        (201, {"id": "pay-1", "order_id": "o-1", "amount": "12.50", "status": "captured"}, "captured"),
        # A provider answering a repeated key with 200 and the capture it made: still that capture.
        (200, {"id": "pay-1", "order_id": "o-1", "status": "captured"}, "captured"),
        # A success that shows no capture of this order is no answer: tried again, never given up on.
        (200, {"ok": True}, "failed"),
        (201, {"id": "pay-9", "order_id": "another-order", "status": "captured"}, "failed"),
        # The same key still being processed (the API's call in flight): retried later.
        (409, {"error": "request in progress"}, "failed"),
        (402, {"error": "card_declined"}, "declined"),
        (400, {"error": "bad request"}, "rejected"),
        (422, {"error": "unprocessable"}, "rejected"),
    ],
)
def test_payment_answers_are_read_for_what_they_show(
    make_server: ServerFactory, transport: HttpTransport, status: int, body: object, outcome: str
) -> None:
    server = make_server(default=serve_raw(json_response(body, status=status)))
    assert capture(server.url, transport) == (outcome, status)
