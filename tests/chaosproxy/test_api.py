"""The control API answers with Toxiproxy's routes, status codes, JSON shapes and error bodies."""

from __future__ import annotations

import pytest
import requests

from bench.stack import free_ports
from chaosproxy.client import ToxiproxyClient
from chaosproxy.server import ChaosProxyServer
from tests.chaosproxy.conftest import Upstream, connect, listen_port, round_trip


@pytest.fixture
def url(chaos_server: ChaosProxyServer, client: ToxiproxyClient) -> str:
    return chaos_server.url


def _free_port() -> int:
    return free_ports(1)[0]


def _create(url: str, upstream: Upstream, name: str = "svc", **extra: object) -> requests.Response:
    body = {"name": name, "listen": "127.0.0.1:0", "upstream": upstream.address, **extra}
    return requests.post(f"{url}/proxies", json=body, timeout=5)


def test_version_answers_json_with_a_version(url: str) -> None:
    response = requests.get(f"{url}/version", timeout=5)
    assert response.status_code == 200
    assert response.json()["version"].startswith("2.")


def test_create_answers_201_with_the_real_port_for_listen_port_zero(url: str, echo: Upstream) -> None:
    response = _create(url, echo)
    assert response.status_code == 201
    proxy = response.json()
    assert proxy == {
        "name": "svc", "listen": proxy["listen"], "upstream": echo.address, "enabled": True, "toxics": [],
    }
    assert proxy["listen"].startswith("127.0.0.1:") and listen_port(proxy) != 0
    with connect(proxy) as sock:
        assert round_trip(sock, b"hello")[0] == b"hello"


def test_create_disabled_proxy_does_not_listen(url: str, echo: Upstream) -> None:
    proxy = _create(url, echo, enabled=False).json()
    assert proxy["enabled"] is False


def test_duplicate_proxy_is_409_with_toxiproxys_body(url: str, echo: Upstream) -> None:
    _create(url, echo)
    response = _create(url, echo)
    assert response.status_code == 409
    assert response.json() == {"error": "proxy already exists", "status": 409}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"listen": "127.0.0.1:0", "upstream": "127.0.0.1:1"}, "missing required field: name"),
        ({"name": "x", "listen": "127.0.0.1:0"}, "missing required field: upstream"),
    ],
)
def test_missing_fields_are_400(url: str, body: dict[str, str], message: str) -> None:
    response = requests.post(f"{url}/proxies", json=body, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": message, "status": 400}


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'{"name": 5, "upstream": "a:1"}'])
def test_bad_body_is_400(url: str, raw: bytes) -> None:
    response = requests.post(f"{url}/proxies", data=raw, timeout=5)
    assert response.status_code == 400
    assert response.json()["error"].startswith("bad request body: ")


def test_listen_on_a_busy_port_is_500_with_the_bind_error(url: str, echo: Upstream) -> None:
    response = requests.post(
        f"{url}/proxies", json={"name": "busy", "listen": echo.address, "upstream": echo.address}, timeout=5
    )
    assert response.status_code == 500
    assert "address already in use" in response.json()["error"]
    assert requests.get(f"{url}/proxies/busy", timeout=5).status_code == 404


def test_unknown_proxy_and_toxic_are_404(url: str, echo: Upstream) -> None:
    not_found = {"error": "proxy not found", "status": 404}
    for method, path in [
        ("GET", "/proxies/nope"), ("POST", "/proxies/nope"), ("DELETE", "/proxies/nope"),
        ("GET", "/proxies/nope/toxics"), ("POST", "/proxies/nope/toxics"),
        ("GET", "/proxies/nope/toxics/t"), ("DELETE", "/proxies/nope/toxics/t"),
    ]:
        response = requests.request(method, f"{url}{path}", json={"type": "latency"}, timeout=5)
        assert (response.status_code, response.json()) == (404, not_found), (method, path)
    _create(url, echo)
    for method in ("GET", "POST", "PATCH", "DELETE"):
        response = requests.request(method, f"{url}/proxies/svc/toxics/missing", json={}, timeout=5)
        assert (response.status_code, response.json()) == (404, {"error": "toxic not found", "status": 404})


def test_index_is_an_object_keyed_by_name(url: str, echo: Upstream) -> None:
    _create(url, echo, name="a")
    _create(url, echo, name="b")
    proxies = requests.get(f"{url}/proxies", timeout=5).json()
    assert sorted(proxies) == ["a", "b"]
    assert proxies["a"]["name"] == "a" and proxies["b"]["toxics"] == []


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_update_changes_upstream_and_keeps_the_rest(url: str, echo: Upstream, method: str) -> None:
    created = _create(url, echo).json()
    response = requests.request(method, f"{url}/proxies/svc", json={"upstream": "127.0.0.1:9"}, timeout=5)
    assert response.status_code == 200
    updated = response.json()
    assert updated["upstream"] == "127.0.0.1:9"
    assert updated["listen"] == created["listen"] and updated["enabled"] is True


def test_update_listen_moves_the_listener(url: str, echo: Upstream) -> None:
    _create(url, echo)
    port = _free_port()
    updated = requests.patch(f"{url}/proxies/svc", json={"listen": f"127.0.0.1:{port}"}, timeout=5).json()
    assert updated["listen"] == f"127.0.0.1:{port}"
    with connect(updated) as sock:
        assert round_trip(sock)[0] == b"ping"


def test_delete_is_204_and_the_port_is_closed(url: str, echo: Upstream) -> None:
    proxy = _create(url, echo).json()
    response = requests.delete(f"{url}/proxies/svc", timeout=5)
    assert (response.status_code, response.content) == (204, b"")
    assert requests.get(f"{url}/proxies/svc", timeout=5).status_code == 404
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)


def test_toxic_create_defaults_name_stream_and_toxicity(url: str, echo: Upstream) -> None:
    _create(url, echo)
    response = requests.post(
        f"{url}/proxies/svc/toxics", json={"type": "latency", "attributes": {"latency": 5}}, timeout=5
    )
    assert response.status_code == 200
    assert response.json() == {
        "attributes": {"latency": 5, "jitter": 0}, "name": "latency_downstream", "type": "latency",
        "stream": "downstream", "toxicity": 1.0,
    }
    upstream = requests.post(
        f"{url}/proxies/svc/toxics", json={"type": "timeout", "stream": "upstream", "toxicity": 0.5}, timeout=5
    ).json()
    assert (upstream["name"], upstream["stream"], upstream["toxicity"]) == ("timeout_upstream", "upstream", 0.5)
    assert upstream["attributes"] == {"timeout": 0}


def test_toxic_errors_match_toxiproxy(url: str, echo: Upstream) -> None:
    _create(url, echo)
    toxics = f"{url}/proxies/svc/toxics"
    requests.post(toxics, json={"type": "latency"}, timeout=5)
    cases = [
        ({"type": "latency"}, 409, "toxic already exists"),
        ({"type": "nonsense"}, 400, "invalid toxic type"),
        ({"type": "latency", "stream": "sideways"}, 400,
         "stream was invalid, can be either upstream or downstream"),
    ]
    for body, status, message in cases:
        response = requests.post(toxics, json=body, timeout=5)
        assert (response.status_code, response.json()) == (status, {"error": message, "status": status})
    bad = requests.post(toxics, json={"type": "bandwidth", "attributes": {"rate": "fast"}}, timeout=5)
    assert bad.status_code == 400 and bad.json()["error"].startswith("bad request body: ")


def test_toxic_show_update_delete(url: str, echo: Upstream) -> None:
    _create(url, echo)
    toxics = f"{url}/proxies/svc/toxics"
    requests.post(toxics, json={"type": "latency", "name": "slow", "attributes": {"latency": 10, "jitter": 2}},
                  timeout=5)
    assert requests.get(f"{toxics}/slow", timeout=5).json()["attributes"] == {"latency": 10, "jitter": 2}
    response = requests.patch(f"{toxics}/slow", json={"attributes": {"latency": 30}, "toxicity": 0.25}, timeout=5)
    assert response.status_code == 200
    assert response.json()["attributes"] == {"latency": 30, "jitter": 2}
    assert response.json()["toxicity"] == 0.25
    assert requests.post(f"{toxics}/slow", json={"toxicity": 1}, timeout=5).json()["toxicity"] == 1
    deleted = requests.delete(f"{toxics}/slow", timeout=5)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert requests.get(toxics, timeout=5).json() == []


def test_toxic_list_shows_upstream_toxics_first(url: str, echo: Upstream) -> None:
    _create(url, echo)
    toxics = f"{url}/proxies/svc/toxics"
    requests.post(toxics, json={"type": "latency", "stream": "downstream"}, timeout=5)
    requests.post(toxics, json={"type": "slicer", "stream": "upstream"}, timeout=5)
    requests.post(toxics, json={"type": "bandwidth", "stream": "downstream"}, timeout=5)
    names = [t["name"] for t in requests.get(toxics, timeout=5).json()]
    assert names == ["slicer_upstream", "latency_downstream", "bandwidth_downstream"]
    assert [t["name"] for t in requests.get(f"{url}/proxies/svc", timeout=5).json()["toxics"]] == names


def test_populate_creates_then_is_idempotent(url: str, echo: Upstream) -> None:
    port = _free_port()
    body = [{"name": "pop", "listen": f"127.0.0.1:{port}", "upstream": echo.address}]
    first = requests.post(f"{url}/populate", json=body, timeout=5)
    assert first.status_code == 201
    assert [p["listen"] for p in first.json()["proxies"]] == [f"127.0.0.1:{port}"]
    requests.post(f"{url}/proxies/pop/toxics", json={"type": "latency"}, timeout=5)
    with connect(first.json()["proxies"][0]) as sock:
        again = requests.post(f"{url}/populate", json=body, timeout=5)
        assert again.status_code == 201
        # Unchanged: the same proxy, its toxics and its open connections are left alone.
        assert again.json()["proxies"][0]["toxics"][0]["name"] == "latency_downstream"
        assert round_trip(sock)[0] == b"ping"
    assert list(requests.get(f"{url}/proxies", timeout=5).json()) == ["pop"]


def test_populate_replaces_a_proxy_whose_upstream_changed(url: str, echo: Upstream) -> None:
    port = _free_port()
    requests.post(f"{url}/populate", json=[{"name": "pop", "listen": f"127.0.0.1:{port}", "upstream": "x:1"}],
                  timeout=5)
    requests.post(f"{url}/proxies/pop/toxics", json={"type": "latency"}, timeout=5)
    body = [{"name": "pop", "listen": f"localhost:{port}", "upstream": echo.address, "enabled": True}]
    response = requests.post(f"{url}/populate", json=body, timeout=5)
    assert response.status_code == 201
    proxy = response.json()["proxies"][0]
    assert (proxy["upstream"], proxy["toxics"], proxy["listen"]) == (echo.address, [], f"127.0.0.1:{port}")
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"


def test_populate_checks_every_entry_before_changing_anything(url: str, echo: Upstream) -> None:
    body = [{"name": "ok", "listen": "127.0.0.1:0", "upstream": echo.address}, {"name": "broken"}]
    response = requests.post(f"{url}/populate", json=body, timeout=5)
    assert response.status_code == 400
    assert response.json() == {"error": "missing required field: upstream at proxy 2", "status": 400,
                               "proxies": None}
    assert requests.get(f"{url}/proxies", timeout=5).json() == {}
    assert requests.post(f"{url}/populate", data=b"{}", timeout=5).status_code == 400


def test_reset_enables_proxies_and_removes_toxics(url: str, echo: Upstream) -> None:
    _create(url, echo, name="a")
    _create(url, echo, name="b")
    requests.post(f"{url}/proxies/a", json={"enabled": False}, timeout=5)
    requests.post(f"{url}/proxies/b/toxics", json={"type": "latency", "attributes": {"latency": 1000}}, timeout=5)
    response = requests.post(f"{url}/reset", timeout=5)
    assert (response.status_code, response.content) == (204, b"")
    proxies = requests.get(f"{url}/proxies", timeout=5).json()
    assert proxies["a"]["enabled"] is True and proxies["b"]["toxics"] == []
    with connect(proxies["a"]) as sock:
        assert round_trip(sock)[0] == b"ping"


def test_browsers_unknown_routes_and_methods_are_refused(url: str) -> None:
    browser = requests.get(f"{url}/proxies", headers={"User-Agent": "Mozilla/5.0"}, timeout=5)
    assert browser.status_code == 403
    assert requests.get(f"{url}/nowhere", timeout=5).status_code == 404
    assert requests.put(f"{url}/proxies", timeout=5).status_code == 405
