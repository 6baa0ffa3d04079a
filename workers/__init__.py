"""The Celery worker: `celery -A workers worker`. The app is built on first access, not at import, so the
API can import the publisher without configuring a worker."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from workers.celery_app import make_celery

        globals()["app"] = globals()["celery"] = make_celery()
        return globals()[name]
    raise AttributeError(name)
