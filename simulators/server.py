"""Starting a simulator: ``serve(kind)`` runs one in a background thread of the calling process."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from types import TracebackType

from . import inventory, notification, payment
from ._http import SimulatorHTTPServer
from ._routing import Request, Response, Router, Simulator, route
from .faults import FaultInjector, fault_routes

_BUILDERS: dict[str, Callable[[FaultInjector], Simulator]] = {
    "payment": payment.build,
    "inventory": inventory.build,
    "notification": notification.build,
}
KINDS = tuple(_BUILDERS)
DEFAULT_PORTS = {"payment": 9101, "inventory": 9102, "notification": 9103}
# How often the accept loop checks for shutdown: bounds how long shutdown() takes.
_POLL_INTERVAL = 0.1


def _health(_: Request) -> Response:
    return Response(200, {"status": "ok"})


class SimulatorServer:
    """A running simulator. ``state`` is its in-memory state, for tests to inspect."""

    def __init__(self, simulator: Simulator, faults: FaultInjector, httpd: SimulatorHTTPServer) -> None:
        self.kind = simulator.kind
        self.state = simulator.state
        self.faults = faults
        self._httpd = httpd
        self.host = str(httpd.server_address[0])
        self.port = int(httpd.server_address[1])
        url_host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        self.url = f"http://[{url_host}]:{self.port}" if ":" in url_host else f"http://{url_host}:{self.port}"
        self._stop_lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": _POLL_INTERVAL},
            name=f"{self.kind}-simulator",
            daemon=True,
        )
        self._thread.start()

    def shutdown(self) -> None:
        """Stop accepting, close the listening socket and every open connection. Safe to call twice."""
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        try:
            # Wakes the accept loop at once (its select sees the socket shut) instead of at its next poll.
            self._httpd.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # not every platform allows shutting a listening socket; the poll still ends the loop
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd.close_connections()
        self._thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return f"<SimulatorServer {self.kind} {self.url}>"


def serve(
    kind: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    seed: int | None = None,
    verbose: bool = False,
) -> SimulatorServer:
    """Start the ``kind`` simulator ("payment", "inventory" or "notification") in a background thread.

    ``port=0`` picks a free port (read it from ``.port``). ``seed`` makes ``error_rate`` faults reproducible.
    ``verbose`` logs one line per request to the ``simulators`` logger.
    """
    try:
        build = _BUILDERS[kind]
    except KeyError:
        raise ValueError(f"unknown simulator kind {kind!r}; expected one of {', '.join(KINDS)}") from None
    faults = FaultInjector(seed=seed)
    simulator = build(faults)
    router = Router([route("/health", GET=_health), *fault_routes(faults), *simulator.routes])
    httpd = SimulatorHTTPServer((host, port), router=router, verbose=verbose)
    return SimulatorServer(simulator, faults, httpd)
