"""Noticing a silent peer: TCP keepalive on every socket, and a watchdog on received bytes.

A machine that loses power or is cut off by a partition closes nothing: its
peer's connection stays open and silent forever. Two things end that wait.
The server pings a quiet peer every couple of seconds while it holds work,
and at least every :data:`IDLE_PING_INTERVAL` seconds when it holds none, so
a node or controller that has received nothing for
:data:`SERVER_SILENCE_TIMEOUT` seconds drops the connection
(:class:`SilenceWatch`) and reconnects; and TCP keepalive
(:func:`enable_keepalive`) lets the kernel notice a vanished peer on a
connection that is idle at our level, on every connection of every role.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

log = logging.getLogger("achilles_like.liveness")

# Nodes and controllers give up on a server they have heard nothing from for this long.
SERVER_SILENCE_TIMEOUT = 30.0
# The server speaks to an idle peer at least this often (its default idle heartbeat): a third
# of the peers' timeout, so two PINGs may be lost or late before a healthy server is dropped.
IDLE_PING_INTERVAL = SERVER_SILENCE_TIMEOUT / 3

KEEPALIVE_IDLE = 30  # seconds of idleness before the kernel's first probe
KEEPALIVE_INTERVAL = 10  # seconds between probes
KEEPALIVE_COUNT = 3  # unanswered probes before the kernel closes the connection


def tcp_socket(transport: Any) -> socket.socket | None:
    """The TCP socket under ``transport``, looking through a TLS wrapper; None for other transports."""
    for _ in range(3):
        handle = getattr(transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            return handle
        transport = getattr(transport, "transport", None)  # TLSMemoryBIOProtocol wraps the TCP one
        if transport is None:
            break
    return None


def enable_keepalive(transport: Any) -> None:
    """Turn on TCP keepalive, with probes after seconds rather than the kernel's default two hours."""
    handle = tcp_socket(transport)
    if handle is None:
        return  # not TCP (tests' in-memory transports)
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
    ):
        if hasattr(socket, name):  # Linux names; other systems keep their defaults
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            handle.setsockopt(level, option, value)
        except OSError as error:
            log.debug("could not set socket option %s: %s", option, error)


class SilenceWatch:
    """Call ``on_silent`` once nothing has been received for ``timeout`` seconds."""

    def __init__(self, clock: IReactorTime, timeout: float, on_silent: Callable[[float], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self.on_silent = on_silent
        self.last_seen = clock.seconds()
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        """Begin watching (from now)."""
        self.touch()
        self._arm(self.timeout)

    def touch(self) -> None:
        """Bytes have arrived."""
        self.last_seen = self.clock.seconds()

    def stop(self) -> None:
        """Stop watching (the connection is gone)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _arm(self, delay: float) -> None:
        self._call = self.clock.callLater(delay, self._check)

    def _check(self) -> None:
        silent = self.clock.seconds() - self.last_seen
        if silent >= self.timeout:
            self._call = None
            self.on_silent(silent)
        else:
            self._arm(self.timeout - silent)
