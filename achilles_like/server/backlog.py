"""The listen backlog: how many connections the kernel queues before the server accepts them.

Twisted listens with a backlog of 50. When every node reconnects at once
(after a server restart), the accept queue overflows: the kernel drops
SYNs or, with full handshakes queued, leaves clients connected on their
side and never served. The server asks for the system's maximum
(``net.core.somaxconn``, read from ``/proc``), and at least 4,096, which
the kernel caps at its maximum anyway.
"""

from __future__ import annotations

from pathlib import Path

FALLBACK_BACKLOG = 4096
_SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def listen_backlog(somaxconn: Path = _SOMAXCONN) -> int:
    """The backlog to listen with: the system maximum, and no less than 4,096."""
    try:
        system = int(somaxconn.read_text().strip())
    except (OSError, ValueError):
        return FALLBACK_BACKLOG  # not Linux, or /proc unreadable: the kernel caps it as it must
    return max(system, FALLBACK_BACKLOG)
