"""One connection per cluster and process for the module functions, opened on first use.

``map``, ``imap`` and ``imap_unordered`` run each call as a job on the
process-wide connection to their cluster (keyed by host, port and user),
from whichever thread calls them: no connect or handshake per call. A
connection that was lost is replaced by a new one on the next call. All are
closed when the interpreter exits.
"""

from __future__ import annotations

import threading

from achilles_like import at_exit
from achilles_like.client.connection import Connection
from achilles_like.config import Settings

_lock = threading.Lock()  # guards the two tables, held only briefly
_connections: dict[tuple[object, ...], Connection] = {}
_opening: dict[tuple[object, ...], threading.Lock] = {}  # one per cluster: an unreachable one delays no other


def shared_connection(settings: Settings) -> Connection:
    """The live process-wide connection to the cluster of ``settings`` (opened if needed)."""
    key = (
        settings.host,
        settings.port,
        settings.username,
        settings.secret_bytes,
        settings.client_tls,
        settings.tls_ca,
        settings.tls_cert,
        settings.tls_key,
    )
    with _lock:
        connection = _connections.get(key)
        if connection is not None and connection.alive:
            return connection
        opening = _opening.setdefault(key, threading.Lock())
    with opening:  # threads that want the same cluster wait for one connect
        with _lock:
            connection = _connections.get(key)
        if connection is None or not connection.alive:
            connection = Connection.open(settings)
            with _lock:
                if not _connections:
                    at_exit.register(close_all)
                _connections[key] = connection
        return connection


def close_all() -> None:
    """Close every shared connection (at exit, or in tests)."""
    with _lock:
        connections = list(_connections.values())
        _connections.clear()
    for connection in connections:
        connection.close()
