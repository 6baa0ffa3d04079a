"""The one log stream's formats: JSON lines for machines, prefixed text lines for a person at a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
import threading
from collections.abc import Iterator

import pytest

from app import logs
from app.logs import JsonFormatter, TextFormatter, forward_line, log_format, log_level, log_line, name_thread

TEXT_LINE = re.compile(r"(?P<process>[a-z]+) +\| (?P<time>\d\d:\d\d:\d\d) (?P<level>[A-Z]+) +(?P<rest>.*)")


def record(msg: str = "circuit isolated", *args: object, level: int = logging.WARNING, name: str = "orderflow.admin",
           exc: bool = False, **fields: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys

            exc_info = sys.exc_info()
    made = logging.LogRecord(name, level, __file__, 1, msg, args or None, exc_info)
    for key, value in fields.items():
        setattr(made, key, value)
    return made


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def root_logging() -> Iterator[io.StringIO]:
    """The root logger with only OrderFlow's handler, writing JSON into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    root.handlers = [logs.log_handler("supervisor", fmt="json", stream=stream)]
    try:
        yield stream
    finally:
        root.handlers, root.level = saved


def test_a_json_line_carries_the_fields_the_app_always_had_and_the_process() -> None:
    line = JsonFormatter("api").format(record("circuit %s", "isolated", event="circuit_isolated", service="payment"))
    entry = json.loads(line)
    assert entry["process"] == "api"
    assert (entry["level"], entry["logger"], entry["msg"]) == ("warning", "orderflow.admin", "circuit isolated")
    assert (entry["event"], entry["service"]) == ("circuit_isolated", "payment")
    assert isinstance(entry["pid"], int) and entry["ts"].endswith("+00:00")
    assert "\n" not in line


def test_a_json_line_keeps_a_traceback_in_one_field_and_structured_fields_as_json() -> None:
    entry = json.loads(JsonFormatter("worker").format(
        record("Task %s received", "t", name="celery.worker.strategy", exc=True, data={"id": "t", "n": (1, 2)})))
    assert entry["exc"].startswith("Traceback") and "RuntimeError: boom" in entry["exc"]
    assert entry["data"] == {"id": "t", "n": [1, 2]}


def test_a_text_line_is_prefixed_by_its_process_then_time_level_message_and_fields() -> None:
    line = TextFormatter("api").format(record("order placed", level=logging.INFO, event="order_placed",
                                              order_id="o-1", note="two words"))
    assert line.startswith("api          | ")
    match = TEXT_LINE.fullmatch(line)
    assert match, line
    assert (match["process"], match["level"]) == ("api", "INFO")
    # The event name repeats the message: only the fields follow it, a value with a space quoted.
    assert match["rest"] == 'order placed order_id=o-1 note="two words"'


def test_a_text_line_leaves_out_fields_its_message_states_and_structured_ones() -> None:
    line = TextFormatter("api").format(record("BreakerTransition service=payment to_state=open", service="payment",
                                              to_state="open", attempt=2, data={"id": 1}))
    assert line.endswith("BreakerTransition service=payment to_state=open attempt=2")


def test_every_line_of_a_text_traceback_carries_the_prefix() -> None:
    lines = TextFormatter("notification").format(record("sender raised", exc=True)).splitlines()
    assert len(lines) > 2
    assert all(line.startswith("notification | ") for line in lines), lines
    assert lines[-1] == "notification | RuntimeError: boom"


def test_a_named_thread_logs_as_its_own_process() -> None:
    name_thread("test-outbox-relay", "relay")
    formatter = JsonFormatter("worker")
    seen: list[str] = []

    def log_once() -> None:
        seen.append(json.loads(formatter.format(record("relay pass failed")))["process"])

    thread = threading.Thread(target=log_once, name="test-outbox-relay")
    thread.start()
    thread.join()
    log_once()
    assert seen == ["relay", "worker"]


@pytest.mark.parametrize(("variable", "terminal", "chosen"), [
    (None, True, "text"), (None, False, "json"), ("json", True, "json"), ("text", False, "text"),
    ("TEXT", False, "text"), (" ", True, "text"),
])
def test_the_format_is_the_variable_else_text_for_a_terminal_only(
    variable: str | None, terminal: bool, chosen: str
) -> None:
    env = {} if variable is None else {"ORDERFLOW_LOG_FORMAT": variable}
    assert log_format(env, Terminal() if terminal else io.StringIO()) == chosen


def test_a_bad_format_or_level_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="ORDERFLOW_LOG_FORMAT: json or text, got 'yaml'"):
        log_format({"ORDERFLOW_LOG_FORMAT": "yaml"})
    with pytest.raises(ValueError, match="ORDERFLOW_LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        log_level({"ORDERFLOW_LOG_LEVEL": "loud"})
    assert log_level({}) == "INFO" and log_level({"ORDERFLOW_LOG_LEVEL": "debug"}) == "DEBUG"


def test_the_libraries_log_from_warning_up_unless_the_stack_is_quieter() -> None:
    assert logs.library_level("DEBUG") == logs.library_level("INFO") == logging.WARNING
    assert logs.library_level("ERROR") == logs.library_level(logging.ERROR) == logging.ERROR


def test_a_line_another_process_formatted_passes_as_it_is(root_logging: io.StringIO) -> None:
    formatted_json = JsonFormatter("api").format(record("Booting worker with pid: 7", name="gunicorn.error"))
    formatted_text = TextFormatter("worker").format(record("celery@host ready.", name="celery.apps.worker"))
    for line in (formatted_json, formatted_text):
        forward_line(line, process="api", pid=7, level=logging.ERROR, source="stderr")
    assert root_logging.getvalue().splitlines() == [formatted_json, formatted_text]


def test_a_stray_line_is_logged_in_the_name_of_the_process_that_wrote_it(root_logging: io.StringIO) -> None:
    forward_line("Traceback (most recent call last):", process="worker", pid=4242, level=logging.ERROR,
                 source="stderr")
    forward_line("   ", process="worker", pid=4242, level=logging.ERROR, source="stderr")
    log_line("Ready to accept connections", process="redis", pid=99, level=logging.INFO, source="redis-server")
    first, second = (json.loads(line) for line in root_logging.getvalue().splitlines())
    assert {k: first[k] for k in ("process", "pid", "level", "logger", "msg")} == {
        "process": "worker", "pid": 4242, "level": "error", "logger": "stderr",
        "msg": "Traceback (most recent call last):"}
    assert {k: second[k] for k in ("process", "pid", "level", "logger")} == {
        "process": "redis", "pid": 99, "level": "info", "logger": "redis-server"}


def test_configuring_twice_keeps_one_handler_and_sets_the_stack_levels(root_logging: io.StringIO) -> None:
    root = logging.getLogger()
    root.handlers = []
    saved = {name: logging.getLogger(name).level for name in logs.STACK_LOGGERS}
    try:
        logs.configure_logging("chaosproxy", level="INFO", fmt="text", stream=root_logging)
        logs.configure_logging("api", level="DEBUG", fmt="json", stream=root_logging)
        assert len(root.handlers) == 1
        assert root.level == logging.WARNING
        assert {logging.getLogger(name).level for name in logs.STACK_LOGGERS} == {logging.INFO}
        logging.getLogger("chaosproxy").info("populated %d proxies", 3)
        logging.getLogger("kombu").info("not a line of the stack")
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)
    [line] = root_logging.getvalue().splitlines()
    assert TEXT_LINE.fullmatch(line) and line.startswith("chaosproxy   | ") and line.endswith("populated 3 proxies")
