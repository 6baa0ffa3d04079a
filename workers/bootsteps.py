"""Worker bootsteps: the outbox relay and the metrics endpoint, both threads of the worker's main process.

They start after the pool (its children are already forked, so none inherits a running thread) and stop
with the worker. A prefork child that is replaced later builds its own services (workers.context).
"""

from __future__ import annotations

import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import bootsteps

log = logging.getLogger("orderflow.worker")


class OutboxRelayStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: Any = None

    def start(self, parent: Any) -> None:
        from workers.context import worker_context
        from workers.relay import OutboxRelay, RelayThread

        context = worker_context()
        relay = OutboxRelay(
            engine=context.services.engine,
            send_payment=context.publisher.send_payment,
            send_notification=context.publisher.send_notification,
            republish_after=context.republish_after,
            waiting=context.publisher.waiting,
            payments_held=lambda: context.payments.gateway.circuit_break_until() is not None,
        )
        self.thread = RelayThread(relay, interval=context.services.settings.relay_interval)
        self.thread.start()
        log.info("outbox relay started", extra={"event": "relay_started",
                                                "interval": context.services.settings.relay_interval})

    def stop(self, parent: Any) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None

    shutdown = stop


class MetricsServerStep(bootsteps.StartStopStep):
    """`GET /metrics` on 127.0.0.1:$WORKER_METRICS_PORT: every worker process's metrics (multiprocess mode)
    plus the fleet gauges read from the database and the shared circuit state."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: ThreadingHTTPServer | None = None

    def start(self, parent: Any) -> None:
        from workers.context import worker_context

        context = worker_context()
        self.server = metrics_server(context.services, port=context.services.settings.worker_metrics_port)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="orderflow-worker-metrics", daemon=True).start()
        log.info("worker metrics on http://127.0.0.1:%d/metrics", self.server.server_address[1],
                 extra={"event": "metrics_started", "port": self.server.server_address[1]})

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    shutdown = stop


def metrics_server(services: Any, *, port: int) -> ThreadingHTTPServer:
    from app.metrics import render
    from workers.relay import no_fork

    fleet = services.extra.get("fleet_collector")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            with no_fork():  # the fleet gauges read the database (see workers.relay.FORK_GUARD)
                body, content_type = render(fleet)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not worth a line
            return

    # 127.0.0.1 on a developer's machine; a container sets WORKER_METRICS_HOST=0.0.0.0 so Prometheus can scrape it.
    server = ThreadingHTTPServer((os.environ.get("WORKER_METRICS_HOST") or "127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


__all__ = ["MetricsServerStep", "OutboxRelayStep", "metrics_server"]
