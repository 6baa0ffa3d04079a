"""The notification service (best effort): one try plus a retry, then log and move on."""

from __future__ import annotations

import logging
from typing import Any

from app.adapters.http import HttpResponse, HttpTransport
from app.adapters.http.outcomes import error_text
from app.resilience import ResiliencePipeline

__all__ = ["NotificationClient"]

log = logging.getLogger("orderflow.dependencies")


class NotificationClient:
    def __init__(self, base_url: str, transport: HttpTransport, pipeline: ResiliencePipeline[Any]) -> None:
        self._url = base_url
        self._transport = transport
        self._pipeline = pipeline

    def send(self, *, order_id: str, kind: str, deadline: float) -> bool:
        headers = {"Idempotency-Key": f"{kind}:{order_id}"}
        body = {"order_id": order_id, "kind": kind}

        def attempt(call: Any) -> HttpResponse:
            return self._transport.request("POST", f"{self._url}/notifications", deadline=call.deadline,
                                           json=body, headers=headers)

        try:
            response = self._pipeline.execute(attempt, deadline=deadline, operation="notify",
                                              context={"order_id": order_id})
        except Exception as exc:  # best effort: a lost notification never fails anything else
            log.warning("notification not sent", extra={"event": "notification_failed", "order_id": order_id,
                                                         "error": error_text(exc)})
            return False
        return response is not None and 200 <= response.status < 300
