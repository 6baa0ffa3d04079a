"""Every toxic, over real sockets, measured from the client's side."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from chaosproxy.client import ToxiproxyClient
from tests.chaosproxy.conftest import Sender, Upstream, connect, read_all, round_trip

MakeUpstream = Callable[[Callable[[socket.socket], None]], Upstream]


def _proxy(client: ToxiproxyClient, upstream: Upstream, name: str = "svc") -> dict[str, Any]:
    return client.create_proxy(name, "127.0.0.1:0", upstream.address)


def test_latency_delays_the_response_by_the_latency(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 200})
    with connect(proxy) as sock:
        echoed, took = round_trip(sock)
    assert echoed == b"ping"
    assert 0.195 <= took < 0.4


def test_latency_counts_from_arrival_so_chunks_overlap(client: ToxiproxyClient, make_upstream: MakeUpstream) -> None:
    sender = Sender(payload=b"abcdef", pieces=3, gap=0.1, close_after=True)
    proxy = _proxy(client, make_upstream(sender))
    client.add_toxic("svc", "latency", {"latency": 300})
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"go")
        data, _ = read_all(sock)
        took = time.monotonic() - started
    assert data == b"abcdef"
    # Three chunks 100 ms apart, each 300 ms late: ~500 ms in all, not 900.
    assert 0.45 <= took < 0.75


def test_jitter_stays_within_bounds_and_varies(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 100, "jitter": 60})
    samples = []
    with connect(proxy) as sock:
        for _ in range(12):
            samples.append(round_trip(sock)[1])
    # Never sooner than latency - jitter; the upper bound leaves room for a loaded machine's pauses.
    assert all(0.035 <= s < 0.3 for s in samples), samples
    assert max(samples) - min(samples) > 0.02


def test_bandwidth_limits_transfer_rate(client: ToxiproxyClient, make_upstream: MakeUpstream) -> None:
    proxy = _proxy(client, make_upstream(Sender(payload=b"b" * 60_000)))
    client.add_toxic("svc", "bandwidth", {"rate": 100})  # KB/s
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"go")
        data, _ = read_all(sock)
        took = time.monotonic() - started
    assert len(data) == 60_000
    assert 0.5 <= took < 0.95  # 60 KB at 100 KB/s


def test_reset_peer_resets_the_connection_after_timeout(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "reset_peer", {"timeout": 150})
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            sock.recv(1024)
        assert 0.14 <= time.monotonic() - started < 0.6


def test_timeout_drops_data_then_closes_after_the_timeout(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "timeout", {"timeout": 300})
    with connect(proxy, timeout=2) as sock:
        started = time.monotonic()
        sock.sendall(b"hello")
        assert sock.recv(1024) == b""
        assert 0.29 <= time.monotonic() - started < 0.8


def test_timeout_zero_holds_until_the_client_gives_up(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "timeout", {"timeout": 0})
    with connect(proxy, timeout=0.4) as sock:
        sock.sendall(b"hello")
        with pytest.raises(TimeoutError):
            sock.recv(1024)


def test_timeout_zero_holds_until_the_toxic_is_removed(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "timeout", {"timeout": 0})
    with connect(proxy, timeout=0.3) as sock:
        sock.sendall(b"hello")
        with pytest.raises(TimeoutError):
            sock.recv(1024)
        client.remove_toxic("svc", "timeout_downstream")
        sock.settimeout(2)
        # As in Toxiproxy, removing a timeout toxic ends the connections it held; new ones are clean.
        assert sock.recv(1024) == b""
    with connect(proxy) as sock:
        assert round_trip(sock)[0] == b"ping"


def test_slow_close_delays_the_close_not_the_data(client: ToxiproxyClient, make_upstream: MakeUpstream) -> None:
    proxy = _proxy(client, make_upstream(Sender(payload=b"bye")))
    client.add_toxic("svc", "slow_close", {"delay": 400})
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"go")
        assert sock.recv(1024) == b"bye"
        assert time.monotonic() - started < 0.2
        assert sock.recv(1024) == b""
        assert 0.39 <= time.monotonic() - started < 0.8


def test_limit_data_cuts_the_body(client: ToxiproxyClient, make_upstream: MakeUpstream) -> None:
    proxy = _proxy(client, make_upstream(Sender(payload=bytes(range(100)), close_after=False)))
    client.add_toxic("svc", "limit_data", {"bytes": 10})
    with connect(proxy) as sock:
        sock.sendall(b"go")
        data, _ = read_all(sock)
    assert data == bytes(range(10))


def test_slicer_delivers_in_pieces(client: ToxiproxyClient, make_upstream: MakeUpstream) -> None:
    payload = bytes(range(200))
    proxy = _proxy(client, make_upstream(Sender(payload=payload)))
    client.add_toxic("svc", "slicer", {"average_size": 20, "size_variation": 5, "delay": 20_000})
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"go")
        data, pieces = read_all(sock)
        took = time.monotonic() - started
    assert data == payload
    assert len(pieces) >= 6
    assert max(len(p) for p in pieces) <= 40
    assert took >= 0.1  # >= 6 pieces, 20 ms apart


def test_upstream_toxic_acts_on_what_the_client_sends(client: ToxiproxyClient, make_upstream: MakeUpstream) -> None:
    received: list[bytes] = []

    def record(conn: socket.socket) -> None:
        while data := conn.recv(1024):
            received.append(data)
        received.append(b"<eof>")

    proxy = _proxy(client, make_upstream(record))
    client.add_toxic("svc", "limit_data", {"bytes": 4}, stream="upstream")
    with connect(proxy) as sock:
        sock.sendall(b"abcdefgh")
        assert read_all(sock)[0] == b""  # the upstream side closed, so the client is closed too
    deadline = time.monotonic() + 2
    while b"<eof>" not in received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b"".join(received) == b"abcd<eof>"


def test_upstream_latency_delays_the_request(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 150}, stream="upstream")
    with connect(proxy) as sock:
        assert 0.145 <= round_trip(sock)[1] < 0.35


def test_toxicity_zero_spares_and_one_hits_every_connection(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 300}, name="spared", toxicity=0.0)
    for _ in range(5):
        with connect(proxy) as sock:
            assert round_trip(sock)[1] < 0.25
    client.update_toxic("svc", "spared", toxicity=1.0)
    with connect(proxy) as sock:
        assert round_trip(sock)[1] >= 0.29


def test_toxicity_is_decided_per_connection(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 150}, toxicity=0.5)
    slow = 0
    for _ in range(16):
        with connect(proxy) as sock:
            first = round_trip(sock)[1] >= 0.14
            # The same connection keeps its fate for every request.
            assert (round_trip(sock)[1] >= 0.14) == first
            slow += first
    assert 1 <= slow <= 15


def test_toxics_added_updated_and_removed_on_open_connections(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    # Without a toxic a round trip takes a few ms; the bounds sit just below the latencies they rule out.
    with connect(proxy) as sock:
        assert round_trip(sock)[1] < 0.14
        client.add_toxic("svc", "latency", {"latency": 150})
        assert round_trip(sock)[1] >= 0.145
        client.update_toxic("svc", "latency_downstream", {"latency": 300})
        assert round_trip(sock)[1] >= 0.295
        client.add_toxic("svc", "bandwidth", {"rate": 1000}, stream="upstream")
        client.remove_toxic("svc", "latency_downstream")
        echoed, took = round_trip(sock, b"x" * 5000)
        assert (echoed, took < 0.25) == (b"x" * 5000, True)
        client.remove_toxic("svc", "bandwidth_upstream")
        assert round_trip(sock)[1] < 0.14


def test_removing_a_latency_toxic_releases_held_data_at_once(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 3000})
    with connect(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"held")
        time.sleep(0.1)
        client.remove_toxic("svc", "latency_downstream")
        assert sock.recv(1024) == b"held"
        assert time.monotonic() - started < 1.0


def test_large_transfer_passes_intact_through_a_toxic_chain(client: ToxiproxyClient, echo: Upstream) -> None:
    proxy = _proxy(client, echo)
    client.add_toxic("svc", "latency", {"latency": 5, "jitter": 5})
    client.add_toxic("svc", "slicer", {"average_size": 3000, "size_variation": 1000, "delay": 0})
    payload = bytes(range(256)) * 8000  # 2 MB, more than a direction may hold
    with connect(proxy, timeout=10) as sock:
        echoed, _ = round_trip(sock, payload)
    assert echoed == payload
