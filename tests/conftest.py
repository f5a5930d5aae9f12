"""Shared fixtures: real local clusters on 127.0.0.1 (port 0, ready lines).

Every process a fixture starts is stopped when the fixture ends, whatever the
test did: LocalCluster kills whole process groups.

No test touches the real per-user secret file: ``XDG_CONFIG_HOME`` points at
a temporary directory for the whole session (subprocesses inherit it), and
at a fresh one for each test.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from achilles_like import LocalCluster, getClusterStatus

# Before any fixture starts a process: module-scoped clusters inherit this too.
_SESSION_CONFIG_HOME = tempfile.mkdtemp(prefix="achilles-test-config-")
os.environ["XDG_CONFIG_HOME"] = _SESSION_CONFIG_HOME
atexit.register(shutil.rmtree, _SESSION_CONFIG_HOME, ignore_errors=True)  # after every process is gone


@pytest.fixture(autouse=True)
def private_config_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty XDG_CONFIG_HOME for each test, so no stored secret leaks between tests."""
    home = tmp_path_factory.mktemp("config-home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """A server and two nodes of two processes, shared by a module's tests."""
    with LocalCluster(nodes=2, processes=2) as running:
        yield running


@pytest.fixture
def fresh_cluster() -> Iterator[LocalCluster]:
    """A private server and two nodes for a test that kills or stops things."""
    with LocalCluster(nodes=2, processes=2) as running:
        yield running


def target(cluster: LocalCluster) -> dict[str, Any]:
    """Keyword arguments that point an API call at ``cluster``."""
    return {"host": cluster.host, "port": cluster.port, "secret_key": cluster.secret_key}


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds.

    For state only observable by asking (the server's status), polling is the
    synchronisation point; the short pause only keeps the poll from spinning.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def recv_line(sock: socket.socket) -> bytes:
    """Read one header line from a raw socket, byte by byte (never past it)."""
    line = b""
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        assert byte, f"the server closed before a full line: {line!r}"
        line += byte
    return line


def status_of(cluster: LocalCluster) -> dict[str, Any]:
    """The cluster's status dict."""
    return getClusterStatus(**target(cluster))


def run_python_script(
    directory: Path,
    source: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    name: str = "script.py",
) -> subprocess.CompletedProcess[str]:
    """Run ``source`` as a script in ``directory`` (default: no ACHILLES_* setting); fail if it hangs."""
    script = directory / name
    script.write_text(textwrap.dedent(source), encoding="utf-8")
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    try:
        return subprocess.run(
            [sys.executable, str(script), *args],
            cwd=directory,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the script did not exit within {timeout}s (hang at exit?); stderr: {expired.stderr!r}")
