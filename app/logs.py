"""One log stream: every process of the stack writes the same lines, each naming the process that wrote it.

JSON, one object per line: `ts`, `process`, `level`, `logger`, `msg`, `pid`, then the event's own fields
(and `exc` for a traceback). Text, for a person at a terminal:
`api          | 12:00:01 WARNING circuit isolated service=payment`, every line of a traceback under the same prefix.
ORDERFLOW_LOG_FORMAT (`json` or `text`) chooses; unset, a terminal gets text and anything else JSON.
`make run` decides for its own output and tells the processes it starts, whose output reaches it through
pipes (where they could not tell a terminal themselves).

Each entry point names its process when it configures logging: gunicorn (`logconfig_dict`), the Celery worker
(`setup_logging`), the supervisor, the simulators and the chaos proxy. A thread can carry a name of its own
(the outbox relay in the worker's main process), and a line another process wrote can be logged in its name
(what the supervisor does with redis-server's lines and any stray output of its children).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

FORMAT_VARIABLE = "ORDERFLOW_LOG_FORMAT"
LEVEL_VARIABLE = "ORDERFLOW_LOG_LEVEL"
FORMATS = ("json", "text")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# The loggers of OrderFlow and of the servers it runs log at the stack's level; the other libraries' only
# from WARNING up (alembic, kombu or urllib3 at INFO would bury the stack's own lines).
STACK_LOGGERS = ("orderflow", "gunicorn", "celery", "chaosproxy", "simulators")
PREFIX_WIDTH = 12  # "notification", the longest process name: the text columns line up
_JSON_START = '{"ts": "'
_TEXT_BAR = " | "

# Attributes every record has, and the two this module sets: none of them is an event field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName", "process_name", "verbatim"}
_SCALARS = (str, int, float, bool, type(None))
_thread_processes: dict[str, str] = {}


def log_format(env: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> str:
    """`json` or `text`: ORDERFLOW_LOG_FORMAT, else text when `stream` (stderr) is a terminal."""
    env = os.environ if env is None else env
    chosen = env.get(FORMAT_VARIABLE, "").strip().lower()
    if not chosen:
        stream = sys.stderr if stream is None else stream
        try:
            return "text" if stream.isatty() else "json"
        except (AttributeError, ValueError):  # no stream, or a closed one
            return "json"
    if chosen not in FORMATS:
        raise ValueError(f"{FORMAT_VARIABLE}: json or text, got {env[FORMAT_VARIABLE]!r}")
    return chosen


def log_level(env: Mapping[str, str] | None = None) -> str:
    """ORDERFLOW_LOG_LEVEL, INFO when unset."""
    env = os.environ if env is None else env
    level = env.get(LEVEL_VARIABLE, "").strip().upper() or "INFO"
    if level not in LEVELS:
        raise ValueError(f"{LEVEL_VARIABLE}: one of {', '.join(LEVELS)}, got {env[LEVEL_VARIABLE]!r}")
    return level


def library_level(level: str | int) -> int:
    """The level of the libraries' loggers (the root's) for the stack's `level`: WARNING, or above when it is."""
    number = level if isinstance(level, int) else logging.getLevelName(level.upper())
    return max(logging.WARNING, number if isinstance(number, int) else logging.INFO)


def name_thread(thread_name: str, process: str) -> None:
    """Lines logged by the thread called `thread_name` name `process` rather than the process they run in."""
    _thread_processes[thread_name] = process


def _jsonable(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return str(value)


class _ProcessFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def process_of(self, record: logging.LogRecord) -> str:
        named: str | None = getattr(record, "process_name", None)
        return named or _thread_processes.get(record.threadName or "") or self.process

    @staticmethod
    def fields(record: logging.LogRecord) -> dict[str, Any]:
        """The event's own fields: what the call passed in `extra`."""
        return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "verbatim", False):  # formatted by the process that wrote it
            return record.getMessage()
        return self.render(record)

    def render(self, record: logging.LogRecord) -> str:
        raise NotImplementedError


class JsonFormatter(_ProcessFormatter):
    def render(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "process": self.process_of(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in self.fields(record).items():
            entry[key] = _jsonable(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class TextFormatter(_ProcessFormatter):
    """`process      | HH:MM:SS LEVEL message key=value ...`, local time; a traceback follows under the prefix.

    The event name and the fields the message already states are left out, and so are structured fields
    (Celery's `data`, say): the JSON format has them all."""

    def render(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        pairs = []
        for key, value in self.fields(record).items():
            if key == "event" or not isinstance(value, _SCALARS):
                continue
            text = str(value)
            if not text or any(c.isspace() or c in '"=' for c in text):
                text = json.dumps(text)
            if f"{key}={text}" not in message and f"{key}={value}" not in message:
                pairs.append(f"{key}={text}")
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        lines = [" ".join([f"{stamp} {record.levelname:<5}", message, *pairs])]
        if record.exc_info:
            lines.append(self.formatException(record.exc_info))
        if record.stack_info:
            lines.append(self.formatStack(record.stack_info))
        prefix = f"{self.process_of(record):<{PREFIX_WIDTH}}{_TEXT_BAR}"
        return "\n".join(prefix + line for line in "\n".join(lines).splitlines())


def make_formatter(process: str, fmt: str) -> logging.Formatter:
    return TextFormatter(process) if fmt == "text" else JsonFormatter(process)


class LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler of a process, on the root logger: what carries it is configured already."""


def log_handler(process: str, *, fmt: str | None = None, stream: IO[str] | None = None) -> logging.Handler:
    """A handler writing `process`'s lines to `stream` (stderr) in `fmt` (ORDERFLOW_LOG_FORMAT's choice); the
    factory gunicorn's `logconfig_dict` names."""
    stream = sys.stderr if stream is None else stream
    handler = LogHandler(stream)
    handler.setFormatter(make_formatter(process, fmt or log_format(stream=stream)))
    return handler


def configure_logging(process: str = "api", *, level: str | int | None = None, fmt: str | None = None,
                      stream: IO[str] | None = None) -> None:
    """Route every logger of this process through one handler on the root logger, once.

    `level` is the stack's loggers' (the root's follows, see `library_level`); without it only OrderFlow's
    are set, to ORDERFLOW_LOG_LEVEL, and the root keeps its own (an app embedded in another program). A
    process whose logging is configured already (gunicorn's `logconfig_dict`) is left as it is."""
    root = logging.getLogger()
    if any(isinstance(handler, LogHandler) for handler in root.handlers):
        return
    root.addHandler(log_handler(process, fmt=fmt, stream=stream))
    logging.getLogger("orderflow").propagate = True
    if level is None:
        logging.getLogger("orderflow").setLevel(log_level())
        return
    root.setLevel(library_level(level))
    for name in STACK_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)  # a warning is a line of the stream too, not text printed beside it


def log_line(message: str, *, process: str, pid: int, level: int, source: str) -> None:
    """Log `message` as a line of another process (`pid`, called `process`), under the logger `source`."""
    record = logging.LogRecord(source, level, "", 0, message, None, None)
    record.process = pid
    record.process_name = process
    logging.getLogger(source).handle(record)


def forward_line(line: str, *, process: str, pid: int, level: int, source: str) -> None:
    """A line another process wrote: as it is when that process formatted it already (the stack's processes
    do), else logged in that process's name (a stray print, a traceback written before logging worked)."""
    if not line.strip():  # the blank lines around a banner or a warning say nothing under a prefix
        return
    name, bar, _ = line.partition(_TEXT_BAR)
    if line.startswith(_JSON_START) or (bar and len(name) == PREFIX_WIDTH and name.rstrip().isalpha()):
        record = logging.LogRecord(source, level, "", 0, line, None, None)
        record.verbatim = True
        logging.getLogger(source).handle(record)
    else:
        log_line(line, process=process, pid=pid, level=level, source=source)


__all__ = ["FORMAT_VARIABLE", "LEVEL_VARIABLE", "STACK_LOGGERS", "JsonFormatter", "TextFormatter", "configure_logging",
           "forward_line", "library_level", "log_format", "log_handler", "log_level", "log_line", "name_thread"]
