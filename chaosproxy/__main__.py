"""``python -m chaosproxy --host 127.0.0.1 --port 8474 [--config proxies.json]``, in the foreground."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from app.logs import configure_logging, log_level
from chaosproxy.server import ChaosProxyServer

log = logging.getLogger("chaosproxy")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m chaosproxy", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address of the control API")
    parser.add_argument("--port", type=int, default=8474, help="port of the control API (0: any free one)")
    parser.add_argument("--config", help="JSON list of proxies to create at start (Toxiproxy's -config)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: ORDERFLOW_LOG_LEVEL, else INFO)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    configure_logging("chaosproxy", level=(args.log_level or log_level()).upper())
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        server = ChaosProxyServer(host=args.host, port=args.port)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", args.host, args.port, exc)
        return 1
    try:
        if args.config:
            proxies = server.populate_file(args.config)
            log.info("populated %d proxies from %s", len(proxies), args.config)
        # Printed for scripts that start the proxy on port 0 and need to find it.
        print(f"chaosproxy listening on {server.url}", flush=True)
        while not stop.wait(0.2):
            pass
    except (OSError, RuntimeError, ValueError) as exc:
        log.error("%s", exc)
        return 1
    finally:
        server.shutdown(timeout=0.8)
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
