"""The scaling figures' harness: the connection count of real processes, the table, and the document's
measured section (written between markers, never elsewhere)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench import scaling
from bench.environment import DOCS
from tests.support import wait_until


def _drain(groups: int, rate: float, captures: dict[int, int]) -> scaling.GroupDrain:
    connections = scaling.Connections(
        database={"Celery pool processes": 3 * groups, "Celery main process": 2 * groups},
        redis={"Celery pool processes": 6 * groups, "Celery main process": 3 * groups},
        processes={"Celery pool processes": 3 * groups, "Celery main process": groups},
    )
    return scaling.GroupDrain(groups, 100, 100 / rate, 100, 7.5, {"Celery pool processes": 3.0, "PostgreSQL": 1.2,
                              "bench driver": 9.0, "other processes": 0.5}, 0.9, connections, captures)


def _placement() -> scaling.Placement:
    connections = scaling.Connections(database={"order API": 4}, redis={"order API": 9}, processes={"order API": 3})
    return scaling.Placement(50, 2.0, {201: 50}, {"order API": 2.5, "PostgreSQL": 0.5, "other processes": 0.25},
                             connections)


def test_the_table_has_a_row_per_drain_with_its_ratio_to_one_group_and_its_ledger() -> None:
    db = scaling.Database("postgresql+psycopg://x", "s", "PostgreSQL test")

    text = scaling.render(db, _placement(), [_drain(1, 50.0, {1: 100}), _drain(2, 80.0, {1: 99, 2: 1})],
                          command="python -m bench.scaling")

    assert "| 1 | 3 | 50 | 1.00 | 7.50 | 90% | 5 | 9 | 100/100 |" in text
    assert "| 2 | 6 | 80 | 1.60 | 7.50 | 90% | 10 | 18 | 99/100 |" in text
    assert "| order API | 2.50 |" in text and "| all of the stack | 3.00 |" in text
    assert "answers 201: 50" in text
    # The bench driver's own CPU is not the stack's nor the machine's rest.
    assert "kernel and rest of the machine 0.50" in text


def test_the_measured_section_is_replaced_and_the_rest_of_the_document_kept(tmp_path: Path) -> None:
    document = tmp_path / "scaling.md"
    document.write_text(f"# Title\n\nbefore\n\n{scaling.BEGIN}\nold figures\n{scaling.END}\n\nafter\n")

    scaling.write_document("new figures", document)

    text = document.read_text()
    assert "old figures" not in text
    assert f"{scaling.BEGIN}\nnew figures\n{scaling.END}" in text
    assert text.startswith("# Title\n\nbefore\n") and text.endswith("\nafter\n")


def test_a_document_without_the_markers_is_refused_untouched(tmp_path: Path) -> None:
    document = tmp_path / "scaling.md"
    document.write_text("# Title\n")

    with pytest.raises(SystemExit, match="no measured section"):
        scaling.write_document("figures", document)
    assert document.read_text() == "# Title\n"


def test_connections_are_counted_per_kind_of_process_from_the_real_sockets() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    # A process whose command line reads as a Celery pool process's parent, holding two connections.
    code = (
        "import socket, sys, time\n"
        f"s = [socket.create_connection(('127.0.0.1', {port})) for _ in range(2)]\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code, "celery", " worker"], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        connections = scaling.Connections()

        def counted() -> bool:
            connections.sample([child.pid], port, None)
            return connections.database.get("Celery main process", 0) == 2

        assert wait_until(counted, timeout=10)
        assert connections.processes == {"Celery main process": 1}
        assert connections.redis == {}
    finally:
        child.kill()
        child.wait()
        listener.close()


def test_the_scaling_document_holds_measured_figures_and_is_linked() -> None:
    text = (DOCS / "scaling.md").read_text()
    section = re.search(re.escape(scaling.BEGIN) + r"(.*?)" + re.escape(scaling.END), text, re.S)

    assert section is not None
    measured = section.group(1)
    assert re.search(r"at commit `[0-9a-f]{7,}", measured)
    assert all(f"\n| {groups} | " in measured for groups in scaling.GROUPS)
    assert "scaling.md" in (DOCS / "operations.md").read_text()
    assert "docs/scaling.md" in (DOCS.parent / "README.md").read_text()
