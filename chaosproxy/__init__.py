"""OrderFlow's chaos proxy: a TCP fault-injection proxy speaking Toxiproxy's HTTP API.

Design: one asyncio event loop thread carries every proxied byte (listeners, connections, toxics)
and owns all proxy state; the control API is a small threaded HTTP/1.1 server whose handlers hand each
request to that loop as one coroutine. asyncio rather than a thread pair per connection because:

* the no-toxic path is ``data_received`` -> ``transport.write`` on the same thread: no context switch,
  no queue, no GIL hand-off between a reader and a writer thread, which is what keeps the added
  latency per small request well under 100 us;
* toxics are timers (latency, bandwidth, slicer, timeouts), which the loop schedules cheaply for
  thousands of connections, and rewiring a live connection's toxic chain is race-free because only
  the loop thread ever touches it.

The control API stays on plain threads (``http.server``) so a slow client of the API never stalls
the data plane, and its parsing is the standard library's.

Public face: ``chaosproxy.server.start`` / ``ChaosProxyServer`` to run one in-process,
``python -m chaosproxy`` to run one in the foreground, ``chaosproxy.client.ToxiproxyClient`` to drive
this proxy or a real Toxiproxy.
"""

from chaosproxy.client import ToxiproxyClient, ToxiproxyError
from chaosproxy.server import ChaosProxyServer, start

__all__ = ["ChaosProxyServer", "ToxiproxyClient", "ToxiproxyError", "start"]
