"""ToxiproxyClient: every call maps to the API and errors surface as ToxiproxyError."""

from __future__ import annotations

import pytest

from chaosproxy.client import ToxiproxyClient, ToxiproxyError
from tests.chaosproxy.conftest import Upstream, connect, round_trip


def test_proxy_calls_round_trip(client: ToxiproxyClient, echo: Upstream) -> None:
    created = client.create_proxy("svc", "127.0.0.1:0", echo.address, enabled=False)
    assert created["enabled"] is False
    assert client.get_proxy("svc") == created
    assert list(client.proxies()) == ["svc"]
    assert client.enable("svc")["enabled"] is True
    assert client.update_proxy("svc", upstream="127.0.0.1:9")["upstream"] == "127.0.0.1:9"
    assert client.disable("svc")["enabled"] is False
    client.delete_proxy("svc")
    assert client.proxies() == {}
    assert client.version().startswith("2.")


def test_toxic_calls_round_trip(client: ToxiproxyClient, echo: Upstream) -> None:
    client.create_proxy("svc", "127.0.0.1:0", echo.address)
    toxic = client.add_toxic("svc", "bandwidth", {"rate": 50}, name="thin", stream="upstream", toxicity=0.5)
    assert toxic == {"attributes": {"rate": 50}, "name": "thin", "type": "bandwidth", "stream": "upstream",
                     "toxicity": 0.5}
    assert client.toxics("svc") == [toxic]
    assert client.get_toxic("svc", "thin") == toxic
    assert client.update_toxic("svc", "thin", {"rate": 10})["attributes"] == {"rate": 10}
    client.remove_toxic("svc", "thin")
    assert client.toxics("svc") == []


def test_errors_carry_status_and_message(client: ToxiproxyClient, echo: Upstream) -> None:
    with pytest.raises(ToxiproxyError) as missing:
        client.get_proxy("nope")
    assert (missing.value.status, missing.value.message) == (404, "proxy not found")
    client.create_proxy("svc", "127.0.0.1:0", echo.address)
    with pytest.raises(ToxiproxyError) as duplicate:
        client.create_proxy("svc", "127.0.0.1:0", echo.address)
    assert (duplicate.value.status, duplicate.value.message) == (409, "proxy already exists")
    with pytest.raises(ToxiproxyError) as bad_type:
        client.add_toxic("svc", "gremlins", {})
    assert (bad_type.value.status, bad_type.value.message) == (400, "invalid toxic type")


def test_toxic_context_manager_removes_the_toxic_even_on_error(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = client.create_proxy("svc", "127.0.0.1:0", echo.address)
    with client.toxic("svc", "latency", {"latency": 150}) as toxic, connect(proxy) as sock:
        assert toxic["name"] == "latency_downstream"
        assert round_trip(sock)[1] >= 0.145
    assert client.toxics("svc") == []
    with pytest.raises(RuntimeError), client.toxic("svc", "timeout", {"timeout": 0}, stream="upstream"):
        raise RuntimeError("the code under test failed")
    assert client.toxics("svc") == []
    with client.toxic("svc", "latency", {"latency": 1}):
        client.reset()  # already gone when the block ends: not an error


def test_populate_and_reset(client: ToxiproxyClient, echo: Upstream) -> None:
    proxies = client.populate([{"name": "a", "listen": "127.0.0.1:0", "upstream": echo.address},
                               {"name": "b", "listen": "127.0.0.1:0", "upstream": echo.address,
                                "enabled": False}])
    assert [(p["name"], p["enabled"]) for p in proxies] == [("a", True), ("b", False)]
    assert client.populate([]) == []
    client.reset()
    assert client.get_proxy("b")["enabled"] is True
