"""``python -m simulators payment|inventory|notification [--host H] [--port P] [--seed N] [--verbose]``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from app.logs import configure_logging, log_level

from .server import DEFAULT_PORTS, KINDS, serve

logger = logging.getLogger("simulators")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators", description="Run one dependency simulator.")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="default: payment 9101, inventory 9102, notification 9103; 0: any",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the error_rate fault's random source")
    parser.add_argument("--verbose", action="store_true", help="log one line per request")
    args = parser.parse_args(argv)
    configure_logging(args.kind, level=log_level())

    stop = threading.Event()
    # Installed before the socket opens, so an early SIGTERM still ends in a clean exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    port = DEFAULT_PORTS[args.kind] if args.port is None else args.port
    try:
        server = serve(args.kind, host=args.host, port=port, seed=args.seed, verbose=args.verbose)
    except OSError as exc:
        logger.error("%s simulator cannot listen on %s:%s: %s", args.kind, args.host, port, exc)
        return 1
    logger.info("%s simulator listening on %s", args.kind, server.url)
    try:
        while not stop.wait(0.1):
            pass
    finally:
        server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
