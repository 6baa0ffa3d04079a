"""`make run` stopped by a signal. A module of its own, so that no other stack runs beside the one it stops
and the 10 s are measured on a machine doing only that."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.stack import running_stack, stop_stack


def test_sigterm_stops_every_process_within_10_seconds(tmp_path: Path) -> None:
    with running_stack(tmp_path) as stack:
        assert stack.order().status_code == 201
        elapsed, left = stop_stack(stack, signal.SIGTERM)
    assert not left, f"still running after stop: {left}"
    assert elapsed < 10.0
    assert stack.process.returncode is not None
