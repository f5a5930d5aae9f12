"""The ``achilles`` console command (also ``python -m achilles_like``).

Subcommands: ``server``, ``node``, ``status``, ``kill``, ``genconfig`` and
``demo``. Every option falls back to the ``ACHILLES_*`` environment variables,
then to ``.env``, then to the defaults, exactly like the Python functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from achilles_like import __version__


def _add_target(parser: argparse.ArgumentParser, *, username: bool = True, tls: bool = True) -> None:
    parser.add_argument(
        "--host", help="server address (default: HOST from the environment or .env, else 127.0.0.1)"
    )
    parser.add_argument(
        "--port", type=int, help="server port (default: PORT, else 9999; 0 picks a free port)"
    )
    if username:
        parser.add_argument("--username", help="user name the server expects from controllers (USERNAME)")
    parser.add_argument(
        "--secret-key",
        help="cluster secret (SECRET_KEY); prefer --secret-key-file, ACHILLES_SECRET_KEY or .env,"
        " since a command line is visible to other users",
    )
    parser.add_argument(
        "--secret-key-file",
        metavar="PATH",
        help="read the cluster secret from this file (mode 0600; SECRET_KEY_FILE). With no secret"
        " configured at all, this user's stored secret is used (see the README's Security section)",
    )
    if tls:
        parser.add_argument(
            "--tls-cert", help="PEM certificate: the server's (turns TLS on), or a client's own (TLS_CERT)"
        )
        parser.add_argument("--tls-key", help="PEM private key of --tls-cert (TLS_KEY)")
        parser.add_argument(
            "--tls-ca",
            help="PEM CA certificate to verify the other side with; on a client it turns TLS on,"
            " on the server it requires client certificates (TLS_CA)",
        )


def _tls(args: argparse.Namespace) -> dict[str, Any]:
    """The TLS options given on the command line, as load_settings arguments."""
    return {"tls_cert": args.tls_cert, "tls_key": args.tls_key, "tls_ca": args.tls_ca}


def _secret(args: argparse.Namespace) -> str | None:
    """The secret given on the command line, directly or in --secret-key-file."""
    if args.secret_key or not args.secret_key_file:
        return args.secret_key  # type: ignore[no-any-return]
    from achilles_like.secret_store import read_secret_file

    return read_secret_file(args.secret_key_file)


def _tls_to_environment(args: argparse.Namespace) -> None:
    """Pass command-line TLS options to the API calls, which read ACHILLES_* variables."""
    for key, value in _tls(args).items():
        if value:
            os.environ["ACHILLES_" + key.upper()] = value


def _stop_reactor(reactor: Any) -> None:
    from twisted.internet.error import ReactorNotRunning

    try:
        reactor.stop()
    except ReactorNotRunning:
        pass  # already stopping (SIGTERM and end-of-stdin can both arrive)


def _watch_stdin(reactor: Any) -> None:
    """Stop the reactor when stdin closes (the LocalCluster that started us is gone)."""

    fd = sys.stdin.fileno()

    def watch() -> None:
        # os.read on the descriptor: sys.stdin.buffer.read would hold the
        # buffer's lock, and interpreter shutdown aborts on a held stdin lock.
        while os.read(fd, 65536):
            pass
        reactor.callFromThread(_stop_reactor, reactor)

    threading.Thread(target=watch, daemon=True, name="achilles-stdin").start()


def _read_port(fd: int) -> int | None:
    """The first line of ``fd`` as a port number, or None at end-of-file or on a malformed line.

    Read byte by byte with ``os.read``: nothing beyond the line may be taken
    from the descriptor, whose end-of-file ``--watch-stdin`` then waits for.
    """
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return None
        line += byte
    text = line.strip()
    return int(text) if text.isdigit() else None


def _server(args: argparse.Namespace) -> int:
    from achilles_like.config import load_settings
    from achilles_like.tls import skip_tls_stack

    settings = load_settings(
        args.host,
        args.port,
        args.username,
        _secret(args),
        dashboard_port=args.dashboard_port,
        dashboard_host=args.dashboard_host,
        dashboard_token=args.dashboard_token,
        **_tls(args),
    )
    if not settings.tls_cert and not settings.tls_key:
        skip_tls_stack()  # before Twisted's reactor is imported
    from twisted.internet import reactor

    from achilles_like.server.cluster import ServerOptions, announce, start_server

    options = ServerOptions(
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        auth_timeout=args.auth_timeout,
        no_node_timeout=args.no_node_timeout,
        max_pending=args.max_pending,
        max_pending_per_address=args.max_pending_per_address,
        max_queued_jobs=args.max_queued_jobs,
        max_held_bytes=args.max_held_bytes,
    )
    if args.idle_heartbeat_interval is not None:
        options.idle_heartbeat_interval = args.idle_heartbeat_interval
    if args.idle_heartbeat_timeout is not None:
        options.idle_heartbeat_timeout = args.idle_heartbeat_timeout
    cluster, listening = start_server(settings, reactor, options)
    announce(cluster, listening)
    if args.watch_stdin:
        _watch_stdin(reactor)
    reactor.run()
    return 0


def _node(args: argparse.Namespace) -> int:
    from achilles_like.config import load_settings
    from achilles_like.tls import skip_tls_stack

    # Whether this node uses TLS, before Twisted's reactor is imported. A port to come on stdin
    # is not known yet: any valid one stands in, so a PORT setting the node never uses is not read.
    port_for_now = 1 if args.port_from_stdin else args.port
    if not load_settings(args.host, port_for_now, None, _secret(args), **_tls(args)).client_tls:
        skip_tls_stack()
    from twisted.internet import reactor

    from achilles_like.node.agent import start_node

    port = args.port
    if args.port_from_stdin:
        # Our imports ran while the server booted; now wait for its port.
        port = _read_port(sys.stdin.fileno())
        if port is None:
            print("achilles: no server port on stdin (--port-from-stdin)", file=sys.stderr)
            return 1
    settings = load_settings(args.host, port, None, _secret(args), processes=args.processes, **_tls(args))
    factory = start_node(settings, reactor, args.processes)
    outcome = {"code": 0}

    def stop(message: str | None) -> None:
        outcome["code"] = 0 if message is None else 1
        _stop_reactor(reactor)

    factory.on_fatal = stop
    if args.watch_stdin:
        _watch_stdin(reactor)
    reactor.run()
    return outcome["code"]


def _status(args: argparse.Namespace) -> int:
    from achilles_like import getClusterStatus

    _tls_to_environment(args)
    if args.watch:
        from achilles_like.client.watch import watch_status

        return watch_status(lambda: getClusterStatus(args.host, args.port, args.username, _secret(args)))
    status = getClusterStatus(args.host, args.port, args.username, _secret(args))
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    from achilles_like.client.watch import format_status

    print(format_status(status))
    return 0


def _kill(args: argparse.Namespace) -> int:
    from achilles_like import killCluster

    _tls_to_environment(args)
    if not args.yes and not sys.stdin.isatty():
        print("achilles: no terminal to confirm on; pass -y to stop the nodes", file=sys.stderr)
        return 1
    count = killCluster(args.yes, args.host, args.port, args.username, _secret(args), stop_server=args.server)
    print(f"asked {count} node(s) to stop" + (" and the server" if args.server else ""))
    return 0


def _genconfig(args: argparse.Namespace) -> int:
    from achilles_like import genConfig

    path = genConfig(args.host, args.port, args.username, _secret(args), path=args.path)
    print(f"wrote {path} (mode 0600)")
    return 0


def _square(x: int) -> int:
    return x * x


def _demo(args: argparse.Namespace) -> int:
    from achilles_like import LocalCluster, imap_unordered, map

    print(f"starting an embedded local cluster: 1 server and {args.nodes} node(s) on 127.0.0.1 ...")
    started = time.perf_counter()
    with LocalCluster(nodes=args.nodes, processes=args.processes, dashboard=True) as cluster:
        print(f"  ready in {time.perf_counter() - started:.1f}s at {cluster.host}:{cluster.port}")
        print(f"  dashboard: {cluster.dashboard_url}")
        started = time.perf_counter()
        squares = map(_square, range(args.items), chunksize=args.chunksize)
        elapsed = time.perf_counter() - started
        assert squares == [x * x for x in range(args.items)]
        print(f"map(square, range({args.items})) -> {squares[:5]} ... {squares[-1]} in {elapsed:.2f}s")
        total = sum(imap_unordered(_square, range(args.items), chunksize=args.chunksize))
        print(f"sum(imap_unordered(square, range({args.items}))) = {total}")
    print("demo finished: results are exact and in order; the cluster has been stopped.")
    return 0


def _add_logging(parser: argparse.ArgumentParser) -> None:
    from achilles_like.logs import FORMATS, LEVELS

    parser.add_argument(
        "--log-level", choices=LEVELS, help="least severe events to log (default: warning; info with -v)"
    )
    parser.add_argument("--log-file", help="append the log to this file instead of stderr")
    parser.add_argument(
        "--log-format", choices=FORMATS, default="text", help="text, or json: one JSON object per line"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog="achilles", description="achilles_like: a distributed multiprocessing.Pool on Twisted."
    )
    parser.add_argument("--version", action="version", version=f"achilles_like {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the process does (INFO level)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    server = commands.add_parser("server", help="run the cluster server (blocks)")
    _add_target(server)
    server.add_argument(
        "--heartbeat-interval", type=float, default=2.0, help="ping a quiet peer that holds work this often"
    )
    server.add_argument(
        "--heartbeat-timeout", type=float, default=10.0, help="drop a peer that holds work silent this long"
    )
    server.add_argument(
        "--idle-heartbeat-interval",
        type=float,
        help="ping a quiet peer with nothing in flight this often (default 10, at most 15)",
    )
    server.add_argument(
        "--idle-heartbeat-timeout",
        type=float,
        help="drop a peer with nothing in flight silent this long (default 30)",
    )
    server.add_argument(
        "--auth-timeout", type=float, default=5.0, help="close a connection not authenticated by then"
    )
    server.add_argument(
        "--max-pending",
        type=int,
        default=1024,
        help="unauthenticated connections held at once; past it the oldest is closed",
    )
    server.add_argument(
        "--max-pending-per-address",
        type=int,
        default=256,
        help="unauthenticated connections held at once from one address; past it its oldest is closed",
    )
    server.add_argument(
        "--max-queued-jobs", type=int, default=1000, help="jobs that may wait; a job past it is refused"
    )
    server.add_argument(
        "--max-held-bytes",
        type=int,
        default=4 << 30,
        help="bytes of setups, functions and tasks held for live jobs; a new job past it is refused",
    )
    server.add_argument(
        "--no-node-timeout",
        type=float,
        default=60.0,
        help="fail a running job when no node has been connected for this many seconds",
    )
    server.add_argument(
        "--dashboard-port",
        type=int,
        help="serve the dashboard, /api/status and /metrics on this port (DASHBOARD_PORT; 0: any free port)",
    )
    server.add_argument(
        "--dashboard-host", help="address the dashboard listens on (DASHBOARD_HOST, default 127.0.0.1)"
    )
    server.add_argument(
        "--dashboard-token",
        help="token every dashboard request must carry (DASHBOARD_TOKEN; generated and printed"
        " when the dashboard listens beyond loopback)",
    )
    _add_logging(server)
    server.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    server.set_defaults(run=_server)

    node = commands.add_parser("node", help="run a node that executes tasks (blocks)")
    _add_target(node, username=False)
    node.add_argument(
        "--processes", type=int, help="worker processes (default: PROCESSES, else the CPUs it may use)"
    )
    _add_logging(node)
    node.add_argument("--watch-stdin", action="store_true", help=argparse.SUPPRESS)
    # LocalCluster starts nodes alongside the server and writes its port here once it is known.
    node.add_argument("--port-from-stdin", action="store_true", help=argparse.SUPPRESS)
    node.set_defaults(run=_node)

    status = commands.add_parser("status", help="show the nodes, the running job and the queue")
    _add_target(status)
    status.add_argument("--json", action="store_true", help="print the raw status dict as JSON")
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.set_defaults(run=_status)

    kill = commands.add_parser("kill", help="stop every node of the cluster")
    _add_target(kill)
    kill.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    kill.add_argument("--server", action="store_true", help="stop the server too")
    kill.set_defaults(run=_kill)

    genconfig = commands.add_parser("genconfig", help="write a .env file (mode 0600)")
    _add_target(genconfig, tls=False)
    genconfig.add_argument("--path", default=".env", help="where to write it (default: ./.env)")
    genconfig.set_defaults(run=_genconfig)

    demo = commands.add_parser("demo", help="run a demo job on an embedded local cluster")
    demo.add_argument("--nodes", type=int, default=1, help="local nodes to start (default 1)")
    demo.add_argument("--processes", type=int, help="processes per node (default: cpu count)")
    demo.add_argument("--items", type=int, default=1000, help="how many numbers to square")
    demo.add_argument("--chunksize", type=int, default=10, help="items per task")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``achilles`` command."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "log_format"):  # a server or a node: the full logging setup
        from achilles_like.logs import setup_logging

        level = args.log_level or ("info" if args.verbose else "warning")
        setup_logging(level, args.log_file, args.log_format)
    else:
        level = logging.INFO if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from achilles_like.errors import AchillesError

    try:
        code: int = args.run(args)
    except AchillesError as error:
        print(f"achilles: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return code
