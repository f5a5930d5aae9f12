"""Logging setup for the server and node processes: stdlib ``logging``, one line per event.

Our own modules log through ``logging.getLogger("achilles_like...")``; Twisted's
own events (a listening port, an unhandled error in a Deferred) arrive
through its global log publisher, which :func:`setup_logging` bridges into the
standard ``twisted`` logger with ``STDLibLogObserver``. So one handler, one
level and one format cover both, and a log shipper reads one stream.

``--log-format json`` writes one JSON object per line (``time``, ``level``,
``logger``, ``message``, and ``exception`` when there is one), built with the
standard ``json`` module: the record already holds every field, a formatter
only chooses how to write it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_bridged = False


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in messages are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class _OneLine(logging.Formatter):
    """The text format, with a multi-line message (a traceback) kept on one line."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", "\\n")


def setup_logging(level: str = "warning", file: str | None = None, fmt: str = "text") -> None:
    """Send every ``achilles_like`` and Twisted log event to stderr (or ``file``) at ``level``."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, not {level!r}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JsonFormatter() if fmt == "json" else _OneLine(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    _bridge_twisted()


def _bridge_twisted() -> None:
    """Route Twisted's log events to the stdlib ``twisted`` logger (once per process)."""
    global _bridged
    from twisted.logger import STDLibLogObserver, globalLogBeginner

    if not _bridged:  # Twisted warns if logging begins twice
        _bridged = True
        globalLogBeginner.beginLoggingTo([STDLibLogObserver()], redirectStandardIO=False)
