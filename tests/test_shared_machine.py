"""A shared machine, end to end on 127.0.0.1: no peer without a secret, and no secret in tasks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import target

import achilles_like
from achilles_like import LocalCluster
from achilles_like.client.connection import Connection
from achilles_like.config import Settings
from achilles_like.errors import AuthenticationError
from achilles_like.secret_store import secret_path

MODULE = [sys.executable, "-m", "achilles_like"]


def secret_in_environment(_: object) -> str | None:
    """The cluster secret as a task sees it in its environment (None when it is not there)."""
    return os.environ.get("ACHILLES_SECRET_KEY")


@pytest.fixture
def unconfigured_server(private_config_home: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """`achilles server` on 127.0.0.1 with no secret configured: its port and its stderr log."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env["ACHILLES_NO_DOTENV"] = "1"
    log_path = tmp_path / "server.log"
    with open(log_path, "w", encoding="utf-8") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "achilles_like", "server", "--host", "127.0.0.1", "--port", "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
            text=True,
            start_new_session=True,
        )
    try:
        assert server.stdout is not None
        ready = re.search(r"listening on 127\.0\.0\.1:(\d+)", server.stdout.readline())
        assert ready is not None, log_path.read_text(encoding="utf-8")
        yield int(ready.group(1)), log_path
    finally:
        server.kill()
        server.wait(30)
        for stream in (server.stdin, server.stdout):
            if stream is not None:
                stream.close()


def test_server_without_a_secret_accepts_only_peers_that_read_the_stored_one(
    unconfigured_server: tuple[int, Path], tmp_path: Path
) -> None:
    """With no secret configured the server stores one (0600) and logs where; an empty secret is refused,
    the same user's unconfigured admin call and `--secret-key-file` both get in."""
    port, log_path = unconfigured_server
    stored = secret_path()
    assert oct(stored.stat().st_mode & 0o777) == "0o600"
    assert str(stored) in log_path.read_text(encoding="utf-8")
    with pytest.raises(AuthenticationError, match="authentication failed"):
        Connection.open(
            Settings(host="127.0.0.1", port=port, secret_key="not-the-stored-secret"), role="admin"
        )
    # Another local user: no secret at all, and no access to our file.
    with pytest.raises(AuthenticationError):
        Connection.open(Settings(host="127.0.0.1", port=port, secret_key=""), role="admin")
    assert achilles_like.getClusterStatus("127.0.0.1", port)["nodes"] == []
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "elsewhere")  # the file, not the stored secret, is what counts
    result = subprocess.run(
        [*MODULE, "status", "--json", "--port", str(port), "--secret-key-file", str(stored)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"nodes": []' in result.stdout


def test_tasks_do_not_inherit_the_cluster_secret() -> None:
    """A task's environment has no ACHILLES_SECRET_KEY, though its node was given the secret that way."""
    with LocalCluster(nodes=1, processes=1) as cluster:
        assert achilles_like.map(secret_in_environment, range(2), **target(cluster)) == [None, None]
