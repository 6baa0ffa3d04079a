"""HTTP to OrderFlow's dependencies: a transport with a hard wall-clock deadline per attempt, and the
watchdog that enforces it."""

from .transport import HttpConnectionError, HttpResponse, HttpTimeoutError, HttpTransport, HttpTransportError
from .watchdog import Watchdog, default_watchdog

__all__ = [
    "HttpConnectionError",
    "HttpResponse",
    "HttpTimeoutError",
    "HttpTransport",
    "HttpTransportError",
    "Watchdog",
    "default_watchdog",
]
