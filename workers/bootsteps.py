"""Worker bootsteps: the outbox relay and the metrics endpoint, both threads of the worker's main process.

They start after the pool (its children are already forked, so none inherits a running thread) and stop
with the worker. A prefork child that is replaced later builds its own services (workers.context).
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery import bootsteps

from app.config import LOOPBACK, address

log = logging.getLogger("orderflow.worker")


class OutboxRelayStep(bootsteps.StartStopStep):
    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.thread: Any = None

    def start(self, parent: Any) -> None:
        from app.adapters.broker import PROCESS_PAYMENT, QUEUES, SEND_NOTIFICATION
        from workers.context import worker_context
        from workers.relay import OutboxRelay, RelayThread, no_fork

        context = worker_context()
        if not context.services.settings.relay:
            # Another worker of the fleet runs it: this one only consumes the queues.
            log.info("outbox relay off on this worker (ORDERFLOW_RELAY=off)", extra={"event": "relay_off"})
            return
        relay = OutboxRelay(
            uow=context.services.uow,
            send_payment=context.publisher.send_payment,
            send_notification=context.publisher.send_notification,
            payment_queue=QUEUES[PROCESS_PAYMENT],
            notification_queue=QUEUES[SEND_NOTIFICATION],
            guard=no_fork,
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
    """`GET /metrics` on $WORKER_METRICS_HOST:$WORKER_METRICS_PORT: every worker process's metrics (multiprocess
    mode) plus the fleet gauges read from the database and the shared circuit state."""

    requires = {"celery.worker.components:Pool"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.server: ThreadingHTTPServer | None = None

    def start(self, parent: Any) -> None:
        from workers.context import worker_context

        context = worker_context()
        settings = context.services.settings
        self.server = metrics_server(context.services, host=settings.worker_metrics_host,
                                     port=settings.worker_metrics_port)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                         name="orderflow-worker-metrics", daemon=True).start()
        host, port = self.server.server_address[:2]
        log.info("worker metrics on http://%s/metrics", address(str(host), int(port)),
                 extra={"event": "metrics_started", "host": host, "port": port})

    def stop(self, parent: Any) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    shutdown = stop


def metrics_server(services: Any, *, port: int, host: str = LOOPBACK) -> ThreadingHTTPServer:
    from app.metrics import render
    from workers.relay import no_fork

    fleet = services.fleet_collector

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
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), Handler)
    server.daemon_threads = True
    return server


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


__all__ = ["MetricsServerStep", "OutboxRelayStep", "metrics_server"]
