"""Simulators on ephemeral loopback ports, a fresh one per test (starting one takes about a millisecond)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulators import KINDS, SimulatorServer, serve


def _running(kind: str) -> Iterator[SimulatorServer]:
    server = serve(kind, seed=7)
    try:
        yield server
    finally:
        server.shutdown()


@pytest.fixture
def payment() -> Iterator[SimulatorServer]:
    yield from _running("payment")


@pytest.fixture
def inventory() -> Iterator[SimulatorServer]:
    yield from _running("inventory")


@pytest.fixture
def notification() -> Iterator[SimulatorServer]:
    yield from _running("notification")


@pytest.fixture(params=KINDS)
def simulator(request: pytest.FixtureRequest) -> Iterator[SimulatorServer]:
    yield from _running(request.param)
