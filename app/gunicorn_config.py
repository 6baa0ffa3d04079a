"""gunicorn settings for the order API: threads for I/O-bound requests, processes for the GIL."""

from __future__ import annotations

import logging

from app.config import Settings, address
from app.logs import library_level, log_level

_settings = Settings.from_env()
# API_HOST:API_PORT, 127.0.0.1:8000 unless told otherwise; a host behind a load balancer listens on more.
bind = address(_settings.api_host, _settings.api_port)
worker_class = "gthread"
workers = _settings.api_processes
threads = _settings.api_threads
# No request outlives the request deadline (10 s) by much; a worker stuck past 30 s is restarted.
timeout = 30
# Short, so a stop of the whole stack finishes inside its 10 s budget.
graceful_timeout = 4
keepalive = 5
# gunicorn's own lines and one line per request go through the handler of every OrderFlow process: the
# app's format, each line naming the process `api`. gunicorn applies this after its own setup (which then
# logs every request), so the handlers it made for `errorlog` and `accesslog` are replaced.
loglevel = log_level().lower()
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms'
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {"orderflow": {"()": "app.logs.log_handler", "process": "api"}},
    "root": {"level": library_level(log_level()), "handlers": ["orderflow"]},
    "loggers": {name: {"level": log_level(), "handlers": [], "propagate": True}
                for name in ("gunicorn.error", "gunicorn.access", "orderflow")},
}
proc_name = "orderflow-api"


def on_starting(server: object) -> None:
    logging.captureWarnings(True)  # a warning is a line of the stream too, not text printed beside it


def child_exit(server: object, worker: object) -> None:
    from app.metrics import mark_process_dead

    mark_process_dead(getattr(worker, "pid", 0))
