"""LocalCluster: a server and nodes as subprocesses on 127.0.0.1.

This is what runs when nothing is configured: ``map(f, xs)`` with no host
starts a default LocalCluster (one node, random port, random secret), reuses
it for later calls and stops it at exit. ``with LocalCluster(...) as c:``
does the same explicitly, and inside the block the module functions use it
by default; ``c.host``, ``c.port`` and ``c.secret_key`` let other processes
join it.

Each child is ``python -m achilles_like server|node`` in a session of its
own (Ctrl-C in the terminal reaches the caller, which cancels its job
cleanly, not the cluster), listening on port 0 and printing one ready line
that we wait for: no fixed ports, no sleeps. The nodes start alongside the
server (start-up is mostly imports) and read its port from their stdin once
its ready line has given it. The secret travels in the
child's environment, never on its command line. Children watch their stdin,
a pipe from us: if this process dies, even by SIGKILL, they see end-of-file
and exit, so a crashed caller leaves no cluster behind. Nodes get the
caller's ``sys.path`` so functions from the user's own modules import there.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from types import TracebackType
from typing import IO

from achilles_like import at_exit
from achilles_like.config import Settings, generate_secret
from achilles_like.errors import ClusterConnectionError

STARTUP_TIMEOUT = 60.0
_READY_SERVER = re.compile(r"achilles_like server listening on (\S+):(\d+)")
_READY_NODE = re.compile(r"achilles_like node (\S+) ready")
_DASHBOARD = re.compile(r" dashboard at (\S+)")  # on the server's ready line

_active: list[LocalCluster] = []
_default: LocalCluster | None = None
_default_lock = threading.Lock()


def _child_env(secret_key: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACHILLES_")}
    env["ACHILLES_SECRET_KEY"] = secret_key
    env["ACHILLES_NO_DOTENV"] = "1"  # the caller's .env must not change a private cluster
    paths = [os.path.abspath(p or os.curdir) for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _read_ready(process: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """Read the child's stdout until its ready line, its death or the timeout."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not selector.select(left):
                continue
            line = process.stdout.readline()
            if not line:
                break
            seen.append(line)
            if match := pattern.search(line):
                _drain(process.stdout)
                return match
    process.kill()
    output = "".join(seen[-20:]).strip() or "(no output)"
    raise ClusterConnectionError(f"a local cluster process did not start: {output}")


def _drain(stream: IO[str]) -> None:
    """Keep reading a child's stdout so it never blocks on a full pipe."""
    threading.Thread(target=lambda: [None for _ in stream], daemon=True, name="achilles-drain").start()


class LocalCluster:
    """A server and ``nodes`` nodes on 127.0.0.1, as child processes."""

    def __init__(
        self,
        nodes: int = 1,
        processes: int | None = None,
        *,
        secret_key: str | None = None,
        username: str = "",
        startup_timeout: float = STARTUP_TIMEOUT,
        tls_cert: str = "",
        tls_key: str = "",
        tls_ca: str = "",
        server_args: tuple[str, ...] = (),
        dashboard: bool = False,
    ) -> None:
        if nodes < 0:
            raise ValueError(f"nodes must be 0 or more, not {nodes}")
        self.node_count = nodes
        self.processes = processes
        self.secret_key = secret_key or generate_secret()
        self.username = username
        self.host = "127.0.0.1"
        self.port = 0
        self.startup_timeout = startup_timeout
        # TLS: the server listens with cert+key; nodes and callers verify it against the CA.
        self.tls_cert, self.tls_key, self.tls_ca = tls_cert, tls_key, tls_ca
        # Extra `achilles server` options, e.g. ("--heartbeat-timeout", "3").
        self.server_args = tuple(server_args)
        # The web dashboard on a free loopback port; its address is dashboard_url once started.
        self.dashboard = dashboard
        self.dashboard_url = ""
        self.server: subprocess.Popen[str] | None = None
        self.nodes: list[subprocess.Popen[str]] = []

    def __repr__(self) -> str:
        return (
            f"LocalCluster(host={self.host!r}, port={self.port}, nodes={len(self.nodes)}, secret_key='***')"
        )

    @property
    def settings(self) -> Settings:
        """Settings that reach this cluster."""
        return Settings(
            host=self.host,
            port=self.port,
            username=self.username,
            secret_key=self.secret_key,
            tls_ca=self.tls_ca,
            host_configured=True,
        )

    def _spawn(self, *args: str) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "achilles_like", *args, "--watch-stdin"]
        return subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=_child_env(self.secret_key),
            text=True,
            start_new_session=True,
        )

    def start(self) -> LocalCluster:
        """Start the server and the nodes; return when every node is registered.

        Server and nodes boot side by side (most of a child's start-up is its
        imports): each node waits for the server's port on its stdin, which
        we write as soon as the server's ready line gives it.
        """
        if self.server is not None:
            return self
        try:
            server = self._spawn_server()
            nodes = [self._spawn_node(self.processes, port_from_stdin=True) for _ in range(self.node_count)]
            self._await_server(server)
            for node in nodes:
                _send_port(node, self.port)
            for node in nodes:
                _read_ready(node, _READY_NODE, self.startup_timeout)
        except BaseException:
            self.shutdown()
            raise
        return self

    def add_node(self, processes: int | None = None) -> subprocess.Popen[str]:
        """Start one more node and wait until the server has registered it."""
        node = self._spawn_node(processes, port_from_stdin=False)
        _read_ready(node, _READY_NODE, self.startup_timeout)
        return node

    def _spawn_node(self, processes: int | None, *, port_from_stdin: bool) -> subprocess.Popen[str]:
        port = ["--port-from-stdin"] if port_from_stdin else ["--port", str(self.port)]
        args = ["node", "--host", self.host, *port]
        if processes:
            args += ["--processes", str(processes)]
        if self.tls_ca:
            args += ["--tls-ca", self.tls_ca]
        for dead in (n for n in self.nodes if n.poll() is not None):
            _close_pipes(dead)  # keep the Popen (indices stay stable) but not its pipes
        node = self._spawn(*args)
        self.nodes.append(node)
        return node

    def restart_server(self) -> None:
        """Start the server again on the same port after it was stopped (tests use this)."""
        if self.server is not None and self.server.poll() is None:
            raise RuntimeError("the server is still running")
        self._start_server()

    def _start_server(self) -> None:
        self._await_server(self._spawn_server())

    def _spawn_server(self) -> subprocess.Popen[str]:
        extra = ["--username", self.username] if self.username else []
        if self.tls_cert:
            extra += ["--tls-cert", self.tls_cert, "--tls-key", self.tls_key]
        if self.dashboard:
            extra += ["--dashboard-port", "0"]
        port = str(self.port)  # 0 the first time: any free port; then the same one again
        self.server = self._spawn("server", "--host", self.host, "--port", port, *extra, *self.server_args)
        return self.server

    def _await_server(self, server: subprocess.Popen[str]) -> None:
        match = _read_ready(server, _READY_SERVER, self.startup_timeout)
        self.port = int(match.group(2))
        dashboard = _DASHBOARD.search(match.string)
        self.dashboard_url = dashboard.group(1) if dashboard else ""

    def kill_node(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to node ``index`` and everything it started (tests use this)."""
        os.killpg(self.nodes[index].pid, sig)

    def shutdown(self) -> None:
        """Stop every child: close their stdin, then SIGTERM, then SIGKILL."""
        children = [*self.nodes, *([self.server] if self.server else [])]
        for child in children:
            _close_stdin(child)
        for child in children:
            _stop(child)
        self.nodes.clear()
        self.server = None

    def __enter__(self) -> LocalCluster:
        self.start()
        _active.append(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self in _active:
            _active.remove(self)
        self.shutdown()


def _send_port(node: subprocess.Popen[str], port: int) -> None:
    """Tell a node started with ``--port-from-stdin`` where the server listens."""
    try:
        assert node.stdin is not None
        node.stdin.write(f"{port}\n")
        node.stdin.flush()
    except OSError:
        pass  # it died already: waiting for its ready line reports that, with its output


def _close_pipes(child: subprocess.Popen[str]) -> None:
    for stream in (child.stdin, child.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass


def _close_stdin(child: subprocess.Popen[str]) -> None:
    try:
        if child.stdin is not None:
            child.stdin.close()
    except OSError:
        pass


def _stop(child: subprocess.Popen[str]) -> None:
    # Closing stdin already asked the child to stop cleanly; give it the time
    # to stop its own workers, then SIGTERM the child alone (signalling the
    # whole group could kill a pool worker holding the pool's queue lock, and
    # the node's pool shutdown would then wait on that lock forever).
    for send, wait in ((None, 5.0), (child.terminate, 5.0)):
        if send is not None and child.poll() is None:
            send()
        try:
            child.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Last resort, and for pool workers left behind: SIGKILL the whole group.
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if child.stdout is not None:
        child.stdout.close()


def active_cluster() -> LocalCluster | None:
    """The innermost ``with LocalCluster()`` block, if any."""
    return _active[-1] if _active else None


def running_default_cluster() -> LocalCluster | None:
    """The embedded default cluster if this process has started one."""
    return _default


def default_cluster() -> LocalCluster:
    """The embedded cluster used when nothing is configured (started once)."""
    global _default
    with _default_lock:
        if _default is None or _default.server is None or _default.server.poll() is not None:
            _default = LocalCluster(nodes=1).start()
            at_exit.register(_default.shutdown)
        return _default
