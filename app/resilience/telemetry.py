"""Hooks: where events go. A hook is any callable taking an event, or an object with `on_event`."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

from .events import Event

_log = logging.getLogger(__name__)

EventSink = Callable[[Event], None]


@runtime_checkable
class Hook(Protocol):
    def on_event(self, event: Event) -> None: ...


def as_sinks(hooks: Iterable[Hook | EventSink] | None) -> tuple[EventSink, ...]:
    """Normalise hooks to plain callables once, so emitting on the hot path is a bare loop."""
    sinks: list[EventSink] = []
    for hook in hooks or ():
        on_event = getattr(hook, "on_event", None)
        sinks.append(on_event if callable(on_event) else hook)  # type: ignore[arg-type]
    return tuple(sinks)


def emit(sinks: tuple[EventSink, ...], event: Event) -> None:
    """Deliver an event to every sink; a broken hook is logged, never raised into the call path."""
    for sink in sinks:
        try:
            sink(event)
        except Exception:  # noqa: BLE001 - observability must not change the outcome of a call
            _log.exception("resilience hook %r failed on %s", sink, type(event).__name__)


class LoggingHook:
    """One structured log record per event; the fields travel in `extra` for JSON formatters."""

    def __init__(self, *, logger: logging.Logger | None = None, level: int = logging.INFO) -> None:
        self._logger = logger or logging.getLogger("orderflow.resilience")
        self._level = level

    def on_event(self, event: Event) -> None:
        if not self._logger.isEnabledFor(self._level):
            return
        fields: dict[str, Any] = dataclasses.asdict(event)
        name = type(event).__name__
        text = " ".join(f"{key}={value}" for key, value in fields.items())
        self._logger.log(self._level, "%s %s", name, text,
                         extra={"event": name, **fields})


class RecordingHook:
    """Keeps every event in order; thread-safe, for tests and debugging."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[Event] = []

    def __call__(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
