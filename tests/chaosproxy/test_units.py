"""Timing and parsing logic of the toxics, with injected randomness: no sockets, no sleeping."""

from __future__ import annotations

import asyncio
import random

import pytest

from chaosproxy.errors import ApiError
from chaosproxy.model import Toxic, parse_new_toxic, parse_toxic_update
from chaosproxy.pipe import Chunk, Pipe
from chaosproxy.toxics import Stage, latency_delay, slice_offsets


def test_latency_delay_without_jitter_is_the_latency() -> None:
    assert latency_delay(250, 0, random.Random(1)) == 0.25


def test_latency_delay_jitter_spans_minus_to_plus_jitter() -> None:
    rng = random.Random(7)
    delays = [latency_delay(100, 20, rng) for _ in range(2000)]
    assert min(delays) == pytest.approx(0.080) and max(delays) == pytest.approx(0.119)


@pytest.mark.parametrize("size", [0, 1, 7, 100, 4096, 32_768])
def test_slices_cover_the_chunk_in_order_within_the_variation(size: int) -> None:
    pieces = slice_offsets(size, 100, 30, random.Random(size))
    assert pieces[0][0] == 0 and pieces[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(pieces, pieces[1:], strict=False))
    assert all(end - start <= 130 for start, end in pieces)


def test_slices_survive_zero_sizes() -> None:
    assert slice_offsets(5, 0, 0, random.Random(0)) == [(i, i + 1) for i in range(5)]


def test_toxic_parsing_fills_defaults_and_ignores_unknown_attributes() -> None:
    toxic = parse_new_toxic(b'{"type": "slicer", "stream": "UPSTREAM", "attributes": {"delay": 5, "x": 1}}')
    assert toxic == Toxic("slicer_upstream", "slicer", "upstream", 1.0,
                          {"average_size": 0, "size_variation": 0, "delay": 5})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"type": "latency", "attributes": {"latency": 1.5}}',
         "bad request body: json: cannot unmarshal number 1.5 into Go struct field "
         "LatencyToxic.attributes.latency of type int64"),
        (b'{"type": "latency", "toxicity": "all"}',
         "bad request body: json: cannot unmarshal string into Go struct field ToxicWrapper.toxicity "
         "of type float32"),
        (b'{"type": "latency", "stream": ""}', "stream was invalid, can be either upstream or downstream"),
    ],
)
def test_toxic_parsing_errors_read_like_toxiproxys(body: bytes, message: str) -> None:
    with pytest.raises(ApiError) as error:
        parse_new_toxic(body)
    assert error.value.message == message and error.value.status == 400


def test_toxic_update_keeps_what_it_does_not_name() -> None:
    toxic = Toxic("slow", "latency", "downstream", 0.5, {"latency": 10, "jitter": 3})
    updated = parse_toxic_update(toxic, b'{"attributes": {"jitter": 0}}')
    assert updated == Toxic("slow", "latency", "downstream", 0.5, {"latency": 10, "jitter": 0})


class _Collect:
    def __init__(self) -> None:
        self.items: list[bytes] = []
        self.closed = False

    def put(self, chunk: Chunk) -> None:
        self.items.append(chunk.data)

    def close(self) -> None:
        self.closed = True


def _stage(toxic: Toxic, outlet: _Collect, sleeps: list[float]) -> Stage:
    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return Stage(toxic, outlet, release=lambda n: None, clock=lambda: 100.0, rng=random.Random(0),
                 sleep=fake_sleep)


def test_bandwidth_sleeps_in_proportion_to_bytes() -> None:
    async def scenario() -> tuple[list[bytes], list[float], bool]:
        outlet, sleeps = _Collect(), []
        stage = _stage(Toxic("bw", "bandwidth", "downstream", 1.0, {"rate": 10}), outlet, sleeps)
        stage.start()
        stage.inlet.put(Chunk(b"a" * 2500, 100.0))  # 2.5 KB at 10 KB/s: 1000-byte slices every 100 ms
        stage.inlet.close()
        for _ in range(20):
            await asyncio.sleep(0)
        return outlet.items, sleeps, outlet.closed

    items, sleeps, closed = asyncio.run(scenario())
    assert [len(i) for i in items] == [1000, 1000, 500]
    assert sleeps == [0.1, 0.1, pytest.approx(0.05)]
    assert closed


def test_limit_data_passes_exactly_the_limit_then_closes() -> None:
    async def scenario() -> tuple[list[bytes], bool]:
        outlet, sleeps = _Collect(), []
        stage = _stage(Toxic("cap", "limit_data", "downstream", 1.0, {"bytes": 5}), outlet, sleeps)
        stage.start()
        for part in (b"abc", b"defg", b"hij"):
            stage.inlet.put(Chunk(part, 100.0))
        for _ in range(10):
            await asyncio.sleep(0)
        return outlet.items, outlet.closed

    assert asyncio.run(scenario()) == ([b"abc", b"de"], True)


def test_interrupted_latency_passes_its_held_chunk_on_at_once() -> None:
    async def scenario() -> list[bytes]:
        outlet = _Collect()
        stage = Stage(Toxic("slow", "latency", "downstream", 1.0, {"latency": 60_000}), outlet,
                      release=lambda n: None, clock=asyncio.get_running_loop().time, rng=random.Random(0))
        stage.start()
        stage.inlet.put(Chunk(b"first", asyncio.get_running_loop().time()))
        stage.inlet.put(Chunk(b"second", asyncio.get_running_loop().time()))
        await asyncio.sleep(0.01)
        stage.interrupt()
        return outlet.items + [c.data for c in stage.inlet.drain()]

    assert asyncio.run(scenario()) == [b"first", b"second"]


def test_pipe_end_of_stream_is_sticky() -> None:
    async def scenario() -> list[object]:
        pipe = Pipe(lambda n: None)
        pipe.put(Chunk(b"x", 0.0))
        pipe.close()
        return [(await pipe.get()).data, await pipe.get(), await pipe.get(), await pipe.wait(0.001)]

    assert asyncio.run(scenario()) == [b"x", None, None, True]
