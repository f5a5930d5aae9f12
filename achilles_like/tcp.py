"""Socket options every achilles_like connection gets, and the size of its reads and writes.

``TCP_NODELAY``: the protocol writes small frames (a one-item TASK, an END,
a RESULT) and waits for the answer. With Nagle's algorithm on, a small write
that follows another before its ACK waits for that ACK, which the peer may
delay by up to 40 ms: a one-item round trip would take 40 ms instead of one.

Reads and writes: Twisted reads 64 KiB and sends at most 128 KiB per reactor
turn, so a 10 MB body costs some 160 reads and 80 turns at every hop, each
through the frame decoder. A connection sends up to :data:`SEND_LIMIT` a
turn, and reads up to :data:`LARGE_READ` at once while a large body it has
been announced is arriving (:func:`size_reads`); otherwise it reads 64 KiB,
because ``recv(n)`` allocates ``n`` bytes first, and a 1 MiB buffer for a
100-byte frame costs several times the read itself.
"""

from __future__ import annotations

from typing import Any

SMALL_READ = 1 << 16  # Twisted's own read size
LARGE_READ = 4 << 20  # at most this much at once while a large body arrives
SEND_LIMIT = 4 << 20  # at most this much per write call (Twisted's default: 128 KiB)


def _socket_transport(transport: Any) -> Any:
    """The transport that owns the socket (a TLS transport wraps it)."""
    inner = getattr(transport, "transport", None)
    return transport if inner is None or not hasattr(inner, "bufferSize") else inner


def size_reads(transport: Any, missing: int) -> None:
    """Read up to ``missing`` bytes at once (within LARGE_READ) when that is more than a small read."""
    target = _socket_transport(transport)
    size = SMALL_READ if missing <= SMALL_READ else min(missing, LARGE_READ)
    if getattr(target, "bufferSize", size) != size:
        target.bufferSize = size


def tune(transport: Any) -> None:
    """Turn Nagle's algorithm off and send more per turn (a TLS transport passes this to its socket)."""
    candidates: tuple[Any, ...] = (transport, getattr(transport, "transport", None))
    for candidate in candidates:
        set_no_delay = getattr(candidate, "setTcpNoDelay", None)
        if set_no_delay is not None:
            candidate.SEND_LIMIT = SEND_LIMIT
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket (a UNIX socket in a test): nothing to tune
            return
