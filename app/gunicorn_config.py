"""gunicorn settings for the order API: threads for I/O-bound requests, processes for the GIL."""

from __future__ import annotations

import os

from app.config import api_bind

# API_HOST:API_PORT, 127.0.0.1:8000 unless told otherwise; a host behind a load balancer listens on more.
bind = api_bind()
worker_class = "gthread"
workers = int(os.environ.get("API_PROCESSES", "2"))
threads = int(os.environ.get("API_THREADS", "8"))
# No request outlives the request deadline (10 s) by much; a worker stuck past 30 s is restarted.
timeout = 30
# Short, so a stop of the whole stack finishes inside its 10 s budget.
graceful_timeout = 4
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = "warning"
proc_name = "orderflow-api"


def child_exit(server: object, worker: object) -> None:
    from app.metrics import mark_process_dead

    mark_process_dead(getattr(worker, "pid", 0))
