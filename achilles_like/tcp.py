"""Socket options every achilles_like connection gets.

``TCP_NODELAY``: the protocol writes small frames (a one-item TASK, an END,
a RESULT) and waits for the answer. With Nagle's algorithm on, a small write
that follows another before its ACK waits for that ACK, which the peer may
delay by up to 40 ms: a one-item round trip would take 40 ms instead of one.
"""

from __future__ import annotations

from typing import Any


def tune(transport: Any) -> None:
    """Turn Nagle's algorithm off on ``transport`` (a TLS transport passes it to its socket)."""
    for candidate in (transport, getattr(transport, "transport", None)):
        set_no_delay = getattr(candidate, "setTcpNoDelay", None)
        if set_no_delay is not None:
            try:
                set_no_delay(True)
            except OSError:
                pass  # not a TCP socket (a UNIX socket in a test): nothing to tune
            return
