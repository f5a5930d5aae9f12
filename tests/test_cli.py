"""The ``achilles`` command (and ``python -m achilles_like``), run as real processes.

Each command runs with a clean environment (no ``ACHILLES_*`` variable) in a
temporary directory without a ``.env``, unless a test passes settings on
purpose. Every subprocess call has a timeout; long-running commands are
started with Popen and killed in ``finally``.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import tasks
from conftest import status_of, target, wait_until

import achilles_like
from achilles_like import LocalCluster

MODULE = [sys.executable, "-m", "achilles_like"]
QUICK = 60.0  # seconds for a command that only parses arguments or talks to a running cluster
SLOW = 180.0  # seconds for a command that starts a cluster of its own

SUBCOMMAND_OPTIONS = {
    "server": [
        "--host",
        "--port",
        "--username",
        "--secret-key",
        "--secret-key-file",
        "--heartbeat-interval",
        "--heartbeat-timeout",
    ],
    "node": ["--host", "--port", "--secret-key", "--secret-key-file", "--processes"],
    "status": ["--host", "--port", "--username", "--secret-key", "--secret-key-file", "--json"],
    "kill": [
        "--host",
        "--port",
        "--username",
        "--secret-key",
        "--secret-key-file",
        "-y",
        "--yes",
        "--server",
    ],
    "genconfig": ["--host", "--port", "--username", "--secret-key", "--secret-key-file", "--path"],
    "demo": ["--nodes", "--processes", "--items", "--chunksize"],
}


def clean_env(**settings: str) -> dict[str, str]:
    """The current environment without any ACHILLES_* variable, plus the given ACHILLES_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env.update({f"ACHILLES_{key.upper()}": value for key, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cluster_env(cluster: LocalCluster) -> dict[str, str]:
    """A clean environment whose ACHILLES_* variables point at ``cluster``."""
    return clean_env(host=cluster.host, port=str(cluster.port), secret_key=cluster.secret_key)


def run(
    args: Sequence[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = QUICK
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with no stdin (so never a terminal) and capture its output."""
    return subprocess.run(
        list(args),
        cwd=cwd,
        env=clean_env() if env is None else env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_line(process: subprocess.Popen[str], timeout: float = QUICK) -> str:
    """The next line of the process's stdout; fail if none arrives within ``timeout``."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            pytest.fail(f"no output from {process.args} within {timeout}s")
    return process.stdout.readline()


def stop(process: subprocess.Popen[str]) -> None:
    """Kill a process this module started, and its process group, if it is still running."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait(QUICK)
    for stream in (process.stdout, process.stderr, process.stdin):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="module")
def achilles_script() -> str:
    """The path of the installed ``achilles`` console script."""
    path = shutil.which("achilles")
    assert path is not None, "the achilles console script is not on PATH (pip install -e .)"
    return path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """An ``achilles server`` on 127.0.0.1 with a free port and no nodes, and its port."""
    process = subprocess.Popen(
        [*MODULE, "server", "--host", "127.0.0.1", "--port", "0"],
        cwd=tmp_path,
        env=clean_env(secret_key="cli-test-secret"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line = read_line(process)
        prefix = "achilles_like server listening on 127.0.0.1:"
        assert line.startswith(prefix), line
        yield process, int(line[len(prefix) :])
    finally:
        stop(process)


# -- help and version ---------------------------------------------------------


def test_top_level_help_lists_every_subcommand(achilles_script: str, tmp_path: Path) -> None:
    """`achilles --help` exits 0 and lists every subcommand and top-level option."""
    result = run([achilles_script, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: achilles ")
    for word in ("server", "node", "status", "kill", "genconfig", "demo", "--version", "--verbose"):
        assert word in result.stdout, word
    assert result.stderr == ""


def test_module_and_script_print_the_same_help(achilles_script: str, tmp_path: Path) -> None:
    """`python -m achilles_like --help` prints exactly what the `achilles` script prints."""
    script = run([achilles_script, "--help"], tmp_path)
    module = run([*MODULE, "--help"], tmp_path)
    assert (module.returncode, module.stdout) == (script.returncode, script.stdout)


def test_version(achilles_script: str, tmp_path: Path) -> None:
    """`achilles --version` prints the package version and exits 0."""
    result = run([achilles_script, "--version"], tmp_path)
    assert (result.returncode, result.stdout) == (0, f"achilles_like {achilles_like.__version__}\n")


@pytest.mark.parametrize("command", sorted(SUBCOMMAND_OPTIONS))
def test_subcommand_help_mentions_each_option(command: str, achilles_script: str, tmp_path: Path) -> None:
    """`achilles COMMAND --help` exits 0 and mentions every option the subcommand defines."""
    result = run([achilles_script, command, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: achilles {command} ")
    words = result.stdout.replace(",", " ").replace("[", " ").replace("]", " ").split()
    for option in SUBCOMMAND_OPTIONS[command]:
        assert option in words, option
    assert "--watch-stdin" not in result.stdout  # internal to LocalCluster, hidden


def test_missing_subcommand_is_a_usage_error(achilles_script: str, tmp_path: Path) -> None:
    """`achilles` with no subcommand exits 2 with a usage message on stderr."""
    result = run([achilles_script], tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: achilles ")


# -- genconfig ----------------------------------------------------------------


def test_genconfig_writes_the_file_with_mode_0600(achilles_script: str, tmp_path: Path) -> None:
    """`achilles genconfig --path X ...` writes exactly those values to X with mode 0600."""
    path = tmp_path / "conf" / "cluster.env"
    path.parent.mkdir()
    args = ["genconfig", "--path", str(path), "--host", "127.0.0.1", "--port", "1234", "--secret-key", "s"]
    result = run([achilles_script, *args], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {path.resolve()} (mode 0600)\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text(encoding="utf-8") == "HOST=127.0.0.1\nPORT=1234\nUSERNAME=\nSECRET_KEY=s\n"
    assert not (tmp_path / ".env").exists()


def test_genconfig_default_path_is_the_working_directory(achilles_script: str, tmp_path: Path) -> None:
    """`achilles genconfig` without --path writes .env in the working directory with a generated secret."""
    result = run([achilles_script, "genconfig"], tmp_path)
    assert result.returncode == 0, result.stderr
    written = tmp_path / ".env"
    assert result.stdout == f"wrote {written.resolve()} (mode 0600)\n"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    settings = achilles_like.load_settings(environ={}, env_file=written)
    assert (settings.host, settings.port, settings.username) == ("127.0.0.1", 9999, "")
    assert len(settings.secret_key) >= 40


# -- server -------------------------------------------------------------------


def test_server_on_all_interfaces_without_secret_exits_1(achilles_script: str, tmp_path: Path) -> None:
    """`achilles server --host 0.0.0.0` with no secret anywhere exits 1 and names SECRET_KEY on stderr."""
    assert not (tmp_path / ".env").exists()
    result = run([achilles_script, "server", "--host", "0.0.0.0", "--port", "0"], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("achilles: refusing to listen on 0.0.0.0 without a SECRET_KEY")


WRONG_STRONG_SECRET = "wrong-but-Strong-4Kd8Px2Qm7Zt5Wn9"  # no weak-secret warning before the error
DOTENV_SECRET = "dotenv-Secret-7Hq2Zx9Lp4Wm8Rv3Nb6"  # strong enough beyond loopback


def test_server_reads_the_secret_from_dotenv(tmp_path: Path) -> None:
    """A SECRET_KEY in the working directory's .env lets the server listen on 0.0.0.0."""
    (tmp_path / ".env").write_text(f"SECRET_KEY={DOTENV_SECRET}\n", encoding="utf-8")
    process = subprocess.Popen(
        [*MODULE, "server", "--host", "0.0.0.0", "--port", "0"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line = read_line(process)
        assert line.startswith("achilles_like server listening on 0.0.0.0:"), line
        port = int(line.rsplit(":", 1)[1])
        status = achilles_like.getClusterStatus("127.0.0.1", port, secret_key=DOTENV_SECRET)
        assert (status["nodes"], status["job"], status["queue"]) == ([], None, [])
    finally:
        stop(process)


def test_kill_with_server_flag_stops_the_server(
    served: tuple[subprocess.Popen[str], int], achilles_script: str, tmp_path: Path
) -> None:
    """`achilles kill -y --server` reports 0 nodes and the server process exits with code 0."""
    process, port = served
    env = clean_env(host="127.0.0.1", port=str(port), secret_key="cli-test-secret")
    result = run([achilles_script, "kill", "-y", "--server"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "asked 0 node(s) to stop and the server\n"
    assert process.wait(QUICK) == 0


# -- status -------------------------------------------------------------------


def test_status_json_shows_two_nodes(cluster: LocalCluster, achilles_script: str, tmp_path: Path) -> None:
    """`achilles status --json` prints the status dict with nodes, job and queue, and 2 idle nodes."""
    result = run([achilles_script, "status", "--json"], tmp_path, cluster_env(cluster))
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert {"nodes", "job", "queue"} <= set(status)
    assert status["job"] is None
    assert status["queue"] == []
    assert len(status["nodes"]) == 2
    assert [(node["processes"], node["busy"]) for node in status["nodes"]] == [(2, 0), (2, 0)]
    assert len({node["node_id"] for node in status["nodes"]}) == 2


def test_status_human_format(cluster: LocalCluster, achilles_script: str, tmp_path: Path) -> None:
    """`achilles status` prints a node count, one line per node, the job and the queue length."""
    result = run([achilles_script, "status"], tmp_path, cluster_env(cluster))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5
    assert lines[0] == "nodes: 2"
    for line in lines[1:3]:
        assert " processes=2 busy=0 tasks_done=" in line
    assert lines[3:] == ["job: none", "queue: 0 waiting job(s)"]


def test_status_with_options_instead_of_environment(
    cluster: LocalCluster, achilles_script: str, tmp_path: Path
) -> None:
    """--host and --port on the command line reach the cluster as well as ACHILLES_HOST/PORT do."""
    args = ["status", "--json", "--host", cluster.host, "--port", str(cluster.port)]
    result = run([achilles_script, *args], tmp_path, clean_env(secret_key=cluster.secret_key))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["nodes"]) == 2


def test_status_with_wrong_secret_exits_1(
    cluster: LocalCluster, achilles_script: str, tmp_path: Path
) -> None:
    """`achilles status` with a wrong secret exits 1 with an authentication error, and prints no status."""
    env = clean_env(host=cluster.host, port=str(cluster.port), secret_key=WRONG_STRONG_SECRET)
    result = run([achilles_script, "status"], tmp_path, env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("achilles: ")
    assert "authentication failed" in result.stderr


# -- node ---------------------------------------------------------------------


def test_node_with_wrong_secret_keeps_retrying_and_server_keeps_serving(
    cluster: LocalCluster, achilles_script: str, tmp_path: Path
) -> None:
    """A node with the wrong secret says "authentication failed" and retries (a refusal from a server
    that has not proved the secret must not stop it); the server still runs jobs meanwhile."""
    env = clean_env(secret_key=WRONG_STRONG_SECRET)
    args = ["node", "--host", cluster.host, "--port", str(cluster.port), "--processes", "1"]
    node = subprocess.Popen(
        [achilles_script, *args],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert node.stderr is not None
        line = ""
        while "retrying" not in line:
            line = node.stderr.readline()
            assert line, "the node ended without saying why"
        assert "authentication failed" in line
        assert node.poll() is None  # still there, retrying with backoff
        assert len(status_of(cluster)["nodes"]) == 2
        assert achilles_like.map(tasks.square, range(20), **target(cluster)) == [x * x for x in range(20)]
    finally:
        stop(node)


def test_node_joins_a_server_and_leaves_on_kill(
    served: tuple[subprocess.Popen[str], int], achilles_script: str, tmp_path: Path
) -> None:
    """`achilles node` prints a ready line, registers its processes, and exits 0 on `achilles kill -y`."""
    server, port = served
    env = clean_env(host="127.0.0.1", port=str(port), secret_key="cli-test-secret")
    node = subprocess.Popen(
        [achilles_script, "node", "--processes", "1"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line = read_line(node)
        assert " ready: connected to 127.0.0.1:" in line
        assert line.rstrip().endswith("with 1 processes")
        status = achilles_like.getClusterStatus("127.0.0.1", port, secret_key="cli-test-secret")
        assert [n["processes"] for n in status["nodes"]] == [1]
        result = run([achilles_script, "kill", "-y"], tmp_path, env)
        assert (result.returncode, result.stdout) == (0, "asked 1 node(s) to stop\n")
        assert node.wait(QUICK) == 0
        assert server.poll() is None
    finally:
        stop(node)


# -- kill ---------------------------------------------------------------------


def test_kill_stops_both_nodes(fresh_cluster: LocalCluster, achilles_script: str, tmp_path: Path) -> None:
    """`achilles kill -y` reports 2 nodes, both node processes exit, and the server stays up without them."""
    nodes = list(fresh_cluster.nodes)
    result = run([achilles_script, "kill", "-y"], tmp_path, cluster_env(fresh_cluster))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "asked 2 node(s) to stop\n"
    for node in nodes:
        node.wait(QUICK)  # raises TimeoutExpired if the node does not exit
    assert fresh_cluster.server is not None
    assert fresh_cluster.server.poll() is None
    wait_until(lambda: status_of(fresh_cluster)["nodes"] == [], what="the server to drop both nodes")


def test_killed_local_nodes_exit_cleanly(
    fresh_cluster: LocalCluster, achilles_script: str, tmp_path: Path
) -> None:
    """LocalCluster nodes (started with --watch-stdin) exit with code 0 when `achilles kill -y` stops them."""
    nodes = list(fresh_cluster.nodes)
    result = run([achilles_script, "kill", "-y"], tmp_path, cluster_env(fresh_cluster))
    assert result.stdout == "asked 2 node(s) to stop\n"
    assert [node.wait(QUICK) for node in nodes] == [0, 0]


def test_kill_without_yes_and_without_terminal_exits_nonzero(
    cluster: LocalCluster, achilles_script: str, tmp_path: Path
) -> None:
    """`achilles kill` without -y and without a terminal exits 1 without prompting, and stops no node."""
    result = run([achilles_script, "kill"], tmp_path, cluster_env(cluster))
    assert result.returncode == 1
    assert result.stdout == ""
    assert "-y" in result.stderr
    assert len(status_of(cluster)["nodes"]) == 2


def test_kill_without_terminal_explains_the_yes_flag(
    cluster: LocalCluster, achilles_script: str, tmp_path: Path
) -> None:
    """`achilles kill` without a terminal prints one "achilles: ..." line pointing at -y, not a traceback."""
    result = run([achilles_script, "kill"], tmp_path, cluster_env(cluster))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("achilles: ")
    assert "-y" in result.stderr


def test_status_with_port_but_no_host_reaches_the_local_server(
    served: tuple[subprocess.Popen[str], int], achilles_script: str, tmp_path: Path
) -> None:
    """`achilles status` with a port but no host queries 127.0.0.1:PORT, where `achilles server` listens."""
    _, port = served
    env = clean_env(port=str(port), secret_key="cli-test-secret")
    result = run([achilles_script, "status", "--json"], tmp_path, env, timeout=SLOW)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nodes"] == []


# -- demo ---------------------------------------------------------------------


def test_demo_runs_on_an_embedded_cluster(tmp_path: Path) -> None:
    """`python -m achilles_like demo --items 50` exits 0 with exact results and "demo finished"."""
    started = time.monotonic()
    result = run([*MODULE, "demo", "--items", "50"], tmp_path, timeout=SLOW)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < SLOW
    out = result.stdout
    assert "map(square, range(50)) -> [0, 1, 4, 9, 16] ... 2401 in " in out
    assert "sum(imap_unordered(square, range(50))) = 40425\n" in out
    assert out.splitlines()[-1].startswith("demo finished")


@pytest.mark.parametrize(
    ("written", "expected"),
    [(b"4242\n", 4242), (b" 4242 \n", 4242), (b"", None), (b"42", None), (b"x42\n", None)],
)
def test_port_from_stdin_reads_one_line(written: bytes, expected: int | None) -> None:
    """A node started with --port-from-stdin takes its port from the first line, and None otherwise."""
    from achilles_like.cli import _read_port

    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, written)
        os.close(write_fd)
        write_fd = -1
        assert _read_port(read_fd) == expected
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_port_from_stdin_leaves_the_rest_of_stdin_unread() -> None:
    """Only the port line is consumed: later bytes stay for the end-of-stdin watcher."""
    from achilles_like.cli import _read_port

    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"17\nrest")
        assert _read_port(read_fd) == 17
        assert os.read(read_fd, 10) == b"rest"
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_local_cluster_nodes_boot_alongside_the_server() -> None:
    """LocalCluster starts its nodes before its server is up, and every node still registers."""
    with LocalCluster(nodes=2, processes=1) as cluster:
        assert all("--port-from-stdin" in node.args for node in cluster.nodes)
        assert len(status_of(cluster)["nodes"]) == 2
        assert achilles_like.map(tasks.square, range(4)) == [0, 1, 4, 9]


def test_a_node_taking_its_port_from_stdin_ignores_a_port_setting_it_never_uses(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    """`achilles node --port-from-stdin` with PORT=0 in its environment (a server's "any free port").

    The port comes from stdin; the node reads its settings once before it
    knows the port (to decide about TLS), and that read must not reject a
    PORT it never uses.
    """
    env = clean_env(port="0", secret_key=cluster.secret_key)
    node = subprocess.Popen(
        [*MODULE, "node", "--host", cluster.host, "--port-from-stdin", "--processes", "1"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert node.stdin is not None
        node.stdin.write(f"{cluster.port}\n")
        node.stdin.flush()
        line = read_line(node)
        assert " ready: connected to " in line, line
    finally:
        stop(node)
