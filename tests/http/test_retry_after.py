from __future__ import annotations

import email.utils

import pytest

from app.adapters.http import HttpResponse

NOW = 1_800_000_000.0


def _response(*headers: tuple[str, str]) -> HttpResponse:
    return HttpResponse(status=503, headers=dict(headers), body=b"", elapsed=0.0)


@pytest.mark.parametrize(("value", "expected"), [("120", 120.0), (" 0 ", 0.0), ("1.5", 1.5)])
def test_delta_seconds(value: str, expected: float) -> None:
    assert _response(("Retry-After", value)).retry_after(now=NOW) == expected


def test_an_http_date_counts_from_now() -> None:
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert _response(("Retry-After", date)).retry_after(now=NOW) == pytest.approx(30.0)


def test_an_http_date_in_the_past_means_no_wait() -> None:
    date = email.utils.formatdate(NOW - 3600, usegmt=True)
    assert _response(("Retry-After", date)).retry_after(now=NOW) == 0.0


@pytest.mark.parametrize("value", ["soon", "-5", "", "1e3", "Wed, 99 Foo 2026 25:61:00 GMT", "١٢"])
def test_garbage_is_none(value: str) -> None:
    assert _response(("Retry-After", value)).retry_after(now=NOW) is None


def test_absent_is_none() -> None:
    assert _response().retry_after(now=NOW) is None


def test_the_header_is_found_whatever_its_case() -> None:
    assert _response(("RETRY-AFTER", "7")).retry_after(now=NOW) == 7.0
