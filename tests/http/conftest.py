from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from app.adapters.http import HttpTransport

from .servers import Behavior, ScriptedServer, serve_json

ServerFactory = Callable[..., ScriptedServer]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    servers: list[ScriptedServer] = []

    def make(behaviors: Sequence[Behavior] = (), *, default: Behavior = serve_json) -> ScriptedServer:
        server = ScriptedServer(behaviors, default=default)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def transport() -> Iterator[HttpTransport]:
    with HttpTransport(pool_maxsize=32) as client:
        yield client
