"""The original achilles controller API: ``map``, ``imap``, ``imap_unordered``,
``killCluster`` and ``getClusterStatus``.

Which cluster a call reaches: an explicit ``host`` argument first; else the
innermost ``with LocalCluster()`` block; else ``ACHILLES_HOST`` or ``HOST`` in
``.env``; else an embedded local cluster started on first use and reused.
Arguments are checked (callable, picklable, iterable, ``chunksize``) before
anything is sent, and before any cluster is started.
"""

from __future__ import annotations

import builtins
import json
import sys
from collections.abc import Callable, Iterator
from typing import Any

from achilles_like.client.connection import Connection
from achilles_like.client.job import (
    JobRunner,
    check_chunksize,
    check_timeout,
    pickle_function,
    prepare_input,
)
from achilles_like.config import Settings, load_settings
from achilles_like.errors import ProtocolViolationError
from achilles_like.local import active_cluster, default_cluster, running_default_cluster


def resolve_settings(
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    start_local: bool = True,
) -> Settings:
    """Settings for the cluster a call should reach (see the module docstring).

    With ``start_local`` false, an unconfigured call gets the default
    address (127.0.0.1:9999) instead of a new embedded cluster.
    """
    cluster = active_cluster()
    if host is None and cluster is not None:
        return cluster.settings.with_overrides(username=username, secret_key=secret_key)
    settings = load_settings(host, port, username, secret_key)
    if settings.host_configured or not start_local:
        return settings
    return default_cluster().settings


def _admin_settings(
    host: str | None, port: int | None, username: str | None, secret_key: str | None
) -> Settings:
    """Like :func:`resolve_settings`, but never starts a cluster just to query it."""
    cluster = running_default_cluster()
    if host is None and port is None and active_cluster() is None and cluster is not None:
        return cluster.settings.with_overrides(username=username, secret_key=secret_key)
    return resolve_settings(host, port, username, secret_key, start_local=False)


def _label(func: Callable[..., Any]) -> str:
    return str(getattr(func, "__qualname__", type(func).__name__))


def _run(
    func: Callable[..., Any],
    args: Any,
    callback: Callable[..., Any] | None,
    chunksize: int,
    ordered: bool,
    target: dict[str, Any],
    timeout: float | None = None,
) -> Iterator[Any]:
    chunksize = check_chunksize(chunksize)
    check_timeout(timeout)
    items = prepare_input(args)
    func_blob = pickle_function(func, callback)
    settings = resolve_settings(**target)
    runner = JobRunner(
        settings, func_blob, items, chunksize, ordered=ordered, label=_label(func), timeout=timeout
    )
    return runner.results()


def map(  # noqa: A001 - the achilles / multiprocessing name
    func: Callable[[Any], Any],
    args: Any,
    callback: Callable[[Any], Any] | None = None,
    chunksize: int = 1,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    timeout: float | None = None,
) -> list[Any]:
    """Apply ``func`` to every item of ``args`` on the cluster; return the results in order.

    ``callback``, when given, is applied on the node to each result before it
    is returned (achilles' meaning). ``chunksize`` items travel together.
    ``timeout`` limits each task (chunk) to that many seconds: a task over it
    has only its worker process stopped and raises :class:`TaskTimeoutError`.
    """
    target = {"host": host, "port": port, "username": username, "secret_key": secret_key}
    return builtins.list(_run(func, args, callback, chunksize, True, target, timeout))


def imap(
    func: Callable[[Any], Any],
    args: Any,
    callback: Callable[[Any], Any] | None = None,
    chunksize: int = 1,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    timeout: float | None = None,
) -> Iterator[Any]:
    """Like :func:`map`, but lazy: yield results in input order as they become ready."""
    target = {"host": host, "port": port, "username": username, "secret_key": secret_key}
    return _run(func, args, callback, chunksize, True, target, timeout)


def imap_unordered(
    func: Callable[[Any], Any],
    args: Any,
    callback: Callable[[Any], Any] | None = None,
    chunksize: int = 1,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    timeout: float | None = None,
) -> Iterator[Any]:
    """Like :func:`imap`, but yield results as soon as they complete, in any order."""
    target = {"host": host, "port": port, "username": username, "secret_key": secret_key}
    return _run(func, args, callback, chunksize, False, target, timeout)


def getClusterStatus(  # noqa: N802 - achilles' public name style
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
) -> dict[str, Any]:
    """Return the server's view: ``nodes``, the running ``job`` and the ``queue``."""
    settings = _admin_settings(host, port, username, secret_key)
    with Connection.open(settings, role="admin") as connection:
        reply = connection.request("STATUS")
    if reply.verb != "STATUS":
        raise ProtocolViolationError(f"expected STATUS from the server, got {reply.verb}")
    status: dict[str, Any] = json.loads(reply.body)
    return status


def killCluster(  # noqa: N802 - achilles' public name
    command_verified: bool = False,
    host: str | None = None,
    port: int | None = None,
    username: str | None = None,
    secret_key: str | None = None,
    *,
    stop_server: bool = False,
) -> int:
    """Stop every node of the cluster (and the server too with ``stop_server``).

    Asks for confirmation on the terminal unless ``command_verified`` is true.
    Returns how many nodes were told to stop (0 when the user declined).
    """
    settings = _admin_settings(host, port, username, secret_key)
    if not command_verified:
        where = f"{settings.host}:{settings.port}"
        if not sys.stdin or not sys.stdin.isatty():
            raise RuntimeError("killCluster needs command_verified=True when no terminal is attached")
        answer = input(f"Stop every node of the cluster at {where}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 0
    with Connection.open(settings, role="admin") as connection:
        reply = connection.request("KILL", server=stop_server)
    return reply.integer("nodes", 0)
