"""Development and test doubles of the payment, inventory and notification services (CONTRACT section 7).

Start one in-process with ``serve("payment")``, or as a process with ``python -m simulators payment``.
"""

from .server import DEFAULT_PORTS, KINDS, SimulatorServer, serve

__all__ = ["DEFAULT_PORTS", "KINDS", "SimulatorServer", "serve"]
