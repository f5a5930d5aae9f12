"""Server and node logs: stdlib logging, one line per event, text or JSON, to stderr or a file."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import tasks
from conftest import target, wait_until

from achilles_like import LocalCluster, getClusterStatus, map
from achilles_like.errors import AuthenticationError
from achilles_like.logs import JsonFormatter, setup_logging


def record(message: str, exc: bool = False) -> logging.LogRecord:
    """A log record as a logger would make it."""
    exc_info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("achilles_like.server", logging.WARNING, __file__, 1, message, (), exc_info)


def test_json_lines_hold_one_object_each_even_with_a_traceback() -> None:
    """A record, traceback included, becomes one line of JSON with time, level, logger and message."""
    line = JsonFormatter().format(record("refused 10.0.0.1:5: bad\nsecond line", exc=True))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "warning" and entry["logger"] == "achilles_like.server"
    assert entry["message"] == "refused 10.0.0.1:5: bad\nsecond line"
    assert "ValueError: boom" in entry["exception"] and entry["time"].endswith("+00:00")


@pytest.mark.parametrize(
    ("level", "fmt", "wrong"), [("loud", "text", "log level"), ("info", "xml", "log format")]
)
def test_bad_logging_options_are_named(level: str, fmt: str, wrong: str) -> None:
    """An unknown level or format is refused with the accepted values."""
    with pytest.raises(ValueError, match=wrong):
        setup_logging(level, None, fmt)


def test_the_server_logs_jobs_nodes_and_refusals_as_json(tmp_path: Path) -> None:
    """A server with --log-format json --log-file writes job start/end, node join/leave and refusals."""
    log_file = tmp_path / "server.log"
    options = ("--log-level", "info", "--log-format", "json", "--log-file", str(log_file))
    with LocalCluster(nodes=1, processes=1, server_args=options) as cluster:
        assert map(tasks.square, range(10), **target(cluster)) == [x * x for x in range(10)]
        with pytest.raises(AuthenticationError):
            getClusterStatus(cluster.host, cluster.port, secret_key="not the secret")
        cluster.kill_node(0)

        def logged() -> list[dict[str, str]]:
            return [json.loads(line) for line in log_file.read_text().splitlines()]

        wait_until(lambda: any(" left: " in e["message"] for e in logged()), what="the node's departure")
    messages = [entry["message"] for entry in logged()]
    assert any(m.startswith("node n") and "registered" in m for m in messages)
    assert any(m.startswith("job 1 started: ") for m in messages)
    assert any(m.startswith("job 1 ended: done after") and "10 tasks done, 0 retries" in m for m in messages)
    assert any(m.startswith("refused 127.0.0.1:") for m in messages)
    assert any(entry["logger"] == "twisted" for entry in logged())  # Twisted's own events, bridged
